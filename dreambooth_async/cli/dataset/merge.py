"""``dreambooth-async merge OUT... --out DIR``: several output folders as one dataset.

Each ``generate`` output (a shard's, say) is a folder of images with a ``metadata.jsonl`` whose
``file_name`` names them, or the shards of a ``webdataset`` or ``parquet`` output (see
``layouts``). The merge is by default a Hugging Face *imagefolder*: the images (beyond
``--samples-per-shard`` of them, in numbered subfolders) and one ``metadata.jsonl`` whose
``file_name``\\ s match, readable by ``datasets.load_dataset("imagefolder", data_dir=DIR)``;
``--output-format webdataset|parquet`` writes shards instead, from sources of any layout.
Optionally (``--parquet``, needs pyarrow) the rows of a files merge also go into Parquet files
with the image bytes embedded, the layout the Hub serves directly.

Rules, so that a merge can be rerun as more shards finish:

- A name taken by an earlier folder with other bytes gets a suffix (``a.png`` -> ``a-2.png``);
  the same name with the same bytes is the same image (a folder given twice) and is kept once.
- A row whose image is missing is left out and reported; images without a row are not part of
  the dataset and are not copied.
- The merge is built beside ``DIR`` and put in place whole, so ``DIR`` never shows half a
  dataset. An existing ``DIR`` is replaced only when an earlier merge made it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ... import _jsonl
from ..._exit import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from ..._settings import METADATA_NAME
from .layouts import (
    DEFAULT_SAMPLES_PER_SHARD,
    OUTPUT_FORMATS,
    STAGING_NAME,
    DatasetError,
    OutputFormat,
    files_subfolder,
    iter_shard_samples,
    read_shard_index,
)
from .shard_writer import ShardWriter

__all__ = [
    "MergeReport",
    "add_merge_parser",
    "merge_command",
    "merge_outputs",
    "read_metadata",
]

#: Left in a merged folder, so a later merge knows it may replace the folder.
MARKER_NAME = ".dreambooth-merge.json"
PARQUET_FOLDER = "parquet"
#: Target size of one Parquet file (image bytes, roughly): the Hub's usual shard size.
PARQUET_BYTES = 256 * 1024 * 1024


class MergeError(Exception):
    """A merge that cannot be done: a source that is not an output folder, a DIR in the way."""


@attrs.frozen
class MergeReport:
    """What a merge did."""

    out: Path
    #: Rows (images) in the merged metadata.jsonl.
    images: int
    #: Rows dropped because their image file is missing, as ``folder/file_name``.
    missing: tuple[str, ...] = ()
    #: Rows skipped as the same image already taken from an earlier folder.
    duplicates: int = 0
    #: Images renamed because an earlier folder had another image of that name.
    renamed: int = 0
    #: The Parquet files written (``--parquet``).
    parquet: tuple[Path, ...] = ()


def read_metadata(folder: Path) -> Iterator[dict[str, Any]]:
    """The rows of ``folder/metadata.jsonl``; a last line torn by a crash is ignored."""
    path = folder / METADATA_NAME
    rows: list[dict[str, Any]] = []

    def read(number: int, raw: bytes) -> None:
        if not raw.strip():
            return
        try:
            row = json.loads(raw)
        except ValueError:
            raise MergeError(f"{path}:{number}: not a metadata row") from None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise MergeError(f"{path}:{number}: a row without a file_name")
        rows.append(row)

    try:
        _jsonl.scan(path, read)  # a torn last line: generate cuts it off on resume too
    except FileNotFoundError:
        raise MergeError(f"{folder}: no {METADATA_NAME} (not an output folder?)") from None
    yield from rows


def _digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _free_name(name: str, taken: Mapping[str, str]) -> str:
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    number = 2
    while True:
        candidate = f"{stem}-{number}{dot}{suffix}"
        if candidate not in taken:
            return candidate
        number += 1


def _place(source: Path, target: Path) -> None:
    # A hard link costs no space for a million images on one disk; else a copy.
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _check_out(out: Path, sources: Sequence[Path]) -> None:
    for source in sources:
        if out == source or out in source.parents or source in out.parents:
            raise MergeError(f"--out {out} overlaps the folder {source} being merged")
    if out.exists() and not out.is_dir():
        raise MergeError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER_NAME).exists():
        raise MergeError(
            f"--out {out}: a folder with other files in it; merge into a new or empty folder "
            "(an earlier merge's folder is replaced)"
        )


def merge_outputs(
    sources: Sequence[Path | str],
    out: Path | str,
    *,
    parquet: bool = False,
    parquet_bytes: int = PARQUET_BYTES,
    output_format: OutputFormat = "files",
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
) -> MergeReport:
    """Join the output folders ``sources`` (of any layout: files, webdataset or parquet) into
    one dataset at ``out`` in the layout ``output_format``, ``samples_per_shard`` images a
    shard.

    See the module notes for names, duplicates and missing images. ``parquet=True`` (files
    output only) also writes ``out/parquet/train-NNNNN-of-NNNNN.parquet`` with the images
    embedded (needs pyarrow).

    :raises MergeError: a source is no output folder, ``out`` holds other files, or pyarrow is
        missing for a Parquet layout.
    """
    if output_format not in OUTPUT_FORMATS:
        raise MergeError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}")
    if parquet and output_format != "files":
        raise MergeError("--parquet goes with --output-format files (parquet embeds already)")
    folders = [Path(s).resolve() for s in sources]
    if not folders:
        raise MergeError("nothing to merge: name at least one output folder")
    target = Path(out).resolve()
    for folder in folders:
        if not folder.is_dir():
            raise MergeError(f"{folder}: not a folder")
    _check_out(target, folders)
    if parquet or output_format == "parquet":
        _require_pyarrow()
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}.merging-", dir=target.parent))
    try:
        try:
            report = _build(folders, building, target, output_format, samples_per_shard)
        except DatasetError as exc:
            raise MergeError(str(exc)) from None
        files: tuple[Path, ...] = ()
        if parquet:
            written = _write_parquet(building, parquet_bytes)
            files = tuple(target / p.relative_to(building) for p in written)
        _swap_in(building, target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return attrs.evolve(report, parquet=files)


def _is_files_output(folder: Path) -> bool:
    return (folder / METADATA_NAME).exists() or not (
        read_shard_index(folder) or any(folder.glob("*.tar")) or any(folder.glob("*.parquet"))
    )


def _samples(
    folder: Path, missing: list[str]
) -> Iterator[tuple[str, Path | bytes, dict[str, Any]]]:
    """``(name, image, row)`` for every image of an output folder of any layout; ``image`` is
    the file, or the bytes out of a shard. Rows of a files output whose image is missing go
    to ``missing``."""
    if not _is_files_output(folder):
        for sample in iter_shard_samples(folder):
            yield sample.name, sample.data, dict(sample.row)
        return
    for row in read_metadata(folder):
        name = row["file_name"]
        image = folder / name
        # A file_name that climbs out of its folder is not one of its images.
        if ".." in Path(name).parts or Path(name).is_absolute() or not image.is_file():
            missing.append(f"{folder}/{name}")
            continue
        yield Path(name).name, image, row


class _FilesOut:
    """The merged images and ``metadata.jsonl``; beyond ``per_shard`` images, in numbered
    subfolders as ``generate`` makes them."""

    def __init__(self, building: Path, per_shard: int) -> None:
        self.building = building
        self.per_shard = per_shard
        self.count = 0
        self.rows = (building / METADATA_NAME).open("w", encoding="utf-8")

    def add(self, name: str, image: Path | bytes, row: Mapping[str, Any]) -> None:
        subfolder = files_subfolder(self.count, self.per_shard)
        file_name = f"{subfolder}/{name}" if subfolder else name
        target = self.building / file_name
        target.parent.mkdir(exist_ok=True)
        if isinstance(image, Path):
            _place(image, target)
        else:
            target.write_bytes(image)
        self.rows.write(json.dumps({**row, "file_name": file_name}) + "\n")
        self.count += 1

    def close(self) -> None:
        self.rows.flush()
        os.fsync(self.rows.fileno())
        self.rows.close()


class _ShardsOut:
    """The merged samples as the shards of a ``webdataset`` or ``parquet`` output."""

    def __init__(self, building: Path, output_format: OutputFormat, per_shard: int) -> None:
        self.writer = ShardWriter(building, output_format, per_shard)
        self.loose = building / STAGING_NAME / ".merging"
        self.loose.mkdir(parents=True)

    def add(self, name: str, image: Path | bytes, row: Mapping[str, Any]) -> None:
        fields = {k: v for k, v in row.items() if k != "file_name"}
        if isinstance(image, Path):
            self.writer.add(image, fields, keep_source=True)
            return
        loose = self.loose / name
        loose.write_bytes(image)
        self.writer.add(loose, fields)

    def close(self) -> None:
        shutil.rmtree(self.loose, ignore_errors=True)
        self.writer.finish()


def _build(
    folders: Sequence[Path],
    building: Path,
    target: Path,
    output_format: OutputFormat = "files",
    per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
) -> MergeReport:
    taken: dict[str, str] = {}  # merged file name -> sha256 of its bytes
    missing: list[str] = []
    duplicates = renamed = 0
    out: _FilesOut | _ShardsOut = (
        _FilesOut(building, per_shard)
        if output_format == "files"
        else _ShardsOut(building, output_format, per_shard)
    )
    try:
        for folder in folders:
            for name, image, row in _samples(folder, missing):
                digest = (
                    _digest(image) if isinstance(image, Path) else hashlib.sha256(image).hexdigest()
                )
                merged_name = name
                if merged_name in taken:
                    if taken[merged_name] == digest:
                        duplicates += 1
                        continue
                    merged_name = _free_name(merged_name, taken)
                    renamed += 1
                taken[merged_name] = digest
                out.add(merged_name, image, row)
    finally:
        out.close()
    (building / MARKER_NAME).write_text(
        json.dumps({"format": "dreambooth-async-merge", "sources": [str(f) for f in folders]})
        + "\n"
    )
    return MergeReport(
        out=target,
        images=len(taken),
        missing=tuple(missing),
        duplicates=duplicates,
        renamed=renamed,
    )


def _swap_in(building: Path, target: Path) -> None:
    """Put the built folder at ``target``; an earlier merge there is moved away first."""
    old: Path | None = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    try:
        os.replace(building, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- Parquet ----------------------------------------------------------------------------------


def _require_pyarrow() -> None:
    if importlib.util.find_spec("pyarrow") is None:
        raise MergeError("--parquet needs pyarrow: pip install 'dreambooth-async[parquet]'")


def _feature(arrow_type: Any) -> Any:
    """The ``datasets`` feature description of a metadata column's Arrow type."""
    import pyarrow as pa  # type: ignore[import-untyped,import-not-found,unused-ignore]

    if pa.types.is_list(arrow_type):
        return {"feature": _feature(arrow_type.value_type), "_type": "Sequence"}
    if pa.types.is_struct(arrow_type):
        return {field.name: _feature(field.type) for field in arrow_type}
    names = {
        pa.string(): "string",
        pa.large_string(): "large_string",
        pa.int64(): "int64",
        pa.float64(): "float64",
        pa.bool_(): "bool",
        pa.null(): "null",
    }
    return {"dtype": names.get(arrow_type, str(arrow_type)), "_type": "Value"}


