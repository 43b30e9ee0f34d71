"""Outputs to any fsspec URL: ``generate --out s3://bucket/run/`` (``gs://``, ``file://``...).

The batch still downloads to a local folder (the *state folder*, which also keeps the manifest:
it stays local, where resuming needs it). Each image is then uploaded, and removed locally, so
a run never needs the disk for the whole set; ``metadata.jsonl`` is uploaded whole every so
often and at the end, and the gallery page once at the end.

No reader ever sees half an object under its final name: every upload goes to a temporary name
beside it (``.name.tmp-<random>``), which is then moved to the final name. On object stores
that move is a server-side copy, which makes the final object appear whole or not at all.

The local state folder can be lost (a pod restarted without a persistent volume), and a rerun
without the manifest would pay for every image again. So a gzipped copy of the manifest is kept
beside the outputs under a hidden name (``.dreambooth-manifest.jsonl.gz``), uploaded a second or
so after each change to it and whole at the end of the run, with the run record and a small
marker saying whether the copy is the manifest as its run left it. A run that finds no local
manifest restores them (:func:`restore_state`); with outputs there and no copy, it refuses.

fsspec and its backends are optional extras (``[fsspec]``, ``[s3]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import hashlib
import importlib.util
import json
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

from ..._events import BatchEvent
from ..._manifest import Manifest, read_manifest
from .atomic import write_atomically
from .gallery import GALLERY_NAME, PAGES_FOLDER, write_gallery
from .layouts import is_shard_stats, sealed_keys

__all__ = [
    "FsOutput",
    "OutputURLError",
    "RemoteMirror",
    "UploadError",
    "is_url",
    "restore_state",
    "state_folder",
    "state_root",
]

FSSPEC_EXTRA = "pip install 'dreambooth-async[fsspec]' (for s3:// 'dreambooth-async[s3]')"
#: Names the folder that keeps the state folders of URL outputs (else the platform's own).
STATE_DIR_ENV = "DREAMBOOTH_STATE_DIR"
_APP_NAME = "dreambooth-async"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_IMAGE_SUFFIXES = frozenset((".png", ".jpg", ".jpeg", ".webp", ".gif"))
#: The batch events after which the manifest holds something a restart must know (a job id
#: above all: losing it is paying for the job again).
_STATE_EVENTS = frozenset(("submitted", "attached", "done", "failed", "ambiguous"))
_MARKER_FORMAT = "dreambooth-async-state-copy"


class OutputURLError(Exception):
    """An output URL that cannot be used: fsspec or the backend missing, nothing writable,
    or outputs there that no manifest accounts for."""


class UploadError(Exception):
    """An upload to the output URL failed (network, permissions, quota...). What was being
    uploaded stays in the local state folder, and a rerun uploads it."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def copy_name(manifest: Path) -> str:
    """The hidden name of the manifest's copy beside the outputs."""
    return f".{manifest.name}.gz"


def marker_name(manifest: Path) -> str:
    """The hidden name of the marker that says how complete the copy is."""
    return f".{manifest.name}.state"


def _hidden(name: str) -> bool:
    return any(part.startswith(".") for part in name.split("/"))


def is_url(text: str) -> bool:
    """True for ``scheme://...`` (``file://`` too), False for a plain local path."""
    return _SCHEME.match(text) is not None


def _platform_state_dir() -> Path:
    """The user's state directory for this program, as platformdirs says (the same rules,
    written out, when it is not installed)."""
    try:
        import platformdirs  # optional (the [fsspec] extra): the platforms' rules, kept current
    except ImportError:
        pass
    else:
        return Path(platformdirs.user_state_path(_APP_NAME, appauthor=False))
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / _APP_NAME
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / _APP_NAME
    return Path(os.environ.get("XDG_STATE_HOME") or home / ".local" / "state") / _APP_NAME


def state_root() -> Path:
    """Where the state folders of URL outputs go: ``$DREAMBOOTH_STATE_DIR`` when set, else
    the platform's user state directory (``~/.local/state/dreambooth-async`` on Linux), never
    the working folder of whatever runs the command."""
    given = os.environ.get(STATE_DIR_ENV, "").strip()
    return Path(given).expanduser() if given else _platform_state_dir()


