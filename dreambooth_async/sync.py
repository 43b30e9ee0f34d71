"""A blocking facade over the asyncio client, for scripts and notebooks that are not async.

::

    from dreambooth_async.sync import DreamboothClient
    import dreambooth_async as dba

    with DreamboothClient(api_key=...) as client:
        result = client.generate(dba.Text2Img(model_id="midjourney", prompt="a cat"))
        paths = client.download(result, "out/")
        for item in client.map(requests):
            ...

Each client runs one event loop in its own thread (anyio's blocking portal, asyncio backend)
and owns one :class:`dreambooth_async.DreamboothClient` living on that loop. Every method sends
its work to that thread and blocks until it is done, so the client works the same in a plain
script and inside a running Jupyter kernel, where the main thread already runs an event loop
(which the client never touches).

Interrupting a call (Ctrl-C, a cancelled cell) cancels the work it was waiting for in the
loop thread; the client stays usable.

Results returned by this client are detached from the loop thread: ``await result.save(dir)``
works from any event loop (with a session of its own), and :meth:`DreamboothClient.download`
is the blocking way to save them.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, TypeVarTuple

import attrs
from anyio.from_thread import BlockingPortal, start_blocking_portal

from . import _client
from ._errors import ClientClosedError
from ._models import (
    DEFAULT_MAX_BYTES,
    ApiVersion,
    GenerationRequest,
    GenerationResult,
    Img2Img,
    Inpaint,
    ModelInfo,
    Processing,
    SystemLoad,
    Text2Img,
    WalletBalance,
)
from ._poller import Job as AsyncJob
from ._poller import PollPolicy
from ._transport import RetryPolicy, Timeouts

if TYPE_CHECKING:
    from ._batch import BatchInput, BatchItem
    from ._batch import BatchRun as AsyncBatchRun
    from ._progress import ProgressReporter
    from ._webhooks import WebhookReceiver

__all__ = ["BatchRun", "DreamboothClient", "Job"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


# --- the loop thread ------------------------------------------------------------------------


class _Loop:
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


def _detach(result: GenerationResult) -> GenerationResult:
    # A result remembers its client so that save() can reuse the session; that session lives
    # on the loop thread, and awaiting it from another loop would fail. A detached result's
    # save() opens a session of its own on whatever loop awaits it.
    return attrs.evolve(result, client=None)


def _detach_item(item: BatchItem) -> BatchItem:
    if item.result is None:
        return item
    return attrs.evolve(item, result=_detach(item.result))


# --- jobs -----------------------------------------------------------------------------------


class Job:
    """A submitted generation (the blocking side of :class:`dreambooth_async.Job`).

    ``wait()`` blocks until the result is in; ``id``, ``eta`` and ``status`` read the job's
    current state without waiting.
    """

    def __init__(self, job: AsyncJob, loop: _Loop) -> None:
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
    def asynchronous(self) -> AsyncJob:
        """The :class:`dreambooth_async.Job` this one blocks on (it lives in the loop thread)."""
        return self._job

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
            return _detach(self._job.result())
        return _detach(self._loop.call(self._job.wait, timeout))

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

    def __init__(self, run: AsyncBatchRun, loop: _Loop) -> None:
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
        return _detach_item(item)

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


# --- the client -----------------------------------------------------------------------------


class DreamboothClient:
    """A blocking client for the Dreambooth API: the same methods as the asyncio
    :class:`dreambooth_async.DreamboothClient`, without ``await``.

    Use it as ``with DreamboothClient(...) as client:``, or call :meth:`close` when done. The
    parameters are those of the asyncio client. The constructor validates them (raising
    :class:`~dreambooth_async.RequestValidationError` before anything starts), then starts the
    loop thread and opens the session.

    Callbacks given to the client (``on_retry``, a batch's ``on_event``) run in the loop
    thread: keep them quick, and do not call this client from inside them.
    """

    def __init__(
        self,
        api_key: str | Sequence[str] | None = None,
        *,
        base_url: str | None = None,
        api_version: ApiVersion = _client.DEFAULT_API_VERSION,
        timeout: float | Timeouts = 60.0,
        max_retries: int = 4,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        max_concurrency: int = 64,
        webhooks: WebhookReceiver | None = None,
        trust_env: bool = True,
        headers: Mapping[str, str] | None = None,
        cache: str | os.PathLike[str] | None = None,
    ) -> None:
        # Built here, in the caller's thread, so that a bad argument raises before a thread
        # starts; it binds to no event loop until it is entered in the loop thread. (No
        # http_session: an aiohttp session belongs to the loop that made it.)
        self._client = _client.DreamboothClient(
            api_key,
            base_url=base_url,
            api_version=api_version,
            timeout=timeout,
            max_retries=max_retries,
            retry=retry,
            poll=poll,
            max_concurrency=max_concurrency,
            webhooks=webhooks,
            trust_env=trust_env,
            headers=headers,
            cache=cache,
        )
        self._runs: weakref.WeakSet[BatchRun] = weakref.WeakSet()
        self._loop = _Loop()
        try:
            # Entered and left in one task of the loop thread, as `async with` does: the
            # client's task group (its poller, its batches) belongs to that task.
            self._entered = self._loop.enter(self._client)
        except BaseException:
            self._loop.close()
            raise
        # A client nobody closed is closed when it is collected, or at interpreter exit: atexit
        # runs while the (daemon) loop thread is still alive, whereas later, during
        # finalization, the portal's own cleanup would wait forever for a thread already gone.
        self._finalizer = weakref.finalize(self, _shutdown, self._loop, self._entered, self._runs)

    def __repr__(self) -> str:
        # Deliberately without the key.
        state = "open" if self._loop.running else "closed"
        return (
            f"<sync DreamboothClient base_url={self.base_url!r} "
            f"api_version={self.api_version!r} state={state!r}>"
        )

    # --- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Cancel open batches, close the session (pending jobs get
        :class:`~dreambooth_async.ClientClosedError`) and stop the loop thread. Idempotent."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return not self._loop.running

    @property
    def base_url(self) -> str:
        """The service root the client talks to."""
        return self._client.base_url

    @property
    def api_version(self) -> ApiVersion:
        """``"v3"``, ``"v4"`` or ``"v6"``."""
        return self._client.api_version

    @property
    def max_concurrency(self) -> int:
        """The most requests in flight, and the ceiling of the batch scheduler."""
        return self._client.max_concurrency

    @property
    def async_client(self) -> _client.DreamboothClient:
        """The asyncio client underneath. It lives on this client's loop thread: use it only
        from there (from an ``on_event`` callback, say), never from another event loop."""
        return self._client

    def on_retry(self, callback: Callable[[int, Exception, float], None]) -> None:
        """Call ``callback(attempt, error, delay)`` before every retry of any call (in the
        loop thread)."""
        self._client.on_retry(callback)

    # --- generation ---------------------------------------------------------------------------

    def submit(
        self,
        request: GenerationRequest,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Job:
        """Send ``request``; return its :class:`Job` once the service accepted it.

        ``timeout`` bounds the job (default: the poll policy's ``job_timeout``); ``retry``
        overrides the retry policy for this call.
        """
        job = self._loop.call(partial(self._client.submit, request, timeout=timeout, retry=retry))
        return Job(job, self._loop)

    def generate(
        self, request: GenerationRequest, *, timeout: float | None = None
    ) -> GenerationResult:
        """Submit ``request`` and block through "processing" until its result is in.

        ``timeout`` bounds the wait; on expiry :class:`~dreambooth_async.JobTimeout` carries
        the job id.
        """
        return _detach(self._loop.call(partial(self._client.generate, request, timeout=timeout)))

    def text2img(self, **fields: Any) -> GenerationResult:
        """``generate(Text2Img(**fields))``."""
        return self.generate(Text2Img(**fields))

    def img2img(self, **fields: Any) -> GenerationResult:
        """``generate(Img2Img(**fields))``."""
        return self.generate(Img2Img(**fields))

    def inpaint(self, **fields: Any) -> GenerationResult:
        """``generate(Inpaint(**fields))``."""
        return self.generate(Inpaint(**fields))

    # --- fetching -----------------------------------------------------------------------------

    def fetch(
        self,
        job: str | int | Job | AsyncJob,
        *,
        fetch_url: str | None = None,
        key_index: int | None = None,
    ) -> GenerationResult | Processing:
        """One fetch call for a queued job, no waiting: its result, or its processing status."""
        target = job.asynchronous if isinstance(job, Job) else job
        answer = self._loop.call(
            partial(self._client.fetch, target, fetch_url=fetch_url, key_index=key_index)
        )
        return _detach(answer) if isinstance(answer, GenerationResult) else answer

    def wait_for(
        self,
        job_id: str | int,
        *,
        timeout: float | None = None,
        fetch_url: str | None = None,
        key_index: int | None = None,
    ) -> GenerationResult:
        """Attach to a job submitted earlier (by this or another process) and wait for it."""
        call = partial(
            self._client.wait_for,
            job_id,
            timeout=timeout,
            fetch_url=fetch_url,
            key_index=key_index,
        )
        return _detach(self._loop.call(call))

    def attach(
        self,
        job_id: str | int,
        *,
        timeout: float | None = None,
        fetch_url: str | None = None,
        key_index: int | None = None,
    ) -> Job:
        """A :class:`Job` handle for a job submitted earlier; polling starts at once."""
        call = partial(
            self._client.attach, job_id, timeout=timeout, fetch_url=fetch_url, key_index=key_index
        )
        # Synchronous, but on the loop thread: the job's future belongs to that loop.
        return Job(self._loop.call(_on_loop, call), self._loop)

    # --- other endpoints ----------------------------------------------------------------------

    def request_count(self, *, key_index: int = 0) -> int:
        """How many of the account's requests the service is processing now."""
        return self._loop.call(partial(self._client.request_count, key_index=key_index))

    def wallet_balance(
        self, *, key_index: int = 0, retry: RetryPolicy | None = None
    ) -> WalletBalance:
        """The account's balance (``/api/wallet_balance``)."""
        return self._loop.call(
            partial(self._client.wallet_balance, key_index=key_index, retry=retry)
        )

    def redact(self, text: str) -> str:
        """``text`` with every API key of this client masked."""
        return self._client.redact(text)

    def system_load(self) -> SystemLoad:
        """The service's queue length and wait (``/api/v3/system_load``)."""
        return self._loop.call(self._client.system_load)

    def model_list(self) -> list[ModelInfo]:
        """The models the account can use (``/api/v4/dreambooth/model_list``)."""
        return self._loop.call(self._client.model_list)

    def model_reload(self, model_id: str) -> Mapping[str, Any]:
        """Ask the service to load ``model_id`` again (it takes about two minutes)."""
        return self._loop.call(self._client.model_reload, model_id)

    # --- downloads and batches ----------------------------------------------------------------

    def download(
        self,
        result: GenerationResult,
        directory: str | os.PathLike[str],
        *,
        not_found_grace: float = 30.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> list[Path]:
        """Download every output image of ``result`` into ``directory``; return the paths.

        The blocking counterpart of ``await result.save(directory)``; the options are those of
        :meth:`dreambooth_async.DreamboothClient.download`.
        """
        call = partial(
            self._client.download,
            result,
            directory,
            not_found_grace=not_found_grace,
            max_bytes=max_bytes,
        )
        return self._loop.call(call)

    def map(
        self,
        requests: Iterable[BatchInput],
        concurrency: int | None = None,
        *,
        progress: bool | ProgressReporter = False,
        **options: Any,
    ) -> BatchRun:
        """Run many requests; iterate the returned :class:`BatchRun` for a
        :class:`~dreambooth_async.BatchItem` per request as each completes.

        The options are those of :meth:`dreambooth_async.DreamboothClient.map`, ``progress``
        included (a progress bar that suits notebooks). ``requests`` is read lazily in the
        loop thread: it must not call this client.
        """
        run = self._loop.call(
            _on_loop, partial(self._client.map, requests, concurrency, progress=progress, **options)
        )
        sync_run = BatchRun(run, self._loop)
        self._runs.add(sync_run)
        return sync_run

    def gather(
        self,
        requests: Iterable[BatchInput],
        concurrency: int | None = None,
        **options: Any,
    ) -> list[BatchItem]:
        """Run many requests and return their :class:`~dreambooth_async.BatchItem` in input
        order."""
        items = self._loop.call(partial(self._client.gather, requests, concurrency, **options))
        return [_detach_item(item) for item in items]


def _shutdown(
    loop: _Loop,
    entered: AbstractContextManager[_client.DreamboothClient],
    runs: weakref.WeakSet[BatchRun],
) -> None:
    """Close the client's open batches and session, then stop its loop thread."""
    if not loop.running:
        return
    try:
        for run in list(runs):
            run.close()
        entered.__exit__(None, None, None)
    finally:
        loop.close()


# Calls into the loop thread: the portal passes positional arguments only, so keyword
# arguments travel in a functools.partial.


async def _on_loop(func: Callable[[], T]) -> T:
    """Run a plain function in the loop thread (what it touches belongs to that loop)."""
    return func()
