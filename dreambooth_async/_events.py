"""Progress events of a batch: what happened to which item, for progress bars, logs and metrics.

A batch (``client.map(..., on_event=callback)``) calls ``callback(event)`` synchronously, in the
event loop, every time an item changes state. Callbacks must be quick and must not block; an
exception from a callback is logged and otherwise ignored, so that a broken progress bar cannot
lose a paid job. Events never carry the API key: ``detail`` holds the library's own (redacted)
error messages only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeAlias

import attrs

from ._transport import logger

__all__ = ["EVENT_KINDS", "BatchEvent", "EventHook", "EventKind", "emit"]

#: ``submitted``: the service accepted the item (``job_id`` set).
#: ``queued``: the service said "processing"; ``eta`` is its estimate in seconds.
#: ``done``: the result is in (and its files on disk when the batch downloads).
#: ``failed``: the item ended with an error (``detail`` names it).
#: ``retried``: the transport retried a submission that provably did not land.
#: ``rate_limited``: the service turned a submission away (queue full, spam filter, 429);
#: the item waits ``eta`` seconds and is submitted again.
#: ``ambiguous``: the submission may or may not have been accepted; it is reported, not resent.
#: ``skipped``: a manifest from an earlier run says the item is already done.
#: ``attached``: a manifest says the item was accepted earlier; waiting for it by id.
EventKind: TypeAlias = Literal[
    "submitted",
    "queued",
    "done",
    "failed",
    "retried",
    "rate_limited",
    "ambiguous",
    "skipped",
    "attached",
]
EVENT_KINDS: tuple[EventKind, ...] = (
    "submitted",
    "queued",
    "done",
    "failed",
    "retried",
    "rate_limited",
    "ambiguous",
    "skipped",
    "attached",
)


@attrs.frozen(kw_only=True)
class BatchEvent:
    """One state change of one batch item.

    ``index`` is the item's position in the input, ``key`` its stable key (see
    :class:`~dreambooth_async.BatchItem`). ``eta`` is in seconds (a "queued" estimate, or the
    wait before a rate-limited item is tried again). ``concurrency`` is the batch's slot limit
    when the event happened (it moves when the batch adapts), ``in_flight`` how many slots were
    held. ``time`` is ``time.monotonic()``.
    """

    kind: EventKind
    index: int
    key: str | None = None
    job_id: str | None = None
    eta: float | None = None
    detail: str | None = None
    concurrency: int | None = None
    in_flight: int | None = None
    time: float = attrs.field(factory=time.monotonic)


#: A subscriber: called synchronously with every event.
EventHook: TypeAlias = Callable[[BatchEvent], None]


def emit(hooks: tuple[EventHook, ...], event: BatchEvent) -> None:
    """Call every hook with ``event``; a hook that raises is logged and skipped."""
    for hook in hooks:
        try:
            hook(event)
        except Exception:
            # A progress bar must never cost a job: log and carry on.
            logger.warning("event hook %r raised on %s; ignored", hook, event.kind, exc_info=True)
