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
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio

from .._events import EventHook
from .._models import GenerationRequest
from .._telemetry import NO_TELEMETRY, Telemetry
from .engine import Engine
from .items import BatchInput, BatchItem
from .options import batch_options

if TYPE_CHECKING:
    from .._client import DreamboothClient

__all__ = ["BatchRun", "map_requests"]

# --- task ownership ---------------------------------------------------------------------------

#: Start a coroutine function in the client's task group (``DreamboothClient._spawn``): the
#: engine's task belongs to the client, so nothing outlives ``async with DreamboothClient``.
SpawnFn = Callable[[Callable[[], Coroutine[Any, Any, None]], str], None]

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
    client: DreamboothClient,
    requests: Iterable[BatchInput] | AsyncIterable[BatchInput],
    concurrency: int | None = None,
    *,
    spawn: SpawnFn,
    telemetry: Telemetry = NO_TELEMETRY,
    max_concurrency: int | None = None,
    initial_concurrency: int = 2,
    fail_fast: bool = False,
    rate_limit: float | None = None,
    manifest: str | os.PathLike[str] | None = None,
    keys: Callable[[int, GenerationRequest], str] | None = None,
    on_event: EventHook | Iterable[EventHook] | None = None,
    download_to: str | os.PathLike[str] | None = None,
    resubmit_ambiguous: bool = False,
    recover_ambiguous: float | None = None,
    retry_failed: bool = True,
    job_timeout: float | None = None,
    max_rate_limited: int = 20,
    buffer: int = 16,
    cancel_grace: float = 10.0,
    durable: bool = True,
    on_finish: Callable[[], None] | None = None,
    max_images: int | None = None,
    max_spend: float | None = None,
    price_per_image: float | None = None,
    track_spend: bool = False,
) -> BatchRun:
    """Run many generation requests under the account's queue-slot limit.

    Returns a :class:`BatchRun`: iterate it for :class:`BatchItem` s as they complete (use it
    as ``async with`` for guaranteed cleanup). The input is any iterable or async iterable of
    requests, or of ``(key, request)`` pairs, and is read lazily, at most a few items ahead of
    the slots.

    :param spawn: starts the engine in the client's task group (``client.map`` passes it).
    :param telemetry: where each item's trace goes (``client.map`` passes the client's).
    :param concurrency: a fixed number of slots; ``None`` (the default) finds the account's
        limit (see :class:`SlotWindow`), starting at ``initial_concurrency``.
    :param max_concurrency: the adaptive ceiling (default: ``client.max_concurrency``).
    :param fail_fast: on the first item that fails, cancel the rest and raise its error from
        the iterator. By default an item's error stays in its item and the batch goes on.
    :param rate_limit: at most this many submissions per second.
    :param manifest: a JSONL file recording every item's state; a rerun with the same manifest
        skips done items, attaches to accepted ones by id and submits only the rest.
    :param keys: ``keys(index, request) -> str`` gives each item's key (default: a hash of
        the request; repeats of an identical request are numbered ``<hash>.2``, ... when a
        manifest is used).
    :param on_event: a callable (or several) receiving a :class:`BatchEvent` per state change.
    :param download_to: download each result's images into this folder, named
        ``<key>-<n>.<ext>``, before the item counts as done.
    :param recover_ambiguous: with a client that has a :class:`WebhookReceiver`, how long to
        wait for the service's webhook call to name the job of a submission whose answer was
        lost (default: ten times the poll policy's ``max_interval``, 300 s; 0 turns it off).
        A named job is attached to and counts as submitted, so a paid-for image is not lost;
        otherwise the item ends ambiguous.
    :param resubmit_ambiguous: send again a submission that may have landed (risks paying
        twice). By default such items end as ambiguous (:class:`AmbiguousSubmission`).
    :param retry_failed: on resume, submit again items that failed in an earlier run (jobs that
        exist on the service, say after a timeout, are attached to instead).
    :param job_timeout: bound each job's wait (default: the client's poll policy).
    :param max_rate_limited: how many times an item turned away by a rate limit that is not
        "queue full" (spam filter, 429) is retried before it fails.
    :param buffer: finished items held for a slow consumer; extra task permits.
    :param cancel_grace: seconds a cancelled batch waits for submissions already sent.
    :param durable: fsync the manifest where it matters (turn off only for throwaway runs).
    :param on_finish: called once in the event loop when the batch has stopped, however it
        ended (``client.map(progress=True)`` closes its progress display with it).
    :param max_images: a budget: submit no more once this many images (``samples`` count)
        are paid for or in flight; with a manifest, images done in earlier runs count too.
        Items past it are not sent, end quietly (no error) and stay pending in the manifest
        (``run.stats["unsent"]`` counts them), so a rerun with a larger budget continues. A
        sized input (a list) is read to its end, so done items are still reported; a stream
        is read no further.
    :param max_spend: a budget in the wallet's currency for this run's own spending: its
        accepted images times the price of one image (``price_per_image``, or measured from
        the wallet, see ``run.spend``). No submission is sent that would take it past the
        budget; the rest stays pending, as with ``max_images``. Other clients paying from the
        same wallet (shards on one key) do not count. Without a given price, the wallets are
        read when the batch starts (it raises if none can be read); until the price is
        measured (on the first accepted submission) one submission goes at a time.
    :param price_per_image: the price of one image, when known (the service does not say
        it): the run's spend is then its accepted images times this, and no wallet is read
        for it.
    :param track_spend: count the run's spend (``run.spend``) without a budget, measuring the
        price per image from the wallet when it is not given. ``max_spend`` and
        ``price_per_image`` turn it on too.
    """
    options = batch_options(
        client,
        concurrency=concurrency,
        max_concurrency=max_concurrency,
        initial_concurrency=initial_concurrency,
        fail_fast=fail_fast,
        rate_limit=rate_limit,
        manifest=manifest,
        keys=keys,
        on_event=on_event,
        download_to=download_to,
        resubmit_ambiguous=resubmit_ambiguous,
        recover_ambiguous=recover_ambiguous,
        retry_failed=retry_failed,
        job_timeout=job_timeout,
        max_rate_limited=max_rate_limited,
        buffer=buffer,
        cancel_grace=cancel_grace,
        durable=durable,
        on_finish=on_finish,
        max_images=max_images,
        max_spend=max_spend,
        price_per_image=price_per_image,
        track_spend=track_spend,
    )
    return BatchRun(Engine(client, requests, options, telemetry), spawn)
