"""Dataset layouts of ``generate --output-format files|webdataset|parquet``, in shards of
``--samples-per-shard`` images.

- ``files``: the Hugging Face *imagefolder*: images and one ``metadata.jsonl``. The first shard
  of images sits at the top of the folder (so a run that fits in one shard looks as it always
  did); the images beyond it go into numbered subfolders ``00001/``, ``00002/``..., and
  ``metadata.jsonl``'s ``file_name`` says where each one is.
- ``webdataset``: ``00000.tar``, ``00001.tar``... each sample ``KEY.png`` (the image),
  ``KEY.txt`` (the prompt) and ``KEY.json`` (its metadata row), with ``00000.parquet`` (the
  shard's rows, when pyarrow is installed) and ``00000_stats.json`` beside each.
- ``parquet``: ``00000.parquet``... the images embedded as bytes (the ``image`` column, the
  ``datasets`` Image feature), with ``00000_stats.json`` beside each.

A shard of the last two is filled in a *staging folder* (``.shards/00000/`` in the run's local
folder: the output folder, or the state folder of a URL output), which keeps its images on disk
until the shard is sealed: a killed run loses none of the images it paid for, and the rerun goes
on filling the same shard. Sealing writes each file under a temporary name and moves it in
whole, the ``_stats.json`` last: a shard whose stats file exists is finished, and is never
written again; a staging folder whose stats file exists is only removed.

The sealing itself is ``shard_writer``; this module holds the names, the index and the
readers. The shard index a reader (the gallery, a training job) needs is the
``NNNNN_stats.json`` files (:func:`read_shard_index`): each names the shard's files, its sample
count and a preview sample.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias

import attrs

__all__ = [
    "DEFAULT_SAMPLES_PER_SHARD",
    "IMAGE_SUFFIXES",
    "OUTPUT_FORMATS",
    "STAGING_NAME",
    "DatasetError",
    "LocalTarget",
    "OutputFormat",
    "ShardStats",
    "ShardTarget",
    "files_subfolder",
    "is_shard_stats",
    "iter_shard_samples",
    "keys_name",
    "parse_stats",
    "read_shard_index",
    "read_tar_member",
    "require_pyarrow",
    "sample_key",
    "sealed_keys",
    "shard_name",
    "stats_number",
    "write_rows_parquet",
]

#: The image files a layout takes, by extension.
IMAGE_SUFFIXES = frozenset((".png", ".jpg", ".jpeg", ".webp", ".gif"))
#: The layouts ``--output-format`` takes.
OutputFormat: TypeAlias = Literal["files", "webdataset", "parquet"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("files", "webdataset", "parquet")
#: img2dataset's default, and a size tools and object stores list comfortably.
DEFAULT_SAMPLES_PER_SHARD = 10_000
#: The staging folders of shards not sealed yet, in the run's local folder.
STAGING_NAME = ".shards"
PARQUET_EXTRA = "pip install 'dreambooth-async[parquet]'"
SHARD_FORMAT = "dreambooth-async-shard"

_STATS = re.compile(r"^(\d{5,})_stats\.json$")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
#: Rows written to Parquet per row group: bounds the memory a shard of large images takes.
_ROW_GROUP = 64


class DatasetError(Exception):
    """A dataset layout that cannot be written or read (pyarrow missing, a corrupt shard)."""


def shard_name(number: int) -> str:
    """``00000``, ``00001``...: the stem of shard ``number``'s files."""
    return f"{number:05d}"


def keys_name(number: int) -> str:
    """The hidden file beside shard ``number`` that lists its items' keys, one a line."""
    return f".{shard_name(number)}_keys.txt"


def sealed_keys(target: ShardTarget) -> set[str]:
    """The keys of the items whose images are in a sealed shard at ``target``."""
    keys: set[str] = set()
    for name in target.listing():
        match = _STATS.match(name)
        if match is not None:
            data = target.read_bytes(keys_name(int(match[1])))
            keys.update(line for line in data.decode("utf-8").splitlines() if line)
    return keys


def is_shard_stats(name: str) -> bool:
    """True for a sealed shard's ``NNNNN_stats.json``."""
    return _STATS.match(name) is not None


def stats_number(name: str) -> int | None:
    """The shard number of ``NNNNN_stats.json``; None for any other name."""
    match = _STATS.match(name)
    return int(match[1]) if match is not None else None


def files_subfolder(position: int, per_shard: int) -> str:
    """The subfolder (``""`` for the top of the folder) of the image numbered ``position``
    (from 0, in the order ``metadata.jsonl`` got them) in the ``files`` layout."""
    number = position // per_shard
    return "" if number == 0 else shard_name(number)


