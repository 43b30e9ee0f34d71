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

The shard index a reader (the gallery, a training job) needs is the ``NNNNN_stats.json`` files
(:func:`read_shard_index`): each names the shard's files, its sample count and a preview sample.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import tarfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias

import attrs

__all__ = [
    "DEFAULT_SAMPLES_PER_SHARD",
    "OUTPUT_FORMATS",
    "STAGING_NAME",
    "DatasetError",
    "LocalTarget",
    "OutputFormat",
    "ShardStats",
    "ShardTarget",
    "ShardWriter",
    "files_subfolder",
    "is_shard_stats",
    "iter_shard_samples",
    "keys_name",
    "read_shard_index",
    "read_tar_member",
    "require_pyarrow",
    "sample_key",
    "sealed_keys",
    "shard_name",
    "write_rows_parquet",
]

#: The layouts ``--output-format`` takes.
OutputFormat: TypeAlias = Literal["files", "webdataset", "parquet"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("files", "webdataset", "parquet")
#: img2dataset's default, and a size tools and object stores list comfortably.
DEFAULT_SAMPLES_PER_SHARD = 10_000
#: The staging folders of shards not sealed yet, in the run's local folder.
STAGING_NAME = ".shards"
PARQUET_EXTRA = "pip install 'dreambooth-async[parquet]'"
SHARD_FORMAT = "dreambooth-async-shard"

_IMAGE_SUFFIXES = frozenset((".png", ".jpg", ".jpeg", ".webp", ".gif"))
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


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# --- where sealed shards go -------------------------------------------------------------------


class ShardTarget(Protocol):
    """Where sealed shard files go: the local output folder, or an fsspec output
    (:class:`~dreambooth_async._fsout.FsOutput` has these methods)."""

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


def _parse_stats(number: int, data: bytes) -> ShardStats | None:
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
        stats = _parse_stats(int(match[1]), target.read_bytes(name))
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


# --- writing shards ---------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(mtime)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


class ShardWriter:
    """Fills and seals the shards of a ``webdataset`` or ``parquet`` output.

    ``local`` is the run's local folder (the staging folders go in ``local/.shards``);
    ``target`` is where sealed shards go (default: ``local`` itself). :meth:`open` first
    (it finishes what a killed run left), then :meth:`add` each image, :meth:`finish` at the
    end of a run to seal the last, partly filled shard.
    """

    def __init__(
        self,
        local: Path,
        output_format: OutputFormat,
        per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
        target: ShardTarget | None = None,
    ) -> None:
        if output_format not in ("webdataset", "parquet"):
            raise ValueError(f"ShardWriter writes webdataset or parquet, not {output_format}")
        if per_shard < 1:
            raise ValueError(f"samples per shard must be at least 1, got {per_shard}")
        if output_format == "parquet":
            require_pyarrow("--output-format parquet")
        self.local = local
        self.output_format = output_format
        self.per_shard = per_shard
        self.target: ShardTarget = target or LocalTarget(local)
        self.staging = local / STAGING_NAME
        #: The shards sealed by this writer, in order.
        self.sealed: list[ShardStats] = []
        self.parquet = importlib.util.find_spec("pyarrow") is not None
        self._next = 0
        self._current: int | None = None
        self._count = 0
        self._failed = 0
        self._ambiguous = 0

    def __repr__(self) -> str:
        return f"<ShardWriter {self.output_format} {self.local} per_shard={self.per_shard}>"

    def _folder(self, number: int) -> Path:
        return self.staging / shard_name(number)

    def _images(self, folder: Path) -> list[Path]:
        try:
            return sorted(
                p
                for p in folder.iterdir()
                if p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith(".")
            )
        except FileNotFoundError:
            return []

    def open(self) -> list[str]:
        """Pick up after an earlier run: staging folders of shards it sealed are removed, a
        full one is sealed now, a partly filled one is filled on. Returns notes for the user."""
        notes = []
        sealed = {int(match[1]) for name in self.target.listing() if (match := _STATS.match(name))}
        staged: list[int] = []
        with contextlib.suppress(FileNotFoundError):
            for entry in self.staging.iterdir():
                if entry.name.startswith("."):
                    # A temporary file of a seal that was cut off: never in place, not a shard.
                    entry.unlink(missing_ok=True)
                elif entry.is_dir() and entry.name.isdigit():
                    staged.append(int(entry.name))
        for number in sorted(staged):
            if number in sealed:
                shutil.rmtree(self._folder(number), ignore_errors=True)
        waiting = sorted(n for n in staged if n not in sealed)
        self._next = max([*sealed, *staged], default=-1) + 1
        for number in waiting:
            self._current = number
            self._count = len(self._images(self._folder(number)))
            if self._count:
                notes.append(
                    f"shard {shard_name(number)}: {self._count} images kept from an earlier "
                    "run, filled on"
                )
            if self._count >= self.per_shard or number != waiting[-1]:
                self.seal()
        return notes

    def add(self, image: Path, row: Mapping[str, Any], *, keep_source: bool = False) -> str:
        """Stage ``image`` with its metadata ``row`` in the open shard (moved there, or linked
        with ``keep_source``); seal the shard once it holds ``per_shard`` images. Returns the
        sample's key."""
        if self._current is None:
            self._current = self._next
            self._next += 1
            self._count = 0
        folder = self._folder(self._current)
        folder.mkdir(parents=True, exist_ok=True)
        key = sample_key(image.name)
        suffix = image.suffix.lower() or ".png"
        stored = {**row, "file_name": f"{key}{suffix}"}
        # Row and caption first, the image last: a sample counts once its image is here.
        (folder / f"{key}.json").write_text(json.dumps(stored, ensure_ascii=False) + "\n")
        (folder / f"{key}.txt").write_text(str(row.get("prompt") or ""))
        placed = folder / f"{key}{suffix}"
        if keep_source:
            placed.unlink(missing_ok=True)
            try:
                os.link(image, placed)
            except OSError:
                shutil.copyfile(image, placed)
        else:
            os.replace(image, placed)
        self._count += 1
        if self._count >= self.per_shard:
            self.seal()
        return key

    def note_failure(self, *, ambiguous: bool = False) -> None:
        """An item ended failed (or ambiguous) while the open shard was filling: counted in
        its stats."""
        if ambiguous:
            self._ambiguous += 1
        else:
            self._failed += 1

    def finish(self) -> None:
        """Seal the open shard, if it holds any image (the end of a run)."""
        if self._current is not None and self._count:
            self.seal()
        with contextlib.suppress(OSError):
            self.staging.rmdir()  # only when empty: nothing waits for a later run

    @staticmethod
    def _row(folder: Path, image: Path) -> dict[str, Any]:
        try:
            row = json.loads((folder / f"{image.stem}.json").read_bytes())
        except (OSError, ValueError):
            row = None  # written before the image, so only lost by hand: the image still counts
        return row if isinstance(row, dict) else {"file_name": image.name}

    def _temporary(self, name: str) -> Path:
        return self.staging / f".{name}.tmp-{uuid.uuid4().hex[:12]}"

    def _put(self, temporary: Path, name: str) -> None:
        _fsync(temporary)
        try:
            self.target.put_file(temporary, name)
        finally:
            temporary.unlink(missing_ok=True)

    def seal(self) -> ShardStats | None:
        """Write the open shard's files, stats last, and drop its staging folder."""
        number = self._current
        if number is None:
            return None
        folder = self._folder(number)
        images = self._images(folder)
        self._current = None
        if not images:
            shutil.rmtree(folder, ignore_errors=True)
            return None
        name = shard_name(number)
        rows = [self._row(folder, p) for p in images]
        mtimes = [p.stat().st_mtime for p in images]
        files: dict[str, str | None] = {}
        size = 0
        if self.output_format == "webdataset":
            temporary = self._temporary(f"{name}.tar")
            with tarfile.open(temporary, "w", format=tarfile.PAX_FORMAT) as tar:
                for image, row, mtime in zip(images, rows, mtimes, strict=True):
                    key = image.stem
                    _tar_member(
                        tar,
                        f"{key}.json",
                        json.dumps(row, ensure_ascii=False).encode() + b"\n",
                        mtime,
                    )
                    _tar_member(tar, image.name, image.read_bytes(), mtime)
                    _tar_member(tar, f"{key}.txt", str(row.get("prompt") or "").encode(), mtime)
            size = temporary.stat().st_size
            self._put(temporary, f"{name}.tar")
            files["tar"] = f"{name}.tar"
            files["parquet"] = None
            if self.parquet:
                temporary = self._temporary(f"{name}.parquet")
                write_rows_parquet(temporary, rows)
                self._put(temporary, f"{name}.parquet")
                files["parquet"] = f"{name}.parquet"
        else:
            temporary = self._temporary(f"{name}.parquet")
            write_rows_parquet(temporary, rows, images)
            size = temporary.stat().st_size
            self._put(temporary, f"{name}.parquet")
            files["parquet"] = f"{name}.parquet"
        opened = min(mtimes)
        raw = {
            "format": SHARD_FORMAT,
            "version": 1,
            "shard": name,
            "output_format": self.output_format,
            "files": files,
            "count": len(images),
            "items": len({row.get("key") for row in rows}),
            "failed": self._failed,
            "ambiguous": self._ambiguous,
            "bytes": size,
            "preview": images[0].stem,
            "preview_file": images[0].name,
            "opened": datetime.datetime.fromtimestamp(opened, datetime.UTC).isoformat(
                timespec="seconds"
            ),
            "sealed": _now(),
            "seconds": round(max(0.0, time.time() - opened), 3),
        }
        # The items' keys, for a rerun that lost its local folder (see _fsout.restore_state).
        temporary = self._temporary(keys_name(number))
        temporary.write_text("".join(f"{k}\n" for k in dict.fromkeys(r.get("key") for r in rows)))
        self._put(temporary, keys_name(number))
        temporary = self._temporary(f"{name}_stats.json")
        temporary.write_text(json.dumps(raw, indent=1) + "\n")
        # The stats file last: once it is in place the shard is finished.
        self._put(temporary, f"{name}_stats.json")
        shutil.rmtree(folder, ignore_errors=True)
        self._failed = self._ambiguous = 0
        stats = _parse_stats(number, json.dumps(raw).encode())
        assert stats is not None
        self.sealed.append(stats)
        return stats

    def staged(self) -> int:
        """Images waiting in the open shard."""
        return self._count if self._current is not None else 0


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
        image = next((ext for ext in group if f".{ext}" in _IMAGE_SUFFIXES), None)
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
