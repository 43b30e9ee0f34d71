"""The cache's images: content-addressed copies (``<sha256>.<ext>``) that outlive the links."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from .._download import SessionSource, download_result
from .._models import GenerationResult
from .._transport import logger

__all__ = ["keep_images"]


async def keep_images(
    result: GenerationResult,
    folder: Path,
    *,
    sessions: SessionSource,
    redact: Callable[[str], str],
) -> tuple[Path, ...]:
    """The images of ``result``, downloaded into the content-addressed ``folder`` (best effort:
    a failure leaves the links as the only copy, and says so)."""
    staging = folder / f".staging-{uuid.uuid4().hex[:12]}"
    try:
        paths = await download_result(result, staging, sessions=sessions)
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
            redact(str(error)),
        )
        return ()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
