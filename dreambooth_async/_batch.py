"""Batch fan-out (placeholder: the scheduler lands with the batch issue)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import attrs

from ._models import GenerationRequest, GenerationResult

if TYPE_CHECKING:
    from ._client import DreamboothClient

__all__ = ["BatchItem", "map_requests"]


@attrs.frozen(kw_only=True)
class BatchItem:
    """One request of a batch and how it ended: ``result`` or ``error``, never both."""

    index: int
    request: GenerationRequest
    result: GenerationResult | None = None
    error: BaseException | None = None
    key: str | None = None


def map_requests(
    client: DreamboothClient,
    requests: Iterable[GenerationRequest] | AsyncIterable[GenerationRequest],
    *,
    concurrency: int | None = None,
    **options: Any,
) -> AsyncIterator[BatchItem]:
    raise NotImplementedError