def _write_parquet(folder: Path, target_bytes: int) -> list[Path]:
    import pyarrow as pa  # type: ignore[import-untyped,import-not-found,unused-ignore]
    import pyarrow.parquet as pq  # type: ignore[import-untyped,import-not-found,unused-ignore]

    rows = list(read_metadata(folder))
    columns = [c for c in dict.fromkeys(k for row in rows for k in row) if c != "file_name"]
    # One schema for every file, inferred from all rows: files with different column types
    # would not load as one dataset.
    meta_schema = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows]).schema
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([pa.field("image", image_type), *meta_schema])
    features = {"image": {"_type": "Image"}}
    features.update({f.name: _feature(f.type) for f in meta_schema})
    schema = schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    # Rows are split into files of about target_bytes of images, by file size on disk.
    groups: list[list[dict[str, Any]]] = [[]]
    size = 0
    for row in rows:
        image_size = (folder / row["file_name"]).stat().st_size
        if groups[-1] and size + image_size > target_bytes:
            groups.append([])
            size = 0
        groups[-1].append(row)
        size += image_size
    out = folder / PARQUET_FOLDER
    out.mkdir()
    paths = []
    for number, group in enumerate(groups):
        path = out / f"train-{number:05d}-of-{len(groups):05d}.parquet"
        table = pa.Table.from_pylist(
            [
                {
                    "image": {
                        "bytes": (folder / row["file_name"]).read_bytes(),
                        "path": row["file_name"],
                    },
                    **{c: row.get(c) for c in columns},
                }
                for row in group
            ],
            schema=schema,
        )
        pq.write_table(table, path)
        paths.append(path)
    return paths