def state_folder(url: str, root: Path | None = None) -> Path:
    """The local folder that keeps the manifest and the staged images of the output ``url``:
    one per URL (under ``root``, by default :func:`state_root`), so a rerun with the same
    ``--out`` finds its manifest again."""
    root = state_root() if root is None else root
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
        except BaseException as exc:
            # A failed or interrupted upload leaves nothing, under either name.
            with contextlib.suppress(Exception):
                if self.fs.exists(temporary):
                    self.fs.rm(temporary, recursive=True)
            if isinstance(exc, Exception):
                # Backends raise what they like (OSError, botocore's, aiohttp's...): one type
                # for the CLI to catch, one line to print.
                raise UploadError(
                    f"upload of {name} to {self.url} failed: {_one_line(exc)}"
                ) from exc
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

    def read_or_none(self, name: str) -> bytes | None:
        """``name``'s bytes, None when there is no such object."""
        try:
            return self.read_bytes(name)
        except FileNotFoundError:
            return None

    def listing(self) -> list[str]:
        """The names (relative, hidden ones too) of every object under the output URL."""
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(self.root)  # s3fs & co. cache listings
        try:
            paths = self.fs.find(self.root)
        except FileNotFoundError:
            return []
        prefix = f"{self.root}/"
        return [str(p)[len(prefix) :] for p in paths if str(p).startswith(prefix)]

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

    With ``manifest``, :meth:`keeping_state` also keeps the manifest's copy beside the outputs
    (see the module's docstring): ``on_event`` is the batch's event hook that says when the
    manifest changed, and the copy follows it at most every ``state_interval`` seconds (or four
    times as long as an upload of it takes, so that a big manifest does not hog the link).
    ``record`` names the run record (in ``local``) copied with it.

    The first :class:`UploadError` is kept in ``failure``: :meth:`upload` raises it, and
    :meth:`finish` then uploads no metadata that could name an image that is not there.
    """

    def __init__(
        self,
        local: Path,
        target: FsOutput,
        *,
        manifest: Path | None = None,
        record: str | None = None,
        interval: float = 30.0,
        state_interval: float = 1.0,
        keep_local: bool = False,
    ) -> None:
        self.local = local
        self.target = target
        self.manifest = manifest
        self.record = record
        self.interval = interval
        self.state_interval = state_interval
        self.keep_local = keep_local
        self.uploaded = 0
        self.failure: UploadError | None = None
        self._last_metadata = 0.0
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()

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
        page = write_gallery(self.local, manifest=manifest)
        # The pages after the first (and shard previews) first, so no link is ever dangling.
        pages = self.local / PAGES_FOLDER
        if pages.is_dir():
            files = sorted(p for p in pages.rglob("*") if p.is_file())
            for folder in sorted({p.parent for p in files}):
                # Object stores have no folders; a file system needs them made.
                with contextlib.suppress(Exception):
                    self.target.fs.makedirs(
                        f"{self.target.root}/{folder.relative_to(self.local).as_posix()}",
                        exist_ok=True,
                    )
            for path in files:
                self.target.put_file(path, path.relative_to(self.local).as_posix())
        self.target.put_file(page, GALLERY_NAME)

    def staged(self) -> int:
        """How many images wait in the local state folder for an upload."""
        return sum(
            1
            for path in self.local.rglob("*")
            if path.suffix.lower() in _IMAGE_SUFFIXES
            and not _hidden(path.relative_to(self.local).as_posix())
            and path.is_file()
        )

    # --- in a run ---------------------------------------------------------------------------

    async def upload(self, files: Sequence[Path]) -> None:
        """An item's images, then ``metadata.jsonl`` when due. Raises the run's first
        :class:`UploadError`, this upload's or an earlier one's (the state copy's too)."""
        if self.failure is not None:
            raise self.failure
        try:
            await asyncio.to_thread(self.add, files)
            await asyncio.to_thread(self.metadata)
        except UploadError as error:
            self.failure = error
            raise

    def leftovers(self) -> None:
        """Upload the images a killed run left in numbered subfolders (``files`` output in
        shards: each was moved there before its row, and uploaded after it)."""
        for path in sorted(self.local.glob("[0-9]*/*")):
            name = path.relative_to(self.local).as_posix()
            if path.suffix.lower() in _IMAGE_SUFFIXES and path.is_file() and not _hidden(name):
                self.add([path])

    def finish(self, *, manifest: Path | None = None, gallery: bool = True) -> UploadError | None:
        """The last ``metadata.jsonl`` and the gallery, unless an upload failed (the local
        metadata may then name images that are not uploaded); returns the first failure."""
        if self.failure is None:
            try:
                self.metadata(force=True)
                if gallery:
                    self.gallery(manifest=manifest)
            except UploadError as error:
                self.failure = error
        return self.failure

    # --- the manifest's copy ----------------------------------------------------------------

    def on_event(self, event: BatchEvent) -> None:
        """The batch's event hook: the manifest changed in a way a restart must know."""
        if event.kind in _STATE_EVENTS:
            self._changed.set()

    def save_state(self, *, complete: bool | None = None) -> None:
        """Upload the manifest's copy; with ``complete`` given, then the run record and the
        marker (``complete``: the copy is the manifest as its run left it)."""
        if self.manifest is None:
            return
        try:
            data = self.manifest.read_bytes()
        except FileNotFoundError:
            data = None
        if data is not None:
            # The batch appends as this reads: a line being written is left for the next copy.
            data = data[: data.rfind(b"\n") + 1]
            self.target.put_bytes(
                copy_name(self.manifest), gzip.compress(data, compresslevel=1, mtime=0)
            )
        if complete is None:
            return
        if self.record is not None and (self.local / self.record).exists():
            self.target.put_file(self.local / self.record, f".{self.record}")
        marker = {
            "format": _MARKER_FORMAT,
            "version": 1,
            "copy": copy_name(self.manifest),
            "complete": complete,
            "saved": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        self.target.put_bytes(marker_name(self.manifest), json.dumps(marker).encode() + b"\n")

    @contextlib.asynccontextmanager
    async def keeping_state(self) -> AsyncIterator[None]:
        """Keep the manifest's copy current while the block runs (enter it before the batch
        starts and leave it after the batch has ended). The first save, before anything is
        submitted, raises its UploadError; every failure goes to ``failure``."""
        try:
            await asyncio.to_thread(self.save_state, complete=False)
        except UploadError as error:
            self.failure = self.failure or error
            raise
        self._stop.clear()
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._copy_state, name="dreambooth-manifest-copy")
                try:
                    yield
                finally:
                    self._stop.set()
                    self._changed.set()
            # Leaving the group waited for the copier: an upload under way ended first (its
            # thread is not abandoned on cancellation), so it cannot land after the last.
        finally:
            try:
                # Whatever ended the run (Ctrl-C and SIGTERM too), the copy is now complete.
                await asyncio.to_thread(self.save_state, complete=True)
            except UploadError as error:
                self.failure = self.failure or error

    async def _copy_state(self) -> None:
        while True:
            await self._changed.wait()
            if self._stop.is_set():
                return
            self._changed.clear()
            started = time.monotonic()
            try:
                # anyio's worker thread is waited for even when the copier is cancelled.
                await anyio.to_thread.run_sync(self.save_state)
            except UploadError as error:
                self.failure = self.failure or error
                return
            pause = max(self.state_interval, 4 * (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), pause)


def _count_rows(data: bytes | None) -> int:
    return 0 if data is None else sum(1 for line in data.splitlines() if line.strip())


def restore_state(
    target: FsOutput,
    manifest: Path,
    *,
    local: Path,
    record: str,
    metadata: str = "metadata.jsonl",
    allow_new: bool = False,
    sharded: bool = False,
) -> list[str]:
    """Before a run with a URL output: when ``manifest`` does not exist (the state folder was
    lost, or this is the first run), restore it from its copy beside the outputs, with
    ``metadata`` and the run ``record`` into ``local``. Returns what to tell the user.

    Without a copy, outputs already there (images, or metadata rows) mean a run whose manifest
    is gone: running on would pay for them again, so this raises :class:`OutputURLError`
    unless ``allow_new`` (then the remote metadata is kept, so its rows are not lost).

    An item the copy shows done whose images never reached the URL (the run was killed between
    the two) is marked submitted again, so the rerun fetches its job rather than paying again.
    With ``sharded`` (``webdataset`` and ``parquet`` outputs), the images that reached the URL
    are those of the items in sealed shards (their ``.NNNNN_keys.txt``); the staged images of
    a shard not sealed yet were lost with the state folder, and are fetched again.
    """
    if manifest.exists():
        return []
    try:
        names = set(target.listing())
        copy = target.read_or_none(copy_name(manifest))
        marker = target.read_or_none(marker_name(manifest)) if copy is not None else None
        rows = target.read_or_none(metadata)
        saved_record = target.read_or_none(f".{record}") if copy is not None else None
    except Exception as exc:
        raise OutputURLError(f"--out {target.url}: cannot read it ({_one_line(exc)})") from None
    if copy is None:
        images = sorted(
            n
            for n in names
            if not _hidden(n) and (Path(n).suffix.lower() in _IMAGE_SUFFIXES or is_shard_stats(n))
        )
        if not images and not _count_rows(rows):
            return []  # a new output: nothing to lose
        if not allow_new:
            raise OutputURLError(
                f"--out {target.url} already holds {len(images)} images and "
                f"{_count_rows(rows)} metadata rows, but no manifest: not {manifest}, nor its "
                f"copy {copy_name(manifest)} there. Running on would pay for them again. Pass "
                "--manifest PATH (that run's manifest), or --new-manifest to start a new one "
                "anyway (rows kept, every prompt submitted again)"
            )
        if rows is not None and not (local / metadata).exists():
            write_atomically(local / metadata, rows)
        return [
            f"--new-manifest: no manifest for the {len(images)} images in {target.url}; "
            "a new one starts (its metadata rows are kept)"
        ]
    try:
        data = gzip.decompress(copy)
    except (OSError, EOFError) as exc:
        raise OutputURLError(
            f"--out {target.url}: the manifest copy {copy_name(manifest)} is unreadable "
            f"({_one_line(exc)}); pass --manifest PATH, or remove it to start anew"
        ) from None
    write_atomically(manifest, data)
    if rows is not None and not (local / metadata).exists():
        write_atomically(local / metadata, rows)
    if saved_record is not None and not (local / record).exists():
        write_atomically(local / record, saved_record)
    notes = [
        f"restored the manifest {manifest} from {target.url} ({copy_name(manifest)}): what "
        "it records is not paid for again"
    ]
    state: Any = None
    with contextlib.suppress(ValueError):
        state = json.loads(marker) if marker is not None else None
    if not (isinstance(state, dict) and state.get("complete") is True):
        saved = state.get("saved") if isinstance(state, dict) else None
        notes.append(
            f"the run that saved it{f' ({saved})' if saved else ''} was killed before its "
            "last save: a job it submitted in its last second or so may be submitted again"
        )
    if sharded:
        try:
            in_shards = sealed_keys(target)
        except Exception as exc:
            raise OutputURLError(
                f"--out {target.url}: cannot read its shards ({_one_line(exc)})"
            ) from None
        lost = [
            s
            for s in read_manifest(manifest).values()
            if s.status == "done" and s.files and s.key not in in_shards
        ]
    else:
        # A file of the files layout may sit in a numbered subfolder.
        present = {n.rsplit("/", 1)[-1] for n in names}
        lost = [
            s
            for s in read_manifest(manifest).values()
            if s.status == "done" and any(name not in present for name in s.files)
        ]
    if lost:
        refetch = [s for s in lost if s.job_id is not None]
        with Manifest.open(manifest) as reopened:
            for s in lost:
                if s.job_id is not None:
                    # The key that paid for it, where the manifest records one (several keys).
                    key_index = getattr(s, "key_index", None)
                    extra: dict[str, Any] = {} if key_index is None else {"key_index": key_index}
                    reopened.submitted(s.key, s.job_id, fetch_url=s.fetch_url, **extra)
                elif s.index is not None:
                    reopened.pending(s.key, s.index)
        notes.append(
            f"{len(lost)} items it shows done had not reached {target.url}: "
            f"{len(refetch)} are fetched again from their jobs"
            + (f", {len(lost) - len(refetch)} submitted again" if len(lost) > len(refetch) else "")
        )
    return notes
