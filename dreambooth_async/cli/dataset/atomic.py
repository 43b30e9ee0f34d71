"""Writing a whole file so that no reader ever sees it half-written: the one way the command
line's files (the gallery page, the run report, the options record, restored state) are
written."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) at ``path``: into a temporary file of a name no other
    writer uses, flushed to disk, then moved into place in one step (the folder is created if
    missing). On any failure the old file is left as it was and nothing else remains."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
