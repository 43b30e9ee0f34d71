"""The parts of the blocking facade (:mod:`dreambooth_async.sync`) other than the client: the
loop thread and blocking calls into it, and the blocking :class:`Job` and :class:`BatchRun`."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, TypeVarTuple

import attrs
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._errors import ClientClosedError
from ._models import GenerationRequest, GenerationResult
from ._poller import Job as AsyncJob

if TYPE_CHECKING:
    from ._batch import BatchItem
    from ._batch import BatchRun as AsyncBatchRun

__all__ = ["BatchRun", "Job", "Loop", "detach", "detach_item", "on_loop"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


# --- the loop thread ------------------------------------------------------------------------


class Loop:
    """One event loop in a thread of its own, and blocking calls into it."""

    def __init__(self) -> None:
        self._manager: AbstractContextManager[BlockingPortal] = start_blocking_portal(
            "asyncio", name="dreambooth-sync"
        )
        self._portal: BlockingPortal | None = self._manager.__enter__()
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._portal is not None

    def call(self, func: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """Run the coroutine function ``func(*args)`` in the loop thread and wait for its
        outcome.

        Coroutine functions only: the portal would await a plain function's return value if it
        were awaitable, and a Job is.
        """
        portal = self._portal
        if portal is None:
            raise ClientClosedError("this client was closed; create a new DreamboothClient")
        try:
            future: Future[T] = portal.start_task_soon(func, *args)
        except RuntimeError:
            if self._portal is None:  # closed by another thread in the meantime
                raise ClientClosedError("this client was closed") from None
            raise  # called from the loop thread itself (from a callback): not allowed
        try:
            return future.result()
        except BaseException:
            # Interrupted while waiting (KeyboardInterrupt, say): cancel the work in the loop
            # thread rather than leave it running unobserved. A no-op once the future is done.
            future.cancel()
            raise

    def enter(self, manager: AbstractAsyncContextManager[T]) -> AbstractContextManager[T]:
        """Enter the async context manager ``manager`` in the loop thread; the returned
        context manager leaves it there, in the same task."""
        portal = self._portal
        if portal is None:
            raise ClientClosedError("this client was closed; create a new DreamboothClient")
        entered = portal.wrap_async_context_manager(manager)
        entered.__enter__()
        return entered

    def call_soon(self, func: Callable[[], Awaitable[object]]) -> None:
        """Start ``func()`` in the loop thread without waiting (for finalizers)."""
        portal = self._portal
        if portal is not None:
            portal.start_task_soon(func)

    def close(self) -> None:
        """Stop the loop and join its thread."""
        with self._lock:
            portal, self._portal = self._portal, None
            if portal is not None:
                self._manager.__exit__(None, None, None)


def detach(result: GenerationResult) -> GenerationResult:
    # A result keeps a handle on its client's session so that save() can reuse it; that session
    # lives on the loop thread, and awaiting it from another loop would fail. A detached result's
    # save() opens a session of its own on whatever loop awaits it.
    return attrs.evolve(result, session=None)


def detach_item(item: BatchItem) -> BatchItem:
    if item.result is None:
        return item
    return attrs.evolve(item, result=detach(item.result))


# --- jobs -----------------------------------------------------------------------------------


class Job:
    """A submitted generation (the blocking side of :class:`dreambooth_async.Job`).

    ``wait()`` blocks until the result is in; ``id``, ``eta`` and ``status`` read the job's
    current state without waiting.
    """

    def __init__(self, job: AsyncJob, loop: Loop) -> None:
        self._job = job
        self._loop = loop

    def __repr__(self) -> str:
        return f"<sync Job id={self.id!r} status={self.status!r} eta={self.eta!r}>"

    # Reading the state below from this thread is safe: each is one attribute read, and the
    # job's outcome never changes once set.

    @property
    def id(self) -> str:
        """The service's job id (a string)."""
        return self._job.id

    @property
    def request(self) -> GenerationRequest | None:
        """The request that created the job (None when attached by id)."""
        return self._job.request

    @property
    def eta(self) -> float | None:
        """Seconds the service last estimated the job still needs (None when unknown)."""
        return self._job.eta

    @property
    def status(self) -> str:
        """``"processing"``, ``"success"``, ``"failed"`` (any error), or ``"cancelled"``."""
        return self._job.status

    @property
    def fetches(self) -> int:
        """How many fetch calls this job has cost so far."""
        return self._job.fetches

    @property
    def async_job(self) -> AsyncJob:
        """The underlying :class:`dreambooth_async.Job` (it lives on the client's loop thread)."""
        return self._job

    def done(self) -> bool:
        """True once the job has a result or an error."""
        return self._job.done()

    def wait(self, timeout: float | None = None) -> GenerationResult:
        """Block until the result is in and return it (or raise the job's error).

        ``timeout`` bounds this wait only: on expiry it raises :class:`~dreambooth_async.JobTimeout`
        and the job goes on (wait again, or ``client.wait_for(job.id)``).
        """
        if self._job.done():
            # Also works after the client closed: the outcome is already here.
            return detach(self._job.result())
        return detach(self._loop.call(self._job.wait, timeout))

    def result(self, timeout: float | None = None) -> GenerationResult:
        """The result, waiting for it like :meth:`concurrent.futures.Future.result` does.

        Unlike the async :meth:`dreambooth_async.Job.result`, which raises while the job is
        pending, this blocks (up to ``timeout`` seconds): a blocking caller has nothing else to
        do in the meantime.
        """
        return self.wait(timeout)


