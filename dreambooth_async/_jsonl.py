"""An append-only JSONL file that a crash at any moment leaves usable.

Every line is written whole by one ``os.write`` on an ``O_APPEND`` descriptor, newline last, so
lines from concurrent writers in one process never interleave and a crash can only leave the
*last* line torn. Opening scans the file, hands every whole line to the owner's reader (which
decides what a line means, and what is corruption), and cuts a torn last line off so that the
next line starts on a line of its own. An exclusive ``flock`` keeps a second process out, where
the owner asks for one.

The batch manifest and ``metadata.jsonl`` are both such files; what their lines mean is theirs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

try:  # POSIX only; elsewhere two processes on one file are the user's problem.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileInUse", "JsonlFile", "ShortWrite", "lock_exclusive", "scan"]

#: Reads one whole line: (line number from 1, the line's bytes with its newline). It may raise
#: to refuse the file.
LineReader = Callable[[int, bytes], None]


class FileInUse(Exception):
    """Another process holds the file's lock."""


class ShortWrite(OSError):
    """``os.write`` took only part of a line (a full disk, say)."""


def lock_exclusive(fd: int) -> None:
    """Take an exclusive lock on ``fd`` without waiting; :class:`FileInUse` if another process
    holds one. Released when the descriptor is closed."""
    if fcntl is None:  # pragma: no cover - Windows
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise FileInUse(f"fd {fd} is locked by another process") from None


def scan(
    path: Path,
    read: LineReader,
    *,
    torn: LineReader | None = None,
    fd: int | None = None,
    start: int = 0,
    first: int = 1,
) -> int:
    """Feed every whole line of ``path`` to ``read``; returns the byte length of the whole
    lines, where a torn last line (no newline: a write a crash cut short) starts.

    ``torn`` sees that fragment, if there is one (it may raise to refuse the file). ``fd``
    reads the file through that descriptor (a copy of it; the caller keeps it open) rather
    than by name. ``start`` skips the lines before that byte (the start of a line, line
    ``first``), read already.
    """
    good_end = start
    handle = path.open("rb") if fd is None else open(os.dup(fd), "rb")  # noqa: SIM115
    with handle:
        handle.seek(start)
        for number, raw in enumerate(handle, start=first):
            if not raw.endswith(b"\n"):
                if torn is not None:
                    torn(number, raw)
                break
            read(number, raw)
            good_end += len(raw)
    return good_end


class JsonlFile:
    """One such file, open for appending. Use :meth:`open`; :meth:`close` when done."""

    def __init__(self, path: Path, fd: int, *, size: int, durable: bool) -> None:
        self.path = path
        self._fd: int | None = fd
        #: Bytes of whole lines when the file was opened (0: a new or empty file).
        self.size = size
        self._durable = durable

    @classmethod
    def open(
        cls,
        path: Path,
        read: LineReader,
        *,
        torn: LineReader | None = None,
        lock: bool = False,
        mode: int = 0o600,
        durable: bool = True,
        resume: Callable[[int], tuple[int, int]] | None = None,
    ) -> JsonlFile:
        """Open (creating if needed) ``path`` for appending, under an exclusive lock if
        ``lock`` (:class:`FileInUse` otherwise); scan it (see :func:`scan`) and cut a torn last
        line off. ``durable=False`` skips the fsync of appends (tests, throwaway files).
        ``resume``, given the descriptor (locked), says where the scan starts: the byte and
        line number after what the owner has read already ((0, 1): the whole file)."""
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, mode)
        try:
            if lock:
                try:
                    lock_exclusive(fd)
                except FileInUse:
                    raise FileInUse(f"{path} is locked by another process") from None
            # Scanned under the lock: no other process appends meanwhile.
            start, first = resume(fd) if resume is not None else (0, 1)
            good_end = scan(path, read, torn=torn, fd=fd, start=start, first=first)
            if good_end < os.fstat(fd).st_size:
                # The previous run died mid-write: drop the fragment for good.
                os.ftruncate(fd, good_end)
                os.fsync(fd)
            if created and durable:
                _fsync_dir(path.parent)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, size=good_end, durable=durable)

    def fileno(self) -> int:
        """The descriptor (ValueError when closed): to read the file as this process has it."""
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    def append(self, data: bytes, *, sync: bool) -> None:
        """Append ``data`` (whole lines, each ending in a newline) in one write; fsync it first
        if ``sync`` (and the file is durable). Raises ValueError when closed,
        :class:`ShortWrite` when the write was cut short."""
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        # One write call: with O_APPEND the lines land whole, after every other line.
        written = os.write(self._fd, data)
        if written != len(data):  # pragma: no cover - a full disk, say
            raise ShortWrite(f"{self.path}: short write ({written} of {len(data)} bytes)")
        if sync and self._durable:
            os.fsync(self._fd)

    def close(self) -> None:
        """Release the lock and the file (again is fine)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _fsync_dir(directory: Path) -> None:
    # A new file's directory entry must be durable too, or a crash can lose the whole file.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - not possible on every platform
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
