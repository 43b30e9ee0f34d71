"""The output folder of ``generate``: checked before anything is sent, locked for the run,
the record of the options its images were made with, and ``metadata.jsonl``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import attrs

from .._batch import BatchItem
from .._convert import structure_field
from .._digests import TextSet
from .._jsonl import FileInUse, JsonlFile, lock_exclusive
from .._models import Scheduler
from .._shard import shard_manifest_name
from .common import LOCK_NAME, MANIFEST_NAME, METADATA_NAME, RUN_NAME, InputError
from .dataset.atomic import write_atomically
from .dataset.layouts import (
    DEFAULT_SAMPLES_PER_SHARD,
    STAGING_NAME,
    files_subfolder,
    is_shard_stats,
)
from .dataset.shard_writer import ShardWriter
from .options import defaults_from_args, option_name

__all__ = [
    "MetadataWriter",
    "OutputLock",
    "RowSink",
    "RunRecord",
    "ShardSink",
    "check_output_folder",
    "folder_has_images",
    "make_output_folder",
    "manifest_name",
    "metadata_row",
    "run_options",
    "what_ran",
]

#: Fields recorded in metadata.jsonl, after file_name.
_METADATA_FIELDS = (
    "prompt",
    "negative_prompt",
    "seed",
    "model_id",
    "width",
    "height",
    "steps",
    "guidance_scale",
    "scheduler",
    "strength",
)


def _probe_writable(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (None when one can). Tried for real: a
    read-only file system, an immutable folder or an ACL say no only when asked, and
    ``os.access`` does not see them (nor does it say no to root)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".dreambooth-probe-", dir=folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return None


def check_output_folder(path: Path, flag: str = "--out") -> None:
    """Raise InputError, naming ``flag``, when ``path`` cannot be (or become) a writable
    folder; creates nothing. Called before anything is submitted: an image the run cannot
    save is an image paid for and lost."""
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{flag} {path}: exists and is not a folder")
        problem = _probe_writable(path)
        if problem is not None:
            raise InputError(f"{flag} {path}: cannot write in this folder ({problem})")
        return
    # The nearest ancestor that exists must be a folder we can create the rest in.
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{flag} {path}: {ancestor} is a file, not a folder")
    problem = _probe_writable(ancestor)
    if problem is not None:
        raise InputError(f"{flag} {path}: cannot create it in {ancestor} ({problem})")


def make_output_folder(path: Path, flag: str = "--out") -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # changed since the check, or a race
        raise InputError(f"{flag} {path}: cannot create it ({exc.strerror or exc})") from None


class OutputLock:
    """An exclusive lock on the output folder for the length of a run."""

    def __init__(self, folder: Path) -> None:
        try:
            self._fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise InputError(
                f"--out {folder}: cannot write in it ({exc.strerror or exc})"
            ) from None
        try:
            lock_exclusive(self._fd)
        except FileInUse:
            os.close(self._fd)
            raise InputError(f"{folder} is in use by another dreambooth-async run") from None

    def close(self) -> None:
        os.close(self._fd)


# --- the options a folder's images were made with ---------------------------------------------


def manifest_name(args: argparse.Namespace) -> str:
    """The default manifest's name in DIR: a shard's has the shard in it, so that each shard
    keeps (and resumes from) its own."""
    if getattr(args, "shard", None) is None:
        return MANIFEST_NAME
    index, count = args.shard
    return shard_manifest_name(MANIFEST_NAME, index, count)


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options that shape the requests of a ``generate`` run, by flag. Every request
    default counts, even one that cannot change a picture (``--webhook``), and a value
    spelled out is not the request's own default: derived seeds come from the fields given,
    so ``--steps 30`` and no ``--steps`` make different images."""
    options: dict[str, Any] = {
        "--api-version": args.api_version,
        "--random-seeds": bool(args.random_seeds),
    }
    if args.kind is not None:
        options["--kind"] = args.kind
    if getattr(args, "shard", None) is not None:
        options["--shard"] = "{}/{}".format(*args.shard)
    # Recorded only when not the default, so a folder of an earlier version resumes as it is.
    if getattr(args, "output_format", "files") != "files":
        options["--output-format"] = args.output_format
    per_shard = getattr(args, "samples_per_shard", DEFAULT_SAMPLES_PER_SHARD)
    if per_shard != DEFAULT_SAMPLES_PER_SHARD:
        options["--samples-per-shard"] = per_shard
    for name, value in defaults_from_args(args).items():
        options[option_name(name)] = value
    return options


