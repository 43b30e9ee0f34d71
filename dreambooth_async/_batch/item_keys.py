"""Stable names for batch items: the key of a request, and a file-name stem for a key.

They live in :mod:`.._request_keys`, below the batch, so that the dry-run planner reads them
without importing the batch."""

from __future__ import annotations

from .._request_keys import KEY_DIGEST_SIZE, file_stem, request_digest, request_key

__all__ = ["KEY_DIGEST_SIZE", "file_stem", "request_digest", "request_key"]
