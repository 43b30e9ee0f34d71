"""What goes into a batch and what comes out: the input type, one item's outcome, and the error
of a submission that may or may not have landed."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeAlias

import attrs

from .._errors import AmbiguousSubmission
from .._models import GenerationRequest, GenerationResult

__all__ = ["AmbiguousSubmission", "BatchInput", "BatchItem", "ItemOutcome"]

#: One input of a batch: a request, or a ``(key, request)`` pair that names its key.
BatchInput: TypeAlias = GenerationRequest | tuple[str, GenerationRequest]

#: How a batch item ended.
ItemOutcome: TypeAlias = Literal["done", "failed", "ambiguous"]


@attrs.frozen(kw_only=True)
class BatchItem:
    """One request of a batch and how it ended: ``result`` when done, ``error`` otherwise.

    ``key`` is the item's stable key (derived from the request unless given). ``job_id`` is the
    service's id once it accepted the item. ``files`` are the images written when the batch
    downloads (``download_to=``). ``resumed`` is True for an item a manifest showed done in an
    earlier run: its ``result`` is rebuilt from the manifest (id, output URLs, seed).
    ``ambiguous`` is True when the submission may or may not have landed (see
    :class:`AmbiguousSubmission`).
    """

    index: int
    request: GenerationRequest
    result: GenerationResult | None = None
    error: BaseException | None = None
    key: str | None = None
    job_id: str | None = None
    files: tuple[Path, ...] = ()
    resumed: bool = False
    ambiguous: bool = False

    @property
    def status(self) -> ItemOutcome:
        """``"done"``, ``"failed"`` or ``"ambiguous"``."""
        if self.result is not None and self.error is None:
            return "done"
        return "ambiguous" if self.ambiguous else "failed"

    @property
    def ok(self) -> bool:
        """True when the item is done."""
        return self.status == "done"