def _shown(flag: str, value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


@attrs.frozen
class RunRecord:
    """``DIR/dreambooth-run.json``: the options of every run whose images are in the folder.

    A rerun with options that are not among them would put a second, different set of images
    next to the first, silently; it is refused unless ``--allow-mixed`` says to mix.
    """

    path: Path
    runs: tuple[Mapping[str, Any], ...] = ()

    FORMAT = "dreambooth-async-run"

    @classmethod
    def read(cls, folder: Path) -> RunRecord:
        path = folder / RUN_NAME
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return cls(path)
        except NotADirectoryError:  # the folder is a file: check_output_folder says so
            return cls(path)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read the run record ({exc})") from None
        runs = data.get("runs") if isinstance(data, dict) else None
        if not isinstance(runs, list) or data.get("format") != cls.FORMAT:
            raise InputError(f"{path}: not a dreambooth-async run record")
        return cls(
            path,
            tuple(
                run["options"]
                for run in runs
                if isinstance(run, dict) and isinstance(run.get("options"), dict)
            ),
        )

    def check(self, options: Mapping[str, Any], *, has_images: bool, allow_mixed: bool) -> None:
        """Raise InputError when this run would mix its images with another set's."""
        if not self.runs or not has_images or allow_mixed or dict(options) in self.runs:
            return
        before = self.runs[-1]
        changes = [
            f"{flag} {_shown(flag, options.get(flag))} (the folder's images: "
            f"{_shown(flag, before.get(flag))})"
            for flag in sorted(set(before) | set(options))
            if before.get(flag) != options.get(flag)
        ]
        raise InputError(
            f"--out {self.path.parent} holds images made with other options: "
            f"{'; '.join(changes)}. Run with the same options to resume that set, choose "
            "another --out, or add --allow-mixed to put both sets in this folder"
        )

    def save(self, options: Mapping[str, Any], *, has_images: bool) -> None:
        """Record ``options`` (replacing the record when the folder has no images yet)."""
        if dict(options) in self.runs and has_images:
            return
        runs = [*self.runs, options] if has_images else [options]
        data = {"format": self.FORMAT, "version": 1, "runs": [{"options": o} for o in runs]}
        write_atomically(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def folder_has_images(out: Path) -> bool:
    """True when ``out`` holds images of a run: metadata rows, sealed or staged shards."""
    try:
        if (out / METADATA_NAME).stat().st_size > 0:
            return True
    except OSError:
        pass
    try:
        return any(is_shard_stats(p.name) for p in out.iterdir()) or any(
            (out / STAGING_NAME).iterdir()
        )
    except OSError:
        return False


# Where the service's ``meta`` says what ran (v6 caps steps silently, a random seed is drawn):
# field -> the names meta uses for it.
_META_NAMES: Mapping[str, tuple[str, ...]] = {
    "seed": ("seed",),
    "width": ("W", "width"),
    "height": ("H", "height"),
    "steps": ("steps", "num_inference_steps"),
    "guidance_scale": ("guidance_scale", "guidance"),
    "scheduler": ("scheduler",),
}


def what_ran(item: BatchItem) -> dict[str, Any]:
    """The generation settings the service reports in the result's ``meta``, typed as the
    request's fields; a value the meta lacks or garbles is left to the request."""
    meta = item.result.meta if item.result is not None else {}
    ran: dict[str, Any] = {}
    for field, names in _META_NAMES.items():
        value = next((meta[name] for name in names if meta.get(name) not in (None, "")), None)
        if value is None:
            continue
        try:
            ran[field] = (
                structure_field(type(item.request), field, value)
                if field != "scheduler"
                else str(value)
            )
        except ValueError:
            continue
    if "seed" not in ran and item.request.seed is None and item.result is not None:
        ran["seed"] = item.result.seed
    return ran


def metadata_row(
    item: BatchItem, number: int, file_name: str, ran: Mapping[str, Any]
) -> dict[str, Any]:
    """The metadata row of ``item``'s image number ``number``, stored as ``file_name``;
    ``ran`` is what the service says ran (:func:`what_ran`)."""
    request = item.request
    row: dict[str, Any] = {"file_name": file_name}
    for name in _METADATA_FIELDS:
        value = ran[name] if name in ran else getattr(request, name, None)
        row[name] = value.value if isinstance(value, Scheduler) else value
    row.update(
        kind=request.kind,
        samples=request.samples,
        sample_index=number,
        job_id=item.job_id,
        key=item.key,
    )
    return row


class RowSink(Protocol):
    """Where ``generate`` puts each item's images and rows: ``metadata.jsonl`` beside the
    images (:class:`MetadataWriter`) or shards (:class:`ShardSink`)."""

    #: The files the last :meth:`add` left in the local folder, for a URL output to upload.
    placed: tuple[Path, ...]

    def add(self, item: BatchItem) -> int:
        """Take a done item's images; returns how many new rows (samples) it made."""

    def close(self) -> None:
        """Release the files."""


class MetadataWriter:
    """``metadata.jsonl``: one row per image, appended once the image is on disk, never twice.

    Rows already in the file (from an earlier run) are remembered by image name; a row torn
    by a crash is cut off before appending. With ``per_shard``, the images beyond the first
    ``per_shard`` are moved into numbered subfolders (:func:`files_subfolder`), the image
    before its row: an image a killed run moved but has no row for is found there again.
    """

    def __init__(self, path: Path, per_shard: int = DEFAULT_SAMPLES_PER_SHARD) -> None:
        self.path = path
        self.per_shard = per_shard
        # The names only need answering "written already?": 16 bytes each, not the string.
        self.known = TextSet()
        self.rows = 0
        self.written = 0
        self.placed: tuple[Path, ...] = ()
        # No lock of its own: the output folder's (OutputLock) keeps other runs out.
        self._file = JsonlFile.open(path, self._read, mode=0o644)
        # Images a killed run moved into the open subfolder before writing their rows: the
        # rows still to come name them where they are.
        self._orphans: dict[str, str] = {}
        subfolder = files_subfolder(self.rows, per_shard)
        if subfolder:
            with contextlib.suppress(FileNotFoundError):
                for entry in (path.parent / subfolder).iterdir():
                    if entry.is_file() and entry.name not in self.known:
                        self._orphans[entry.name] = f"{subfolder}/{entry.name}"

    def _read(self, number: int, raw: bytes) -> None:
        try:
            row = json.loads(raw)
        except ValueError:
            raise InputError(f"{self.path}:{number}: not a metadata row") from None
        if isinstance(row, dict) and isinstance(row.get("file_name"), str):
            self.known.add(PurePosixPath(row["file_name"]).name)
            self.rows += 1

    def add(self, item: BatchItem) -> int:
        """Append the rows for ``item``'s files that are not in the file yet; returns how many."""
        rows = []
        placed = []
        folder = self.path.parent
        # One item's images stay together, in the shard of its first one.
        subfolder = files_subfolder(self.rows, self.per_shard)
        ran = what_ran(item)
        for number, path in enumerate(item.files):
            if path.name in self.known:
                if path.exists():
                    placed.append(path)
                continue
            file_name = self._orphans.pop(path.name, None) or (
                f"{subfolder}/{path.name}" if subfolder else path.name
            )
            final = folder / file_name
            if final != path and path.exists():
                final.parent.mkdir(exist_ok=True)
                os.replace(path, final)
            if final.exists():
                placed.append(final)
            rows.append(metadata_row(item, number, file_name, ran))
        self.placed = tuple(placed)
        if rows:
            data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            self._file.append(data.encode("utf-8"), sync=True)
            for row in rows:
                self.known.add(PurePosixPath(row["file_name"]).name)
            self.rows += len(rows)
            self.written += len(rows)
        return len(rows)

    def close(self) -> None:
        self._file.close()


class ShardSink:
    """Each done item's images, with their rows, into the shards of a ``webdataset`` or
    ``parquet`` output (:class:`ShardWriter`). An image no longer where the batch put it was
    staged, or sealed into a shard, by an earlier run."""

    def __init__(self, writer: ShardWriter) -> None:
        self.writer = writer
        self.placed: tuple[Path, ...] = ()

    def add(self, item: BatchItem) -> int:
        ran = what_ran(item)
        added = 0
        for number, path in enumerate(item.files):
            if path.exists():
                self.writer.add(path, metadata_row(item, number, path.name, ran))
                added += 1
        return added

    def close(self) -> None:
        pass
