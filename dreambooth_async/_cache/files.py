"""The cache's images: content-addressed copies (``<sha256>.<ext>``) that outlive the links."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from .._download import download_result, safe_file_name, writable_folder
from .._models import DEFAULT_MAX_BYTES, GenerationResult
from .._transport import logger

if TYPE_CHECKING:
    from .._client import DreamboothClient

__all__ = ["CachedResult", "copy_files", "keep_images"]


@attrs.frozen(kw_only=True)
class CachedResult(GenerationResult):
    """A :class:`GenerationResult` kept by the cache. ``files`` are the stored copies of the
    images, one per ``output`` entry (empty when they could not be fetched when stored)."""

    files: tuple[Path, ...] = attrs.field(default=(), repr=False)

    async def save(
        self,
        directory: str | os.PathLike[str],
        *,
        not_found_grace: float = 30.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> list[Path]:
        """Copy the stored images into ``directory`` (no download); the links are used only
        when a stored copy is missing."""
        if len(self.files) != len(self.output) or not all(p.is_file() for p in self.files):
            return await super().save(
                directory, not_found_grace=not_found_grace, max_bytes=max_bytes
            )
        return copy_files(self, directory)


def copy_files(result: CachedResult, directory: str | os.PathLike[str]) -> list[Path]:
    """Copy ``result.files`` into ``directory``, named like a download of ``output`` would be."""
    folder = writable_folder(directory)
    paths: list[Path] = []
    taken: set[str] = set()
    for index, (url, source) in enumerate(zip(result.output, result.files, strict=True)):
        stem = (
            safe_file_name(url, f"{result.id or 'image'}-{index}")
            if url.startswith(("http://", "https://"))
            else f"{result.id or 'image'}-{index}"
        )
        stem = stem.rsplit(".", 1)[0] if "." in stem else stem
        name = stem + source.suffix
        number = 1
        while name.lower() in taken:
            number += 1
            name = f"{stem}-{number}{source.suffix}"
        taken.add(name.lower())
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


async def keep_images(
    result: GenerationResult, folder: Path, client: DreamboothClient
) -> tuple[Path, ...]:
    """The images of ``result``, downloaded into the content-addressed ``folder`` (best effort:
    a failure leaves the links as the only copy, and says so)."""
    staging = folder / f".staging-{uuid.uuid4().hex[:12]}"
    try:
        paths = await download_result(result, staging, client=client)
        kept: list[Path] = []
        for path in paths:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            target = folder / f"{digest}{path.suffix.lower()}"
            os.replace(path, target)
            kept.append(target)
        return tuple(kept)
    except Exception as error:
        logger.warning(
            "cache: the images of job %s were not stored (%s); a later hit has only links",
            result.id,
            client.redact(str(error)),
        )
        return ()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
