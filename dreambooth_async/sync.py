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

import os
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, TypeVarTuple

from . import _client
from ._blocking import BatchRun, Job, Loop, detach, detach_item, on_loop
from ._download import DEFAULT_MAX_BYTES
from ._models import (
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
from ._telemetry import TelemetryOptions
from ._transport import RetryPolicy, Timeouts

if TYPE_CHECKING:
    from ._batch import BatchInput, BatchItem
    from ._progress import ProgressReporter
    from ._webhooks import WebhookReceiver

__all__ = ["BatchRun", "DreamboothClient", "Job"]

# They print as this module's, where users meet them.
Job.__module__ = BatchRun.__module__ = __name__

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


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
        telemetry: bool | TelemetryOptions = True,
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
            telemetry=telemetry,
        )
        self._runs: weakref.WeakSet[BatchRun] = weakref.WeakSet()
        self._loop = Loop()
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
        """``"v6"`` (default), ``"v7"``, or the legacy ``"v3"``/``"v4"``."""
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
        key_index: int | None = None,
        on_retry: Callable[[int, Exception, float], None] | None = None,
        wait_for_slot: bool = True,
    ) -> Job:
        """Send ``request``; return its :class:`Job` once the service accepted it.

        ``timeout`` bounds the call (default: the poll policy's ``job_timeout``): the wait for
        a queue slot in the client's window, and the job; ``retry`` overrides the retry policy
        for this call; ``key_index`` picks the key (0-based); ``on_retry`` hears of this
        submission's retries (it runs in the loop thread); ``wait_for_slot=False`` sends at
        once, outside the window (see the async client's ``submit``).
        """
        call = partial(
            self._client.submit,
            request,
            timeout=timeout,
            retry=retry,
            key_index=key_index,
            on_retry=on_retry,
            wait_for_slot=wait_for_slot,
        )
        return Job(self._loop.call(call), self._loop)

    def generate(
        self, request: GenerationRequest, *, timeout: float | None = None
    ) -> GenerationResult:
        """Submit ``request`` and block through "processing" until its result is in.

        ``timeout`` bounds the wait; on expiry :class:`~dreambooth_async.JobTimeout` carries
        the job id.
        """
        return detach(self._loop.call(partial(self._client.generate, request, timeout=timeout)))

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
        target = job.async_job if isinstance(job, Job) else job
        answer = self._loop.call(
            partial(self._client.fetch, target, fetch_url=fetch_url, key_index=key_index)
        )
        return detach(answer) if isinstance(answer, GenerationResult) else answer

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
        return detach(self._loop.call(call))

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
        return Job(self._loop.call(on_loop, call), self._loop)

    # --- other endpoints ----------------------------------------------------------------------

    def request_count(self, *, key_index: int = 0, retry: RetryPolicy | None = None) -> int:
        """How many of the account's requests the service is processing now."""
        return self._loop.call(
            partial(self._client.request_count, key_index=key_index, retry=retry)
        )

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
            on_loop, partial(self._client.map, requests, concurrency, progress=progress, **options)
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
        return [detach_item(item) for item in items]


def _shutdown(
    loop: Loop,
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
