"""Stable names for batch items: the key of a request, and a file-name stem for a key."""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import attrs

from .._models import GenerationRequest

__all__ = ["file_stem", "request_key"]


def _canonical_value(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, os.PathLike):
        return {"path": os.fspath(value)}
    if isinstance(value, dict):
        return {str(k): _canonical_value(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_canonical_value(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def request_key(request: GenerationRequest) -> str:
    """A stable key for ``request``: a hash of its kind and every field.

    Independent of the API version, of the request's position in a batch and of the process,
    so the same request gets the same key in a rerun. Images given as bytes count by content,
    as paths by path.
    """
    fields = attrs.asdict(request, recurse=False)
    canonical = {"kind": request.kind, **{k: _canonical_value(v) for k, v in fields.items()}}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=10).hexdigest()


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def file_stem(key: str) -> str:
    """A file-name stem for ``key``; keys that needed cleaning get a hash so they stay unique."""
    stem = _UNSAFE.sub("_", key).strip("._")[:80]
    if stem != key or not stem:
        stem = f"{stem[:60]}_{hashlib.blake2b(key.encode(), digest_size=5).hexdigest()}"
    return stem