# --- the command ------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_merge_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``merge OUT... --out DIR [--parquet]`` to the subcommands (runs ``merge_command``)."""
    parser = subparsers.add_parser(
        "merge",
        help="join output folders (shards) into one Hugging Face imagefolder dataset",
        description="Join the output folders of several `generate` runs (the shards of one "
        "run, say) into DIR: the images and one metadata.jsonl, loadable with "
        "datasets.load_dataset('imagefolder', data_dir=DIR). Names taken twice get a suffix; "
        "an image given twice is kept once. An earlier merge at DIR is replaced whole.",
    )
    parser.add_argument("sources", nargs="+", metavar="OUT", help="an output folder of generate")
    parser.add_argument("--out", required=True, metavar="DIR", help="the merged folder")
    parser.add_argument(
        "--output-format",
        choices=OUTPUT_FORMATS,
        default="files",
        help="the merged layout (default %(default)s): files (an imagefolder), webdataset "
        "(NNNNN.tar shards) or parquet (images embedded); sources may be of any of them",
    )
    parser.add_argument(
        "--samples-per-shard",
        type=_positive,
        default=DEFAULT_SAMPLES_PER_SHARD,
        metavar="N",
        help="images per shard: subfolder, tar or Parquet file (default %(default)s)",
    )
    parser.add_argument(
        "--parquet",
        action="store_true",
        help=f"also write DIR/{PARQUET_FOLDER}/train-*.parquet with the images embedded, for "
        "the Hub (needs pyarrow: the [parquet] extra)",
    )
    parser.set_defaults(func=merge_command)


