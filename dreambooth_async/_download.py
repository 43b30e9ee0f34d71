"""Downloading output images: streamed to disk, checked, and never outside the target folder."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Protocol

import aiohttp

from . import _backoff
from ._errors import DownloadError, OutputError
from ._inline import decode_base64_image, image_extension, inline_image, is_base64_link

__all__ = [
    "DEFAULT_MAX_BYTES",
    "Outputs",
    "SessionSource",
    "copy_files",
    "download_result",
    "safe_file_name",
    "writable_folder",
]

# Its own handle on the package logger: the transport (and what it imports) is a floor above.
logger = logging.getLogger("dreambooth_async")

#: The most bytes one output image may have before a download is refused.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class SessionSource(Protocol):
    """Where a download finds an open HTTP session. Implemented by the client's session handle
    (the one its results keep for ``save()``): the client's session while the client is open,
    None otherwise, when a download opens a session of its own."""

    def live_session(self) -> aiohttp.ClientSession | None: ...


class Outputs(Protocol):
    """What a download reads of a result: its job id (for file names) and its outputs."""

    @property
    def id(self) -> str | None: ...
    @property
    def output(self) -> tuple[str, ...]: ...


_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/webp": ".webp",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_file_name(url: str, fallback: str) -> str:
    """A file name from the last segment of ``url``'s path, reduced to ``[A-Za-z0-9._-]``.

    Whatever the URL says (``..``, slashes, drive letters, control characters), the result is a
    single plain name; ``fallback`` is used when nothing usable is left.
    """
    segment = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    name = _UNSAFE.sub("_", segment).strip("._")[:120]
    return name or fallback


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name`` numbered (``0-2.png``) when ``taken`` already has it. Compared
    without case: ``0.PNG`` and ``0.png`` are one file on some file systems."""
    stem, dot, extension = name.rpartition(".")
    if not dot:
        stem, extension = name, ""
    candidate, number = name, 1
    while candidate.lower() in taken:
        number += 1
        candidate = f"{stem}-{number}{dot}{extension}"
    taken.add(candidate.lower())
    return candidate


@contextlib.asynccontextmanager
async def _session_for(sessions: SessionSource | None) -> AsyncIterator[aiohttp.ClientSession]:
    live = sessions.live_session() if sessions is not None else None
    if live is not None:
        yield live
        return
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        yield session


#: The least wait before asking again for an output that is not there yet (politeness).
_MIN_RETRY = 0.05


async def _download_one(
    session: aiohttp.ClientSession,
    url: str,
    directory: Path,
    fallback_name: str,
    *,
    not_found_grace: float,
    max_bytes: int,
    taken: set[str],
) -> Path:
    deadline = time.monotonic() + not_found_grace
    missing_since: float | None = None
    while True:
        asked = time.monotonic()
        async with session.get(url) as response:
            if response.status == 404 and time.monotonic() < deadline:
                # A just-finished output can take a moment to appear on the CDN: ask again
                # after as long as it has been missing (see _backoff.not_there_yet).
                if missing_since is None:
                    missing_since = asked
                delay = _backoff.not_there_yet(
                    time.monotonic(), asked=asked, missing_since=missing_since, floor=_MIN_RETRY
                )
            elif response.status != 200:
                raise DownloadError(f"GET {url} answered HTTP {response.status}", url=url)
            elif is_base64_link(url):
                data = await _read_base64_body(response, url, max_bytes)
                name = safe_file_name(url.rsplit(".", 1)[0], fallback_name)
                return _write_bytes(data, directory, name, taken, url=url)
            else:
                return await _write(response, url, directory, fallback_name, max_bytes, taken)
        await asyncio.sleep(_backoff.before_deadline(delay, deadline, time.monotonic()))


async def _read_base64_body(response: aiohttp.ClientResponse, url: str, max_bytes: int) -> bytes:
    """The image in a ``.base64`` link's body (base64 text, perhaps a data URL)."""
    # base64 takes 4 bytes of text for 3 of image.
    limit = max_bytes * 4 // 3 + 1024
    if response.content_length is not None and response.content_length > limit:
        raise DownloadError(
            f"GET {url}: {response.content_length} bytes exceeds max_bytes={max_bytes}", url=url
        )
    text = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        text += chunk
        if len(text) > limit:
            raise DownloadError(f"GET {url}: more than max_bytes={max_bytes} bytes", url=url)
    data = decode_base64_image(bytes(text))
    if data is None:
        raise DownloadError(f"GET {url}: the body is not a base64-encoded image", url=url)
    return data


def _write_bytes(data: bytes, directory: Path, stem: str, taken: set[str], *, url: str) -> Path:
    """Write an image held in memory (decoded base64) atomically, named by its real type."""
    extension = image_extension(data) or ".bin"
    stem = _UNSAFE.sub("_", stem).strip("._")[:120] or "image"
    name = stem if stem.lower().endswith(extension) else stem + extension
    name = _unique(name, taken)
    target = (directory / name).resolve()
    if target.parent != directory:
        raise DownloadError(f"refusing to write outside {directory}: {name!r}", url=url)
    partial = directory / f".{name}.{uuid.uuid4().hex[:8]}.part"
    try:
        partial.write_bytes(data)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


