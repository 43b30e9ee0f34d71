"""The consumer side of a batch: what ``client.map()`` returns (:class:`BatchRun`) and the
function that builds it (:func:`map_requests`).

:class:`BatchRun` is both an async iterator and an async context manager (structured
concurrency without yielding from inside a task group). On first use it starts one background
task running the :class:`~.engine.Engine`, which owns an anyio task group; finished items come
through a memory object stream. Leaving ``async with`` (or ``aclose()``, or the iterator being
dropped after a ``break``) cancels the engine and waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from functools import partial
from types import TracebackType
from typing import Any, Self, Unpack

import anyio

from .._download import SessionSource
from .._sending import SpawnFn
from .._telemetry import NO_TELEMETRY, Telemetry
from .engine import Engine
from .host import BatchHost
from .items import BatchInput, BatchItem
from .options import MapOptions, batch_options

__all__ = ["BatchRun", "map_requests"]

# --- task ownership ---------------------------------------------------------------------------

# The engine's task is started by the client's SpawnFn: it belongs to the client, so nothing
# outlives ``async with DreamboothClient``.
# The engine tasks running now (for tests and diagnostics; the client's task group owns them).
_LIVE_TASKS: set[asyncio.Task[Any]] = set()


class BatchRun(AsyncIterator[BatchItem]):
    """What ``client.map()`` returns: an async iterator of :class:`BatchItem` as they complete,
    and an async context manager that guarantees cleanup.

    ::

        async with client.map(requests) as items:
            async for item in items:
                ...

    Leaving the block (or calling :meth:`aclose`) cancels whatever is still running and waits
    until it has stopped. A bare ``async for`` works too; when the loop is left early, the run
    is cancelled as soon as the iterator is dropped, and finishes stopping in the background.
    The batch starts on first use, not when this object is created.
    """

    def __init__(self, engine: Engine, spawn: SpawnFn) -> None:
        self._engine = engine
        self._spawn = spawn
        self._receive = engine.receive
        # Set once the engine's task has ended (created on start, inside the event loop).
        self._ended: anyio.Event | None = None
        self._finished = False

    def __repr__(self) -> str:
        state = "finished" if self._finished else ("running" if self._ended else "not started")
        return f"<BatchRun {state} concurrency={self._engine.slots.limit}>"

    # --- introspection ------------------------------------------------------------------------

    @property
    def concurrency(self) -> int:
        """The current slot limit (it moves while an adaptive batch learns the account's);
        with several keys, the sum over the live keys."""
        return self._engine.slots.limit

    @property
    def stats(self) -> dict[str, int]:
        """Counters: items, submissions (sent to the service), accepted, images (samples of
        the accepted jobs), rejected_queue_full, rejected_other, retried (calls the transport
        tried again), done, failed, ambiguous, recovered (named by a webhook after a lost
        answer), skipped, attached, cache_hits (answered by the client's result cache, not
        sent), unsent (left pending by a budget or a stop), and peak_concurrency /
        concurrency."""
        return {
            **self._engine.counts,
            "concurrency": self._engine.slots.limit,
            "peak_concurrency": self._engine.slots.peak,
        }

    @property
    def budget_reached(self) -> bool:
        """True when ``max_images`` or ``max_spend`` kept items from being sent: they stay
        pending (in the manifest, if any) for a run with a larger budget."""
        return self._engine.budget_reached

    @property
    def key_stats(self) -> list[dict[str, Any]]:
        """The same counters per API key, in the order of the client's keys (never the keys
        themselves): ``key`` (``"#1"``...), ``key_index`` (0-based), submissions, accepted,
        images, rejected_queue_full, rejected_other, retried, attached, done, failed,
        ambiguous, ``retired`` (the error's type name, or None), ``concurrency`` (its
        window's limit) and ``peak_in_flight`` (the most slots it held at once)."""
        engine = self._engine
        return [
            {
                "key": f"#{index + 1}",
                "key_index": index,
                **counts,
                "retired": engine.ring.retired.get(index),
                "concurrency": engine.slots.windows[index].limit,
                "peak_in_flight": engine.slots.peak_held[index],
            }
            for index, counts in enumerate(engine.key_counts)
        ]

    @property
    def spend(self) -> dict[str, Any] | None:
        """What this run spent, when it counts it (``max_spend``, ``price_per_image`` or
        ``track_spend``), else None: ``spent`` (its own accepted ``images`` times
        ``price_per_image``; None while the price is not known), ``price_source``
        (``"given"`` or ``"measured"``) and ``brackets`` (how many measurements were taken).
        Not the wallet's drop: other clients on the same account do not count."""
        guard = self._engine.spend
        return None if guard is None else guard.summary()

    # --- lifecycle ----------------------------------------------------------------------------

    def _start(self) -> None:
        if self._ended is None and not self._finished:
            self._ended = anyio.Event()
            # Not a bound method: the task must not keep this object alive, or a run dropped
            # after a `break` would never be collected, and so never cancelled.
            self._spawn(partial(_run_engine, self._engine, self._ended), "dreambooth-batch")

    async def _wait_ended(self) -> None:
        assert self._ended is not None
        with anyio.CancelScope(shield=True):
            await self._ended.wait()

    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel what is still running and wait until it has stopped."""
        self._engine.cancel()
        self._receive.close()
        if self._ended is None:
            self._engine.send.close()
        else:
            await self._wait_ended()
        self._finished = True

    def __del__(self) -> None:
        # Reached when a bare `async for` was left early and nothing else holds the run.
        if not self._finished:
            self._engine.cancel()
            self._receive.close()
            if self._ended is None:
                self._engine.send.close()

    # --- iteration ----------------------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> BatchItem:
        if self._finished:
            raise StopAsyncIteration
        self._start()
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            pass
        # The engine closed the stream: it is ending; wait for it, then report how it ended.
        await self._wait_ended()
        self._finished = True
        self._receive.close()
        error = self._engine.error
        if error is not None:
            raise error
        raise StopAsyncIteration


async def _run_engine(engine: Engine, ended: anyio.Event) -> None:
    # The engine keeps its own errors (raised from the iterator), so none reaches the
    # client's task group.
    task = asyncio.current_task()
    if task is not None:
        _LIVE_TASKS.add(task)
    try:
        await engine.run()
    finally:
        _LIVE_TASKS.discard(task)
        ended.set()


def map_requests(
    client: BatchHost,
    requests: Iterable[BatchInput] | AsyncIterable[BatchInput],
    concurrency: int | None = None,
    *,
    spawn: SpawnFn,
    telemetry: Telemetry = NO_TELEMETRY,
    sessions: SessionSource | None = None,
    **options: Unpack[MapOptions],
) -> BatchRun:
    """Run many generation requests under the account's queue-slot limit.

    Returns a :class:`BatchRun`: iterate it for :class:`BatchItem` s as they complete (use it
    as ``async with`` for guaranteed cleanup). The input is any iterable or async iterable of
    requests, or of ``(key, request)`` pairs, and is read lazily, at most a few items ahead of
    the slots.

    The keyword options (``fail_fast``, ``manifest``, ``download_to``, ``max_images``, ...) are
    those of :class:`MapOptions`, where each is described.

    :param spawn: starts the engine in the client's task group (``client.map`` passes it).
    :param telemetry: where each item's trace goes (``client.map`` passes the client's).
    :param sessions: the client's session handle, kept by results an earlier run finished
        (``client.map`` passes it).
    :param concurrency: a fixed number of slots; ``None`` (the default) finds the account's
        limit (see :class:`SlotWindow`), starting at ``initial_concurrency``.
    """
    options_ = batch_options(client, concurrency, options)
    return BatchRun(Engine(client, requests, options_, telemetry, sessions=sessions), spawn)
