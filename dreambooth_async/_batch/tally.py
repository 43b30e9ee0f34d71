"""What a batch tells: its counters (for the run and per key) and the events its hooks get."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._events import BatchEvent, EventHook, EventKind, emit
from .plan import Entry
from .window import SlotPool

__all__ = ["KEY_COUNTS", "Tally"]

#: What the run counts for each key.
KEY_COUNTS = (
    "submissions",
    "accepted",
    "images",
    "rejected_queue_full",
    "rejected_other",
    "retried",
    "attached",
    "cache_hits",
    "done",
    "failed",
    "ambiguous",
)

#: What the run counts in all.
_RUN_COUNTS = (
    "items",
    "submissions",
    "accepted",
    "rejected_queue_full",
    "rejected_other",
    "done",
    "failed",
    "ambiguous",
    "recovered",
    "skipped",
    "attached",
    "unsent",
    "cache_hits",
    "retried",
    "images",
)


class Tally:
    """The counters of one batch and its event hooks."""

    def __init__(
        self,
        hooks: tuple[EventHook, ...],
        *,
        slots: SlotPool,
        key_count: int,
        redact: Callable[[str], str],
    ) -> None:
        self._hooks = hooks
        self._slots = slots
        self._redact = redact
        #: Counters for reports and benchmarks.
        self.counts: dict[str, int] = dict.fromkeys(_RUN_COUNTS, 0)
        #: The same per key (by position), for the run's accounting.
        self.key_counts: list[dict[str, int]] = [
            dict.fromkeys(KEY_COUNTS, 0) for _ in range(key_count)
        ]

    def count(self, name: str, entry: Entry, amount: int = 1) -> None:
        """Count ``name`` for the run and for the key ``entry`` holds, if any."""
        self.counts[name] += amount
        if entry.key_index is not None:
            self.key_counts[entry.key_index][name] += amount

    def retried(self, entry: Entry, attempt: int, error: Exception, delay: float) -> None:
        """One of ``entry``'s submissions is sent again (the transport's retry hook)."""
        self.count("retried", entry)
        self.emit("retried", entry, eta=delay, detail=f"attempt {attempt}: {error}")

    def emit(self, kind: EventKind, entry: Entry, **fields: Any) -> None:
        """Tell the hooks of a change in ``entry``'s state (with the window as it is now)."""
        if self._hooks:
            if fields.get("detail"):
                # Error texts come from the service, which may echo what it was sent.
                fields["detail"] = self._redact(fields["detail"])
            emit(
                self._hooks,
                BatchEvent(
                    kind=kind,
                    index=entry.index,
                    key=entry.key,
                    concurrency=self._slots.limit,
                    in_flight=self._slots.held,
                    **fields,
                ),
            )
