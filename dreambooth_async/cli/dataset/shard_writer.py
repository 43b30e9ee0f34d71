"""Sealing the shards of a ``webdataset`` or ``parquet`` output (the layouts are described in
``layouts``): images staged in ``.shards/NNNNN/`` until a shard is full, then its files written
under temporary names and moved in whole, the ``_stats.json`` last."""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import io
import json
import os
import shutil
import tarfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .layouts import (
    DEFAULT_SAMPLES_PER_SHARD,
    IMAGE_SUFFIXES,
    SHARD_FORMAT,
    STAGING_NAME,
    LocalTarget,
    OutputFormat,
    ShardStats,
    ShardTarget,
    keys_name,
    parse_stats,
    require_pyarrow,
    sample_key,
    shard_name,
    stats_number,
    write_rows_parquet,
)

__all__ = ["ShardWriter"]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


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
                if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )
        except FileNotFoundError:
            return []

    def open(self) -> list[str]:
        """Pick up after an earlier run: staging folders of shards it sealed are removed, a
        full one is sealed now, a partly filled one is filled on. Returns notes for the user."""
        notes = []
        numbers = (stats_number(name) for name in self.target.listing())
        sealed = {n for n in numbers if n is not None}
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
        stats = parse_stats(number, json.dumps(raw).encode())
        assert stats is not None
        self.sealed.append(stats)
        return stats

    def staged(self) -> int:
        """Images waiting in the open shard."""
        return self._count if self._current is not None else 0