async def _write(
    response: aiohttp.ClientResponse,
    url: str,
    directory: Path,
    fallback_name: str,
    max_bytes: int,
    taken: set[str],
) -> Path:
    content_type = response.content_type.lower()
    if not content_type.startswith("image/"):
        raise DownloadError(f"GET {url}: content type {content_type!r} is not an image", url=url)
    if response.content_length is not None and response.content_length > max_bytes:
        raise DownloadError(
            f"GET {url}: {response.content_length} bytes exceeds max_bytes={max_bytes}", url=url
        )
    name = safe_file_name(url, fallback_name)
    extension = _EXTENSIONS.get(content_type)
    if extension and not name.lower().endswith(
        (extension, ".jpeg" if extension == ".jpg" else extension)
    ):
        name += extension
    name = _unique(name, taken)
    target = (directory / name).resolve()
    if target.parent != directory:
        raise DownloadError(f"refusing to write outside {directory}: {name!r}", url=url)
    partial = directory / f".{name}.{uuid.uuid4().hex[:8]}.part"
    written = 0
    try:
        with partial.open("wb") as handle:
            async for chunk in response.content.iter_chunked(64 * 1024):
                written += len(chunk)
                if written > max_bytes:
                    raise DownloadError(
                        f"GET {url}: more than max_bytes={max_bytes} bytes", url=url
                    )
                handle.write(chunk)
        os.replace(partial, target)  # atomic: a reader never sees half a file
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


async def _save_one(
    session: aiohttp.ClientSession,
    output: str,
    folder: Path,
    fallback: str,
    *,
    not_found_grace: float,
    max_bytes: int,
    taken: set[str],
) -> Path:
    """One entry of ``output``: an image carried inline (base64), or a link to fetch."""
    data = inline_image(output)
    if data is not None:
        if len(data) > max_bytes:
            raise DownloadError(f"an inline output has more than max_bytes={max_bytes} bytes")
        return _write_bytes(data, folder, fallback, taken, url="(inline base64 output)")
    if not output.lower().startswith(("http://", "https://")):
        raise DownloadError(
            f"an output is neither an http(s) link nor a base64 image: {output[:60]!r}"
        )
    return await _download_one(
        session,
        output,
        folder,
        fallback,
        not_found_grace=not_found_grace,
        taken=taken,
        max_bytes=max_bytes,
    )


def writable_folder(directory: str | os.PathLike[str]) -> Path:
    """``directory`` resolved, created if missing, and proven writable by a probe file;
    :class:`OutputError` otherwise. Checked before money is spent on images for it."""
    folder = Path(directory).resolve()
    probe = folder / f".write-probe-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"cannot write into {folder}: {exc.strerror or exc}", path=str(folder)
        ) from exc
    return folder


async def download_result(
    result: Outputs,
    directory: str | os.PathLike[str],
    *,
    sessions: SessionSource | None = None,
    not_found_grace: float = 30.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[Path]:
    """Save every image of ``result.output`` into ``directory`` (created if missing).

    Links are downloaded; base64 outputs (data URLs, bare base64, ``.base64`` links, as the
    service answers to ``"base64": "yes"``) are decoded and saved as real image files. A 404 is
    retried for ``not_found_grace`` seconds; a body that is not an image or is larger than
    ``max_bytes`` raises :class:`DownloadError` and leaves nothing behind. ``sessions`` lends
    the client's session while it is open; otherwise a session of its own is opened.
    """
    folder = writable_folder(directory)
    paths: list[Path] = []
    # Names used by this result so far: two outputs named alike (".../a/0.png" and
    # ".../b/0.png", a CDN's usual layout) must not overwrite each other.
    taken: set[str] = set()
    async with _session_for(sessions) as session:
        for index, url in enumerate(result.output):
            try:
                path = await _save_one(
                    session,
                    url,
                    folder,
                    f"{result.id or 'image'}-{index}",
                    not_found_grace=not_found_grace,
                    taken=taken,
                    max_bytes=max_bytes,
                )
            except aiohttp.ClientError as exc:
                raise DownloadError(f"GET {url} failed: {exc}", url=url) from None
            except OSError as exc:
                raise OutputError(
                    f"cannot write into {folder}: {exc.strerror or exc}", path=str(folder)
                ) from exc
            logger.debug("saved output %d to %s", index, path)
            paths.append(path)
    return paths


def copy_files(
    result: Outputs, files: Sequence[Path], directory: str | os.PathLike[str]
) -> list[Path]:
    """Copy ``files`` (stored copies, one per entry of ``result.output``) into ``directory``,
    named as a download of ``output`` would name them."""
    folder = writable_folder(directory)
    paths: list[Path] = []
    taken: set[str] = set()
    for index, (url, source) in enumerate(zip(result.output, files, strict=True)):
        stem = (
            safe_file_name(url, f"{result.id or 'image'}-{index}")
            if url.startswith(("http://", "https://"))
            else f"{result.id or 'image'}-{index}"
        )
        stem = stem.rsplit(".", 1)[0] if "." in stem else stem
        name = _unique(stem + source.suffix, taken)
        target = folder / name
        partial = folder / f".{name}.{uuid.uuid4().hex[:8]}.part"
        try:
            shutil.copyfile(source, partial)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        paths.append(target)
    return paths
