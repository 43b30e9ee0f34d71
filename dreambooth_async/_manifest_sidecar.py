"""The fold of a manifest, saved next to it, so that a rerun reads a compact file instead of
parsing every line again.

A manifest only grows (whole lines appended; a torn last line cut off), so the fold of its first
N bytes stays the fold of those bytes for good. The sidecar (``.NAME.fold`` beside the manifest
``NAME``) holds a :class:`~._manifest_states.ManifestIndex` as saved by its ``to_bytes``, the
byte length and line count of the prefix it folds, and a SHA-256 of that prefix; a reader
loads it, checks the prefix against the file (hashing is a hundred times cheaper than parsing
the lines) and folds only the lines after it.

Any doubt means the sidecar is not used and the whole manifest is folded, as if there were no
sidecar: missing, unreadable, of another version, corrupt (a SHA-256 of its own content), a
manifest shorter than the prefix or whose prefix changed (replaced, rewritten, truncated).
A wrong fold would pay for an image twice or skip one; a full fold only costs time.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from pathlib import Path

from ._manifest_states import ManifestIndex

__all__ = ["Saved", "load_fold", "save_fold", "sidecar_path"]

_MAGIC = b"DBA-FOLD"
_VERSION = 1
# magic, version, the prefix's bytes and lines, its SHA-256.
_HEAD = struct.Struct("<8sIQQ32s")
_CHECK = hashlib.sha256().digest_size
_CHUNK = 1 << 20


def sidecar_path(manifest: Path) -> Path:
    """Where the fold of ``manifest`` is saved."""
    return manifest.with_name(f".{manifest.name}.fold")


def _prefix_digest(fd: int, size: int) -> bytes:
    digest = hashlib.sha256()
    position = 0
    while position < size:
        chunk = os.pread(fd, min(_CHUNK, size - position), position)
        if not chunk:
            raise ValueError("the manifest is shorter than the saved prefix")
        digest.update(chunk)
        position += len(chunk)
    return digest.digest()


class Saved:
    """A fold loaded from its sidecar: ``index`` folds the manifest's first ``size`` bytes,
    ``lines`` whole lines."""

    __slots__ = ("index", "lines", "size")

    def __init__(self, index: ManifestIndex, size: int, lines: int) -> None:
        self.index = index
        self.size = size
        self.lines = lines


class _Reader:
    """Exact reads from the sidecar, each into memory of its own (the done items' buckets are
    kept as read), hashed as they go."""

    def __init__(self, handle: io.BufferedReader) -> None:
        self._handle = handle
        self._left = os.fstat(handle.fileno()).st_size
        self.digest = hashlib.sha256()

    def __call__(self, size: int) -> bytearray:
        # A size read from a corrupt sidecar must not become a huge allocation.
        if not 0 <= size <= self._left:
            raise ValueError("a size beyond the sidecar's end")
        data = bytearray(size)
        if self._handle.readinto(data) != size:
            raise ValueError("the sidecar ends early")
        self._left -= size
        self.digest.update(data)
        return data


def load_fold(manifest: Path, fd: int) -> Saved | None:
    """The saved fold of ``manifest`` when it is sound and its prefix is the file's (read
    through ``fd``, the descriptor the tail will be folded from); None otherwise (fold the
    whole file then)."""
    try:
        with sidecar_path(manifest).open("rb") as handle:
            read = _Reader(handle)
            magic, version, size, lines, prefix = _HEAD.unpack(read(_HEAD.size))
            if magic != _MAGIC or version != _VERSION or size <= 0 or lines <= 0:
                return None
            if os.fstat(fd).st_size < size or _prefix_digest(fd, size) != prefix:
                return None
            # The prefix must end a line: the tail is folded from a line's start.
            if os.pread(fd, 1, size - 1) != b"\n":
                return None
            index = ManifestIndex.from_bytes(manifest, read)
            # Its own checksum last, and nothing after it: a sidecar torn or altered anywhere.
            if handle.read(_CHECK + 1) != read.digest.digest():
                return None
    except (OSError, ValueError, TypeError, struct.error):
        return None
    return Saved(index, size, lines)


def save_fold(manifest: Path, fd: int, index: ManifestIndex, *, size: int, lines: int) -> None:
    """Save ``index``, the fold of the first ``size`` bytes (``lines`` whole lines) of
    ``manifest`` as read through ``fd``, as its sidecar, atomically; only the holder of the
    manifest's lock calls it. Raises OSError (the caller carries on without)."""
    if size <= 0 or lines <= 0:
        return
    try:
        # Hashed through the descriptor the lines were read from: the same file's bytes.
        prefix = _prefix_digest(fd, size)
    except ValueError as exc:
        raise OSError(str(exc)) from None
    pieces = [_HEAD.pack(_MAGIC, _VERSION, size, lines, prefix), *index.to_bytes()]
    _write_atomically(sidecar_path(manifest), pieces)


def _write_atomically(path: Path, pieces: list[bytes | bytearray]) -> None:
    # The command line's write_atomically lives above the manifest, and takes one buffer
    # (a copy of the fold); these are its steps, piece by piece. No fsync: a sidecar lost in
    # a crash is only a whole fold next time, and its checksum tells a half-written one.
    # One temporary name: only the batch holding the manifest's lock writes here, and what a
    # process killed mid-write leaves is overwritten next time rather than piling up.
    temporary = path.with_name(f"{path.name}.tmp")
    digest = hashlib.sha256()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        # Private as the manifest is (0o600): the fold names its jobs and files.
        with os.fdopen(os.open(temporary, flags, 0o600), "wb") as f:
            for piece in pieces:
                f.write(piece)
                digest.update(piece)
            f.write(digest.digest())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
