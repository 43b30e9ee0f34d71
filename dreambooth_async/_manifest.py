"""An append-only JSONL record of a batch, so that a batch killed at any moment resumes without
paying twice.

One line per change of an item's state, keyed by the item's stable key. The lines that stand
between the user and a double payment are flushed *and* fsynced before the action they guard:

- ``submitting`` is durable before the POST goes out, so a crash during the POST leaves an item
  that reads as "may have landed" (ambiguous) rather than "never sent";
- ``submitted`` (with the job id) is durable right after the service accepted it, so a restart
  attaches to the job by id instead of submitting it again;
- ``done`` is written after the item's files are on disk, so a restart never skips an image it
  does not have.

``not_landed`` records a submission the service provably turned away (queue full, 429): the item
is submitted again on restart. A crash can tear the last line (a write cut short); reading
tolerates and removes that one fragment. The API key is never written: every line goes through
the client's redactor before it reaches the file.

The file itself is a :class:`~dreambooth_async._jsonl.JsonlFile`: each line one ``os.write``
on an ``O_APPEND`` descriptor (lines from concurrent writers in one process never interleave),
a torn last line cut off on opening, and an exclusive ``flock`` that keeps two processes from
appending to the same manifest. This module owns what the lines mean: the header, the records,
and the fold of an item's records into its state.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeAlias

from ._errors import DreamboothError
from ._jsonl import FileInUse, JsonlFile, ShortWrite, scan
from ._manifest_sidecar import load_fold, save_fold
from ._manifest_states import (
    _STATUSES,
    ItemState,
    ItemStatus,
    ManifestIndex,
    _fold_fields,
)

__all__ = [
    "ItemState",
    "ItemStatus",
    "Manifest",
    "ManifestError",
    "ManifestIndex",
    "index_manifest",
    "read_manifest",
]

FORMAT = "dreambooth-async-manifest"
VERSION = 1

_decode = json.JSONDecoder().decode

#: A fold is saved beside a manifest (:mod:`._manifest_sidecar`) from this many bytes of lines
#: (a few hundred items): below it, folding the lines again costs milliseconds.
SAVE_FROM = 256 * 1024


class ManifestError(DreamboothError):
    """The manifest cannot be used: corrupt in the middle, not a manifest, or in use."""


def _parse_line(raw: bytes, number: int, path: Path) -> dict[str, Any] | None:
    try:
        record = _decode(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    if "manifest" in record:
        if number != 1 or record.get("manifest") != FORMAT:
            raise ManifestError(f"{path}: line {number}: unexpected header {record!r}")
        if record.get("version") != VERSION:
            raise ManifestError(
                f"{path}: manifest version {record.get('version')!r} is not supported"
            )
        return record
    if not isinstance(record.get("key"), str) or record.get("event") not in _STATUSES:
        return None
    return record


class _Fold:
    """Reads a manifest's lines (see :func:`_jsonl.scan`) into every item's last state.

    Only an unterminated last line is tolerated (what a crash mid-write leaves: every line is
    written whole, newline last). Anything else that is not a record is corruption, and a file
    that does not start with the header is not a manifest: both raise rather than risk
    appending to, or truncating, a file that is not ours.

    ``states`` is a plain dict of every item's :class:`ItemState` (:func:`read_manifest`), or
    a :class:`ManifestIndex` that keeps finished items as where their line is; only the latter
    is saved beside the file and resumed from there (:meth:`resume`, :meth:`save`).
    """

    _HEADER = json.dumps({"manifest": FORMAT}, separators=(",", ":"))[:-1].encode()

    def __init__(self, path: Path, *, compact: bool = False) -> None:
        self.path = path
        self.index = ManifestIndex(path) if compact else None
        self.fields: dict[str, dict[str, Any]] = {}
        self._offset = 0
        #: Whole lines folded, and how many of them came from the saved fold.
        self.lines = 0
        self._saved_lines = 0

    def resume(self, fd: int) -> tuple[int, int]:
        """Take the saved fold of the file (read through ``fd``) when it is sound; returns the
        byte and line number to fold from ((0, 1): the whole file)."""
        if self.index is None:
            return 0, 1
        saved = load_fold(self.path, fd)
        if saved is None:
            return 0, 1
        self.index.close()
        self.index = saved.index
        self._offset = saved.size
        self.lines = self._saved_lines = saved.lines
        return saved.size, saved.lines + 1

    def save(self, fd: int) -> None:
        """Save the fold beside the file (read through ``fd``) when it folded lines the saved
        one did not; a fold that cannot be saved is only folded again next time."""
        if self.index is None or self.lines == self._saved_lines or self._offset < SAVE_FROM:
            return
        with contextlib.suppress(OSError):
            save_fold(self.path, fd, self.index, size=self._offset, lines=self.lines)

    def line(self, number: int, raw: bytes) -> None:
        path = self.path
        offset = self._offset
        self._offset += len(raw)
        self.lines = number
        record = _parse_line(raw, number, path)
        if record is None:
            if number == 1:
                raise ManifestError(f"{path}: not a dreambooth-async manifest")
            raise ManifestError(
                f"{path}: line {number} is not a manifest record (the file is corrupt; "
                "an interrupted batch only ever leaves a torn last line)"
            )
        if number == 1 and "manifest" not in record:
            raise ManifestError(f"{path}: not a dreambooth-async manifest (no header line)")
        if "key" in record:
            if self.index is not None:
                self.index.fold(record, offset)
            else:
                fields = self.fields.get(record["key"])
                if fields is None:
                    fields = self.fields[record["key"]] = {}
                _fold_fields(fields, record)

    @property
    def states(self) -> dict[str, ItemState]:
        return {key: ItemState(key=key, **fields) for key, fields in self.fields.items()}

    def torn(self, number: int, raw: bytes) -> None:
        # A torn header is still recognisably ours.
        header = self._HEADER
        if number == 1 and not (raw.startswith(header) or header.startswith(raw)):
            raise ManifestError(f"{self.path}: not a dreambooth-async manifest")


def read_manifest(path: str | os.PathLike[str]) -> dict[str, ItemState]:
    """Every item's last state in the manifest at ``path`` (read-only; a torn last line is
    ignored). Handy for reports and tests."""
    target = Path(path)
    if not target.exists():
        return {}
    fold = _Fold(target)
    scan(target, fold.line, torn=fold.torn)
    return fold.states


def index_manifest(path: str | os.PathLike[str]) -> ManifestIndex:
    """The manifest at ``path`` as a :class:`ManifestIndex` (read-only; empty when there is no
    file): what planning and the gallery read, in a few dozen bytes per finished item. The
    fold a batch saved beside the file on closing is used when sound (only the lines after it
    are read; see :mod:`._manifest_sidecar`)."""
    target = Path(path)
    fold = _Fold(target, compact=True)
    try:
        fd = os.open(target, os.O_RDONLY)
    except FileNotFoundError:
        assert fold.index is not None
        return fold.index
    try:
        start, first = fold.resume(fd)
        # Read-only (a dry run writes nothing): the saved fold is the batch's to write.
        scan(target, fold.line, torn=fold.torn, fd=fd, start=start, first=first)
    finally:
        os.close(fd)
    assert fold.index is not None
    return fold.index


#: Turns text that may contain the API key into text that does not.
Redactor: TypeAlias = Callable[[str], str]


def _no_redaction(text: str) -> str:
    return text


class Manifest:
    """The manifest of one batch, open for appending. Use :meth:`open`; :meth:`close` when done.

    ``states`` holds what the file said when it was opened (what a resuming batch needs), as a
    :class:`ManifestIndex` (a finished item costs a few dozen bytes); the lines this process
    appends are not kept in memory, so a long batch costs no memory here.
    """

    def __init__(
        self,
        file: JsonlFile,
        states: ManifestIndex,
        *,
        redact: Redactor,
    ) -> None:
        self.path = file.path
        self._file = file
        self.states = states
        self._redact = redact

    def __repr__(self) -> str:
        return f"<Manifest {str(self.path)!r} items={len(self.states)}>"

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        redact: Redactor | None = None,
        durable: bool = True,
    ) -> Manifest:
        """Open (creating if needed) the manifest at ``path`` for a batch.

        Reads the states of an earlier run, cuts off a torn last line, and takes an exclusive
        lock (:class:`ManifestError` if another process holds it). ``durable=False`` skips
        fsync (tests, throwaway batches): a crash may then lose the last lines.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fold = _Fold(target, compact=True)
        try:
            file = JsonlFile.open(
                target,
                fold.line,
                torn=fold.torn,
                lock=True,
                mode=0o600,
                durable=durable,
                resume=fold.resume,
            )
        except FileInUse:
            raise ManifestError(
                f"{target} is in use by another batch (another process holds its lock)"
            ) from None
        assert fold.index is not None
        try:
            manifest = cls(file, fold.index, redact=redact or _no_redaction)
            if file.size == 0:
                manifest._write({"manifest": FORMAT, "version": VERSION}, sync=True)
            # Saved now when it read lines the saved fold did not cover (a run killed before
            # closing, or a manifest from before sidecars): closing then folds only this run's.
            fold.save(file.fileno())
        except BaseException:
            file.close()
            raise
        return manifest

    def close(self) -> None:
        """Save the fold of the whole file beside it (what a rerun reads instead of every line;
        see :mod:`._manifest_sidecar`), release the lock and the file."""
        if not self._file.closed:
            try:
                self._save_fold()
            finally:
                self._file.close()
                self.states.close()

    def _save_fold(self) -> None:
        # The lines this process appended are folded here, once, from the file (not kept in
        # memory during the run); the same fold a reader would do. Under the lock: nobody
        # else appends meanwhile.
        fd = self._file.fileno()
        fold = _Fold(self.path, compact=True)
        try:
            start, first = fold.resume(fd)
            scan(self.path, fold.line, torn=fold.torn, fd=fd, start=start, first=first)
            fold.save(fd)
        except (OSError, ValueError, ManifestError):
            pass  # a fold not saved is folded again by the next reader
        finally:
            if fold.index is not None:
                fold.index.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get(self, key: str) -> ItemState | None:
        """The state the file recorded for ``key`` when it was opened."""
        return self.states.get(key)

    def __iter__(self) -> Iterator[ItemState]:
        return iter(self.states.values())

    def images_paid(self) -> int:
        """Images earlier runs paid for (see :meth:`ManifestIndex.images_paid`)."""
        return self.states.images_paid()

    # --- writing ------------------------------------------------------------------------------

    def _write(self, record: Mapping[str, Any], *, sync: bool) -> None:
        if self._file.closed:
            raise ManifestError(f"{self.path} is closed")
        line = self._redact(json.dumps(record, separators=(",", ":"), default=str)) + "\n"
        try:
            self._file.append(line.encode("utf-8"), sync=sync)
        except ShortWrite as exc:  # pragma: no cover - a full disk, say
            raise ManifestError(str(exc)) from None

    def _record(self, key: str, event: ItemStatus, *, sync: bool, **fields: Any) -> None:
        record: dict[str, Any] = {"key": key, "event": event, "t": round(time.time(), 3)}
        record.update({k: v for k, v in fields.items() if v is not None})
        self._write(record, sync=sync)

    def pending(self, key: str, index: int) -> None:
        """The item entered the batch (not durable: losing it loses nothing)."""
        self._record(key, "pending", sync=False, index=index)

    def submitting(self, key: str, attempt: int) -> None:
        """About to POST: durable before the request leaves."""
        self._record(key, "submitting", sync=True, attempt=attempt)

    def not_landed(self, key: str, reason: str) -> None:
        """The service provably turned the submission away (not durable: if lost, the item
        reads as ambiguous, which errs on the safe side)."""
        self._record(key, "not_landed", sync=False, reason=reason)

    def submitted(
        self,
        key: str,
        job_id: str,
        *,
        fetch_url: str | None = None,
        eta: float | None = None,
        key_index: int | None = None,
    ) -> None:
        """The service accepted the item as job ``job_id`` (paid with key ``key_index``, by
        position, when there are several): durable at once."""
        self._record(
            key,
            "submitted",
            sync=True,
            job_id=job_id,
            fetch_url=fetch_url,
            eta=eta,
            key_index=key_index,
        )

    def done(
        self,
        key: str,
        *,
        job_id: str | None,
        files: list[str],
        output: list[str],
        seed: int | None,
    ) -> None:
        """The item's result is in and its files (``files``, relative names) are on disk."""
        self._record(key, "done", sync=True, job_id=job_id, files=files, output=output, seed=seed)

    def failed(self, key: str, error: BaseException, *, job_id: str | None = None) -> None:
        """The item ended with ``error`` (recorded by type name and message)."""
        self._record(
            key,
            "failed",
            sync=True,
            job_id=job_id,
            error=type(error).__name__,
            message=str(error)[:2000],
        )

    def ambiguous(self, key: str, error: BaseException | None, *, detail: str) -> None:
        """The submission may or may not have landed; it is not sent again by default."""
        self._record(
            key,
            "ambiguous",
            sync=True,
            error=type(error).__name__ if error is not None else None,
            message=detail[:2000],
        )