# --- batches --------------------------------------------------------------------------------


async def _next_item(run: AsyncBatchRun) -> BatchItem | None:
    # None instead of StopAsyncIteration: a StopIteration-like exception is better not sent
    # through a future into another thread.
    try:
        return await run.__anext__()
    except StopAsyncIteration:
        return None


class BatchRun(Iterator["BatchItem"]):
    """What the blocking ``client.map()`` returns: an iterator of
    :class:`~dreambooth_async.BatchItem` in completion order, and a context manager that
    guarantees cleanup.

    ::

        with client.map(requests) as items:
            for item in items:
                ...

    Leaving the block (or :meth:`close`) cancels what is still running and waits until it has
    stopped. A bare ``for`` works too; an abandoned run is cancelled when it is collected, and
    when its client closes.
    """

    def __init__(self, run: AsyncBatchRun, loop: Loop) -> None:
        self._run = run
        self._loop = loop
        self._finished = False

    def __repr__(self) -> str:
        state = "finished" if self._finished else "open"
        return f"<sync BatchRun {state} concurrency={self.concurrency}>"

    @property
    def concurrency(self) -> int:
        """The current slot limit (it moves while an adaptive batch learns the account's)."""
        return self._run.concurrency

    @property
    def stats(self) -> dict[str, int]:
        """The batch's counters (see :attr:`dreambooth_async.BatchRun.stats`)."""
        return self._run.stats

    @property
    def spend(self) -> dict[str, Any] | None:
        """What the run spent (see :attr:`dreambooth_async.BatchRun.spend`)."""
        return self._run.spend

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> BatchItem:
        if self._finished:
            raise StopIteration
        try:
            item = self._loop.call(_next_item, self._run)
        except (ClientClosedError, KeyboardInterrupt):
            raise
        except BaseException:
            # The batch ended with an error (fail_fast): it has stopped; report it once.
            self._finished = True
            raise
        if item is None:
            self._finished = True
            raise StopIteration
        return detach_item(item)

    def close(self) -> None:
        """Cancel whatever is still running and wait until it has stopped."""
        if self._finished:
            return
        self._finished = True
        if self._loop.running:
            self._loop.call(self._run.aclose)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # An abandoned run (a `for` left early): cancel it on its own loop, never from here.
        if not getattr(self, "_finished", True):
            self._finished = True
            # RuntimeError: the loop is gone (and the run with it), or this is the loop
            # thread, where the async run's own finalizer does the cancelling.
            with contextlib.suppress(Exception):
                self._loop.call_soon(self._run.aclose)


# Calls into the loop thread: the portal passes positional arguments only, so keyword
# arguments travel in a functools.partial.


async def on_loop(func: Callable[[], T]) -> T:
    """Run a plain function in the loop thread (what it touches belongs to that loop)."""
    return func()