def sample_key(file_name: str) -> str:
    """The WebDataset key of the image ``file_name``: its stem, without the dots that readers
    take for the start of the extension (a name that needed cleaning gets a hash, so it stays
    unique)."""
    stem = Path(file_name).stem
    key = _KEY_UNSAFE.sub("_", stem)
    if key != stem or not key:
        key = f"{key[:60]}_{hashlib.blake2b(stem.encode(), digest_size=5).hexdigest()}"
    return key


def require_pyarrow(what: str) -> None:
    """Raise DatasetError when pyarrow is not installed."""
    if importlib.util.find_spec("pyarrow") is None:
        raise DatasetError(f"{what} needs pyarrow: {PARQUET_EXTRA}")


# --- where sealed shards go -------------------------------------------------------------------


class ShardTarget(Protocol):
    """Where sealed shard files go: the local output folder, or an fsspec output
    (:class:`~dreambooth_async.cli.dataset.fsout.FsOutput` has these methods)."""

    def put_file(self, local: Path, name: str) -> None:
        """Put ``local`` in place as ``name``, whole or not at all."""

    def listing(self) -> list[str]:
        """The names (relative) of everything there."""

    def read_bytes(self, name: str) -> bytes:
        """The bytes of ``name``."""


class LocalTarget:
    """A local output folder as a :class:`ShardTarget`: files move in with one rename."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def put_file(self, local: Path, name: str) -> None:
        os.replace(local, self.folder / name)

    def listing(self) -> list[str]:
        try:
            return [p.name for p in self.folder.iterdir()]
        except FileNotFoundError:
            return []

    def read_bytes(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()


# --- the index of sealed shards ---------------------------------------------------------------


@attrs.frozen
class ShardStats:
    """What ``NNNNN_stats.json`` says of a sealed shard."""

    #: The shard's number (``00000`` is 0).
    number: int
    #: ``webdataset`` or ``parquet``.
    output_format: str
    #: The shard's files, by role: ``tar``, ``parquet`` (None when not written).
    files: Mapping[str, str | None]
    #: Samples (images) in the shard.
    count: int
    #: Items (prompts) whose images are in the shard.
    items: int
    #: The key of a sample to preview the shard with (``KEY.png`` in the tar, say).
    preview: str | None
    #: The file name of the preview sample's image inside the shard.
    preview_file: str | None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    @property
    def name(self) -> str:
        """``00000``: the stem of the shard's files."""
        return shard_name(self.number)


def parse_stats(number: int, data: bytes) -> ShardStats | None:
    try:
        raw = json.loads(data)
    except ValueError:
        return None
    if not isinstance(raw, dict) or raw.get("format") != SHARD_FORMAT:
        return None
    files = raw.get("files")
    if not isinstance(files, dict):
        files = {}
    return ShardStats(
        number=number,
        output_format=str(raw.get("output_format")),
        files=dict(files),
        count=int(raw.get("count", 0)),
        items=int(raw.get("items", 0)),
        preview=raw.get("preview"),
        preview_file=raw.get("preview_file"),
        raw=raw,
    )


def read_shard_index(folder: Path | ShardTarget) -> list[ShardStats]:
    """The sealed shards of a ``webdataset`` or ``parquet`` output, in order, from their
    ``NNNNN_stats.json`` files (a local folder, or any :class:`ShardTarget`)."""
    target = LocalTarget(folder) if isinstance(folder, Path) else folder
    shards = []
    for name in sorted(target.listing()):
        match = _STATS.match(name)
        if match is None:
            continue
        stats = parse_stats(int(match[1]), target.read_bytes(name))
        if stats is not None:
            shards.append(stats)
    return shards


def read_tar_member(tar_path: Path, member: str) -> bytes | None:
    """The bytes of ``member`` (``KEY.png``, say) of a local shard tar, None if absent."""
    with tarfile.open(tar_path, "r") as tar:
        try:
            handle = tar.extractfile(member)
        except KeyError:
            return None
        return handle.read() if handle is not None else None


# --- Parquet ----------------------------------------------------------------------------------


def _arrow_type(values: Iterable[Any]) -> Any:
    # Each shard is a file of its own: a column whose type depended on the shard's values (all
    # None here, all ints there) would not load as one dataset, so the choice is fixed.
    import pyarrow as pa  # type: ignore[import-untyped,import-not-found,unused-ignore]

    kinds = {type(v) for v in values if v is not None}
    if kinds == {bool}:
        return pa.bool_()
    if kinds and kinds <= {int}:
        return pa.int64()
    if kinds and kinds <= {int, float}:
        return pa.float64()
    return pa.string()


