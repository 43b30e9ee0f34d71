"""Outputs to any fsspec URL: ``generate --out s3://bucket/run/`` (``gs://``, ``file://``...).

The batch still downloads to a local folder (the *state folder*, which also keeps the manifest:
it stays local, where resuming needs it). Each image is then uploaded, and removed locally, so
a run never needs the disk for the whole set; ``metadata.jsonl`` is uploaded whole every so
often and at the end, and the gallery page once at the end.

No reader ever sees half an object under its final name: every upload goes to a temporary name
beside it (``.name.tmp-<random>``), which is then moved to the final name. On object stores
that move is a server-side copy, which makes the final object appear whole or not at all.

fsspec and its backends are optional extras (``[fsspec]``, ``[s3]``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import re
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "FsOutput",
    "OutputURLError",
    "RemoteMirror",
    "is_url",
    "state_folder",
]

FSSPEC_EXTRA = "pip install 'dreambooth-async[fsspec]' (for s3:// 'dreambooth-async[s3]')"
#: Where the state folders of remote outputs go by default (relative to the working folder).
STATE_ROOT = Path(".dreambooth-state")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class OutputURLError(Exception):
    """An output URL that cannot be used: fsspec or the backend missing, nothing writable."""


def is_url(text: str) -> bool:
    """True for ``scheme://...`` (``file://`` too), False for a plain local path."""
    return _SCHEME.match(text) is not None


def state_folder(url: str, root: Path = STATE_ROOT) -> Path:
    """The local folder that keeps the manifest and the staged images of the output ``url``:
    one per URL, so a rerun with the same ``--out`` finds its manifest again."""
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", url.rstrip("/").rsplit("/", 1)[-1])[:40] or "out"
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:12]
    return root / f"{tail}-{digest}"


class FsOutput:
    """An output folder at an fsspec URL: atomic uploads under names relative to it."""

    def __init__(self, url: str, **storage_options: Any) -> None:
        if importlib.util.find_spec("fsspec") is None:
            raise OutputURLError(f"--out {url}: a URL output needs fsspec: {FSSPEC_EXTRA}")
        import fsspec  # type: ignore[import-untyped,import-not-found,unused-ignore]

        try:
            fs, path = fsspec.core.url_to_fs(url, **storage_options)
        except (ImportError, ValueError) as exc:
            # Unknown protocol, or its backend (s3fs, gcsfs...) not installed.
            raise OutputURLError(f"--out {url}: {exc}") from None
        self.url = url
        self.fs: Any = fs
        self.root: str = str(path).rstrip("/")

    def __repr__(self) -> str:
        # The URL only: storage options may hold credentials.
        return f"FsOutput({self.url!r})"

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _temporary(self, name: str) -> str:
        folder, _, base = name.rpartition("/")
        hidden = f".{base}.tmp-{uuid.uuid4().hex[:12]}"
        return self._path(f"{folder}/{hidden}" if folder else hidden)

    def _write(self, name: str, write: Callable[[str], object]) -> None:
        temporary = self._temporary(name)
        try:
            write(temporary)
            self.fs.mv(temporary, self._path(name))
        except BaseException:
            # A failed or interrupted upload leaves nothing, under either name.
            with contextlib.suppress(Exception):
                if self.fs.exists(temporary):
                    self.fs.rm(temporary, recursive=True)
            raise

    def put_file(self, local: Path, name: str) -> None:
        """Upload ``local`` as ``name``, under a temporary name first."""
        self._write(name, lambda temporary: self.fs.put_file(str(local), temporary))

    def put_bytes(self, name: str, data: bytes) -> None:
        """Write ``data`` as ``name``, under a temporary name first."""
        self._write(name, lambda temporary: self.fs.pipe_file(temporary, data))

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self._path(name)))

    def read_bytes(self, name: str) -> bytes:
        return bytes(self.fs.cat_file(self._path(name)))

    def probe(self) -> None:
        """Raise OutputURLError when nothing can be written there (checked before anything is
        submitted: an image that cannot be stored is an image paid for and lost)."""
        name = f".dreambooth-probe-{uuid.uuid4().hex[:12]}"
        try:
            with contextlib.suppress(FileExistsError):
                self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(self._path(name), b"")
            self.fs.rm(self._path(name))
        except Exception as exc:
            raise OutputURLError(f"--out {self.url}: cannot write there ({exc})") from None


class RemoteMirror:
    """Copies a run's local output folder to an :class:`FsOutput` as it fills.

    ``add(files)`` uploads an item's images (before its metadata row is written, so every row
    uploaded names an image already there) and removes the local copies; ``metadata()`` uploads
    ``metadata.jsonl`` when ``interval`` seconds have passed since the last time (or always,
    with ``force``).
    """

    def __init__(
        self, local: Path, target: FsOutput, *, interval: float = 30.0, keep_local: bool = False
    ) -> None:
        self.local = local
        self.target = target
        self.interval = interval
        self.keep_local = keep_local
        self.uploaded = 0
        self._last_metadata = 0.0

    def add(self, files: Sequence[Path]) -> None:
        for path in files:
            if not path.exists():
                continue  # uploaded by an earlier run, which removed it
            name = path.relative_to(self.local).as_posix()
            self.target.put_file(path, name)
            self.uploaded += 1
            if not self.keep_local:
                path.unlink()

    def metadata(self, name: str = "metadata.jsonl", *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_metadata < self.interval:
            return
        path = self.local / name
        if path.exists():
            self.target.put_file(path, name)
        self._last_metadata = now

    def gallery(self, *, manifest: Path | None = None) -> None:
        """Write the gallery page locally (from the local metadata and manifest) and upload it;
        its image links are relative, so they work beside the uploaded images."""
        from ._gallery import GALLERY_NAME, write_gallery

        page = write_gallery(self.local, manifest=manifest)
        self.target.put_file(page, GALLERY_NAME)