def _counted(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def merge_command(args: argparse.Namespace) -> int:
    """``dreambooth-async merge``: exit 0 merged, 1 merged with rows whose image is missing,
    2 nothing merged (a source is no output folder, DIR is in the way, pyarrow missing)."""
    try:
        report = merge_outputs(
            args.sources,
            args.out,
            parquet=args.parquet,
            output_format=args.output_format,
            samples_per_shard=args.samples_per_shard,
        )
    except MergeError as exc:
        print(f"dreambooth-async: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"dreambooth-async: error: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return EXIT_USAGE
    extra = []
    if report.duplicates:
        extra.append(f"{report.duplicates} given twice kept once")
    if report.renamed:
        extra.append(f"{report.renamed} renamed")
    note = f" ({', '.join(extra)})" if extra else ""
    images, folders = _counted(report.images, "image"), _counted(len(args.sources), "folder")
    print(f"merged {images} from {folders}{note} into {report.out}")
    for path in report.parquet:
        print(f"  {path}")
    for name in report.missing[:20]:
        print(f"  missing image, row left out: {name}")
    if len(report.missing) > 20:
        print(f"  ... and {len(report.missing) - 20} more missing")
    with contextlib.suppress(OSError):
        sys.stdout.flush()
    return EXIT_PARTIAL if report.missing else EXIT_OK