def _feature(arrow_type: Any) -> dict[str, str]:
    import pyarrow as pa  # type: ignore[import-untyped,import-not-found,unused-ignore]

    names = {pa.bool_(): "bool", pa.int64(): "int64", pa.float64(): "float64"}
    return {"dtype": names.get(arrow_type, "string"), "_type": "Value"}


def _cell(value: Any, arrow_type: Any) -> Any:
    import pyarrow as pa  # type: ignore[import-untyped,import-not-found,unused-ignore]

    if value is None:
        return None
    if arrow_type == pa.string() and not isinstance(value, str):
        return json.dumps(value)
    if arrow_type == pa.float64():
        return float(value)
    return value


def write_rows_parquet(
    path: Path,
    rows: Sequence[Mapping[str, Any]],
    images: Sequence[Path] | None = None,
) -> None:
    """Write ``rows`` to the Parquet file ``path``; with ``images`` (one per row), an ``image``
    column first with each image's bytes, the ``datasets`` Image feature. Written a row group
    at a time, so a shard of large images is never in memory whole."""
    require_pyarrow("Parquet output")
    import pyarrow as pa  # type: ignore[import-untyped,import-not-found,unused-ignore]
    import pyarrow.parquet as pq  # type: ignore[import-untyped,import-not-found,unused-ignore]

    columns = list(dict.fromkeys(k for row in rows for k in row))
    types = {c: _arrow_type(row.get(c) for row in rows) for c in columns}
    fields = [pa.field(c, types[c]) for c in columns]
    features: dict[str, Any] = {}
    if images is not None:
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        fields.insert(0, pa.field("image", image_type))
        features["image"] = {"_type": "Image"}
    features.update({c: _feature(types[c]) for c in columns})
    schema = pa.schema(fields).with_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})}
    )
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, max(len(rows), 1), _ROW_GROUP):
            chunk = rows[start : start + _ROW_GROUP]
            data: dict[str, list[Any]] = {
                c: [_cell(row.get(c), types[c]) for row in chunk] for c in columns
            }
            if images is not None:
                data["image"] = [
                    {"bytes": p.read_bytes(), "path": p.name}
                    for p in images[start : start + _ROW_GROUP]
                ]
            writer.write_table(pa.Table.from_pydict(data, schema=schema))


# --- reading shards back (merge) --------------------------------------------------------------


@attrs.frozen
class Sample:
    """One image of a dataset and its metadata row (``file_name`` names the image)."""

    name: str
    data: bytes
    row: Mapping[str, Any]


def _tar_samples(path: Path) -> Iterator[Sample]:
    # Members of one key sit together (this module writes them so); a key's group ends when
    # the next key starts.
    group: dict[str, bytes] = {}
    current: str | None = None

    def emit() -> Iterator[Sample]:
        image = next((ext for ext in group if f".{ext}" in IMAGE_SUFFIXES), None)
        if current is None or image is None:
            return
        row = json.loads(group["json"]) if "json" in group else {}
        if "prompt" not in row and "txt" in group:
            row["prompt"] = group["txt"].decode("utf-8")
        yield Sample(f"{current}.{image}", group[image], row)

    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            key, dot, ext = base.partition(".")
            if not dot:
                continue
            if key != current:
                yield from emit()
                group, current = {}, key
            handle = tar.extractfile(member)
            group[ext.lower()] = handle.read() if handle is not None else b""
        yield from emit()


def _parquet_samples(path: Path) -> Iterator[Sample]:
    require_pyarrow(f"reading {path}")
    import pyarrow.parquet as pq  # type: ignore[import-untyped,import-not-found,unused-ignore]

    handle = pq.ParquetFile(path)
    for batch in handle.iter_batches(batch_size=_ROW_GROUP):
        for row in batch.to_pylist():
            image = row.pop("image", None)
            if not isinstance(image, dict) or image.get("bytes") is None:
                continue
            name = str(image.get("path") or row.get("file_name") or "image.png")
            yield Sample(Path(name).name, image["bytes"], row)


def iter_shard_samples(folder: Path) -> Iterator[Sample]:
    """Every sample of a ``webdataset`` or ``parquet`` output folder, shard by shard (only
    sealed shards: those with a stats file, else every ``.tar`` or ``.parquet`` there)."""
    shards = read_shard_index(folder)
    if shards:
        for shard in shards:
            if shard.files.get("tar"):
                yield from _tar_samples(folder / str(shard.files["tar"]))
            elif shard.files.get("parquet"):
                yield from _parquet_samples(folder / str(shard.files["parquet"]))
        return
    tars = sorted(folder.glob("*.tar"))
    for tar in tars:
        yield from _tar_samples(tar)
    if not tars:
        for parquet in sorted(folder.glob("*.parquet")):
            yield from _parquet_samples(parquet)
