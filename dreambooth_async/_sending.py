"""How one submission is sent (:class:`Sending`), and the two callables the client hands the
floors below it instead of itself: its submit path (:class:`SendFn`, for the result cache) and
its task group (:data:`SpawnFn`, for the cache and the batch engine)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import attrs

from ._job import Job
from ._models import GenerationRequest, GenerationResult
from ._transport import RetryHook, RetryPolicy

__all__ = ["SendFn", "Sending", "SpawnFn"]


@attrs.frozen(kw_only=True)
class Sending:
    """How one submission is sent: the job's timeout, the retry policy, the key (None: the
    client chooses) and who hears of its retries."""

    timeout: float | None = None
    retry: RetryPolicy | None = None
    key_index: int | None = None
    on_retry: RetryHook | None = None
    #: Wait for a slot of the client's window first (False: the caller holds one already).
    in_turn: bool = True


class SendFn(Protocol):
    """The client's submit path without the cache: the result when the answer is final, else
    the tracked job. Implemented by ``DreamboothClient._send``."""

    def __call__(
        self, request: GenerationRequest, sending: Sending
    ) -> Awaitable[GenerationResult | Job]: ...


#: Start a coroutine function in the client's task group (``DreamboothClient._spawn``): what
#: it starts ends, at the latest, when the client closes.
SpawnFn = Callable[[Callable[[], Coroutine[Any, Any, None]], str], None]
