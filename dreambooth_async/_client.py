"""DreamboothClient: the session layer, one method per endpoint.

The top floor of the library: every module below sees the client only through the narrow
protocols it implements (the batch's ``BatchHost``, the cache's ``JobHost``, the spend guard's
``Wallets``) and through the session handle its results keep (``SessionSource``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.parse
from collections.abc import (
    AsyncIterable,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, Unpack

import aiohttp
import anyio

from ._batch import BatchInput, BatchItem, BatchRun, MapOptions, map_requests
from ._cache import CachedSubmissions, ResultCache
from ._download import DEFAULT_MAX_BYTES, copy_files, download_result
from ._endpoints import (
    is_loopback,
    same_origin,
    warn_if_plain_http,
)
from ._errors import (
    ClientClosedError,
    RequestValidationError,
    sole_error,
)
from ._generating import GenerateCalls
from ._keys import KeyRing
from ._models import (
    API_VERSIONS,
    ApiVersion,
    GenerationResult,
)
from ._otel import telemetry_for
from ._poller import Poller, PollPolicy
from ._progress import ProgressReporter, with_progress
from ._settings import (
    API_KEY_ENV,
    API_KEY_ENV_FALLBACK,
    BASE_URL_ENV,
    DEFAULT_API_VERSION,
    DEFAULT_BASE_URL,
    api_key_from_env,
    api_keys_from_env,
    base_url_from_env,
    checked_keys,
)
from ._share import AccountWatch
from ._slots import SlotPool, SlotWindow
from ._telemetry import Telemetry, TelemetryOptions
from ._transport import RetryPolicy, Timeouts, Transport
from ._urls import is_http_url
from ._webhooks import WebhookReceiver

if TYPE_CHECKING:
    from anyio.abc import TaskGroup, TaskStatus

# The settings names are re-exported: the CLI and older code import them from here.
__all__ = [
    "API_KEY_ENV",
    "API_KEY_ENV_FALLBACK",
    "BASE_URL_ENV",
    "DEFAULT_API_VERSION",
    "DEFAULT_BASE_URL",
    "DreamboothClient",
    "api_key_from_env",
    "api_keys_from_env",
]

#: Where each key's shared slot window starts before it has learned the account's limit. One:
#: the key's first answer goes alone anyway, and slow start then keeps one submission on the
#: wire past the window's jobs, so a key that other processes filled refuses one, not two.
_INITIAL_SLOTS = 1
#: The account watcher's reads are not retried: a lost read is only a signal lost.
_ONE_TRY = RetryPolicy(max_retries=0)

# Kept importable from here (older code and tests name it so).
_same_origin = same_origin


class _LiveSession:
    """The handle on the client's HTTP session that its results keep for ``save()`` (a
    :class:`~._download.SessionSource`): the session while the client is open, None before
    and after. It holds the session only, never the client."""

    __slots__ = ("session",)

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    def live_session(self) -> aiohttp.ClientSession | None:
        return self.session


class DreamboothClient(GenerateCalls):
    """An asyncio client for the Dreambooth API.

    Use it as ``async with DreamboothClient(...) as client:``; the block owns the HTTP session
    and the background poller, and nothing is left running after it.

    :param api_key: the account's key, or a sequence of keys (several accounts pool their
        queue slots: a batch gives each key its own window, submissions are spread across
        them, and a key refused with 401 or 402 is retired while the others carry on); None
        reads ``DREAMBOOTH_API_KEY``, then ``MODELSLAB_API_KEY`` (keys separated by commas).
        Never logged or shown: warnings and records name a key by position (``key #2``).
    :param base_url: the service (or an emulator) root; None reads ``DREAMBOOTH_BASE_URL``,
        else ``https://modelslab.com``.
    :param api_version: ``"v6"`` (default), ``"v7"``, or the legacy ``"v3"``/``"v4"`` of the
        2023 pages: which paths and wire names to use.
    :param timeout: seconds for one HTTP exchange, or a :class:`Timeouts`.
    :param max_retries: retries of a failed call (see :class:`RetryPolicy` for which are safe).
    :param retry: the whole retry policy (overrides ``max_retries``).
    :param poll: how pending jobs are polled (:class:`PollPolicy`).
    :param max_concurrency: the most requests in flight, and the ceiling of the batch scheduler.
    :param webhooks: a :class:`WebhookReceiver` that lets the service's webhook calls resolve
        jobs before the poller would (polling remains the fallback).
    :param trust_env: use the proxies the environment names (``HTTPS_PROXY``, ``HTTP_PROXY``,
        ``NO_PROXY``), as httpx does; a loopback ``base_url`` never goes through a proxy.
    :param headers: extra HTTP headers sent with every API call (the key stays in the body).
    :param http_session: an ``aiohttp.ClientSession`` of your own (your connector, proxy and
        TLS settings) to use instead of the client's; it is left open when the client closes.
        ``timeout``, ``trust_env`` and ``max_concurrency``'s connection limit are then yours.
    :param cache: a SQLite file (created if missing; several processes may share it) that
        keeps the result of every request with an explicit seed, and its images: the same
        seeded request is then never paid for twice, across runs and processes, and identical
        ones in flight at once share one submission (see :class:`ResultCache`).
    :param telemetry: OpenTelemetry spans and metrics, when ``opentelemetry-api`` is installed
        (the ``[otel]`` extra): ``True`` (the default) reports through the globally configured
        providers, which do nothing until an SDK is set up; ``False`` turns it off; a
        :class:`TelemetryOptions` chooses more (prompts on spans, other providers). The key
        is never reported, and prompts only when asked for.
    """

    def __init__(
        self,
        api_key: str | Sequence[str] | None = None,
        *,
        base_url: str | None = None,
        api_version: ApiVersion = DEFAULT_API_VERSION,
        timeout: float | Timeouts = 60.0,
        max_retries: int = 4,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        max_concurrency: int = 64,
        webhooks: WebhookReceiver | None = None,
        trust_env: bool = True,
        headers: Mapping[str, str] | None = None,
        http_session: aiohttp.ClientSession | None = None,
        cache: str | os.PathLike[str] | None = None,
        telemetry: bool | TelemetryOptions = True,
    ) -> None:
        keys = checked_keys(api_key)
        if api_version not in API_VERSIONS:
            raise RequestValidationError(
                "api_version", api_version, "one of " + ", ".join(map(repr, API_VERSIONS))
            )
        if base_url is None:
            base_url = base_url_from_env()
        if not is_http_url(base_url):
            raise RequestValidationError("base_url", base_url, "an absolute http(s) URL")
        if max_concurrency < 1:
            raise RequestValidationError("max_concurrency", max_concurrency, "at least 1")
        self.base_url = base_url.rstrip("/")
        self.api_version: ApiVersion = api_version
        self.max_concurrency = max_concurrency
        timeouts = timeout if isinstance(timeout, Timeouts) else Timeouts(request=float(timeout))
        self.poll_policy = poll or PollPolicy()
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        options = (
            telemetry
            if isinstance(telemetry, TelemetryOptions)
            else TelemetryOptions(enabled=bool(telemetry))
        )
        self._telemetry: Telemetry = telemetry_for(
            options, api_version=api_version, base_url=self.base_url
        )
        self._transport = Transport(
            keys[0] if len(keys) == 1 else keys,
            retry=retry or RetryPolicy(max_retries=max_retries),
            timeouts=timeouts,
            connection_limit=max_concurrency + self.poll_policy.fetch_concurrency,
            on_retry=self._on_retry,
            # No proxy can reach this machine's loopback on our behalf.
            trust_env=trust_env and not is_loopback(host),
            headers=headers,
            session=http_session,
            telemetry=self._telemetry,
        )
        self._poller = Poller(self._fetch_for_poller, self.poll_policy, self._telemetry)
        #: Which key each call uses, which are retired, which submitted each job.
        self._keys = KeyRing(len(keys))
        # One window per key, shared by every call and batch of this client (see slot_pool).
        self._slots = SlotPool(
            [
                SlotWindow(fixed=None, initial=_INITIAL_SLOTS, maximum=max_concurrency)
                for _ in range(len(keys))
            ],
            self._keys,
        )
        # A watcher per key reads the account's count once the key was found full (shared
        # with other processes, or just discovering its limit): see _share.
        self._watches = [
            AccountWatch(
                window,
                partial(self.request_count, key_index=index, retry=_ONE_TRY),
                self._poller,
                interval=self.poll_policy.account_read_interval,
            )
            for index, window in enumerate(self._slots.windows)
        ]
        if self._keys.several:
            self._poller.subscribe(lambda job_id, _result, _error: self._keys.ended(job_id))
        self._poller_task: asyncio.Task[Any] | None = None
        self._tasks: TaskGroup | None = None
        self._webhooks = webhooks
        self._state = "new"
        self._retry_listeners: list[Callable[[int, Exception, float], None]] = []
        #: What results keep for save(): the session while the client is open.
        self._sessions: _LiveSession = _LiveSession()
        # The cache sees this client as a JobHost (api_version, base_url, attach, redact), and
        # is handed the submit path and task group it goes through.
        self._cache = (
            CachedSubmissions(
                ResultCache(cache), self, self._send, self._spawn, sessions=self._sessions
            )
            if cache is not None
            else None
        )
        warn_if_plain_http(self.base_url)

    def __repr__(self) -> str:
        # Deliberately without the key.
        return (
            f"<DreamboothClient base_url={self.base_url!r} api_version={self.api_version!r} "
            f"state={self._state!r}>"
        )

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the session and start the poller (``async with`` does this for you).

        ``start()`` and ``aclose()`` must be called from the same task (as ``async with`` and
        an ASGI lifespan do): the client's task group, which owns the poller and every batch,
        is entered in one and left in the other.
        """
        if self._state == "open":
            return
        if self._state == "closed":
            raise ClientClosedError("this client was closed; create a new DreamboothClient")
        await self._transport.open()
        try:
            if self._webhooks is not None:
                await self._webhooks.start(self._poller)
            # One task group owns every background task of this client: the poller, and each
            # batch (see spawn). It is entered here and left in aclose(), so both must run in
            # the same task, as `async with` does.
            tasks = anyio.create_task_group()
            await tasks.__aenter__()
            self._tasks = tasks
            self._poller_task = await tasks.start(self._run_poller, name="dreambooth-poller")
            for index, watch in enumerate(self._watches):
                tasks.start_soon(watch.run, name=f"dreambooth-account-watch-{index}")
        except BaseException:
            # __aexit__ does not run when __aenter__ fails: close what we opened.
            await self._stop_tasks()
            await self._stop_webhooks()
            await self._transport.close()
            raise
        self._state = "open"
        self._sessions.session = self._transport.session

    async def _run_poller(self, *, task_status: TaskStatus[asyncio.Task[Any]]) -> None:
        task = asyncio.current_task()
        assert task is not None
        task_status.started(task)
        await self._poller.run()

    def _spawn(self, func: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        """Run ``func()`` in the client's task group: it ends, at the latest, when the client
        closes."""
        if self._tasks is None:
            raise ClientClosedError(
                "the client is not open: use it inside `async with DreamboothClient(...)`"
            )
        self._tasks.start_soon(func, name=name)

    async def aclose(self) -> None:
        """Stop the poller (pending jobs get :class:`ClientClosedError`) and close the session.

        Closing completes even when the caller is being cancelled (Ctrl-C in ``async with``):
        the cancellation is re-raised once the session and the webhook receiver are closed.
        """
        if self._state == "closed":
            return
        self._state = "closed"
        self._sessions.session = None
        self._poller.close()
        cancelled = False
        raised: BaseException | None = None
        # The task group first: cached requests in flight release their claims in the cache
        # file, which closes after them.
        for step in (
            self._stop_tasks,
            self._stop_flights,
            self._stop_webhooks,
            self._transport.close,
        ):
            try:
                cancelled |= await _to_the_end(step)
            except BaseException as error:
                # A KeyboardInterrupt raised in one of our tasks (a second Ctrl-C), say: the
                # rest still closes, then it is raised as itself, not wrapped in a group.
                raised = raised or sole_error(error)
        if raised is not None:
            raise raised
        if cancelled:
            raise asyncio.CancelledError

    async def _stop_flights(self) -> None:
        if self._cache is not None:
            await self._cache.aclose()

    async def _stop_tasks(self) -> None:
        # Taken before awaiting: a cancelled close that runs this again must not leave the
        # group twice.
        tasks, self._tasks = self._tasks, None
        if tasks is not None:
            tasks.cancel_scope.cancel()
            await tasks.__aexit__(None, None, None)

    async def _stop_webhooks(self) -> None:
        if self._webhooks is not None:
            await self._webhooks.stop()

    def _check_open(self) -> None:
        if self._state != "open":
            verb = "was closed" if self._state == "closed" else "is not started"
            raise ClientClosedError(
                f"the client {verb}: use it inside `async with DreamboothClient(...) as client:`"
            )

    # --- observability ------------------------------------------------------------------------

    def on_retry(self, callback: Callable[[int, Exception, float], None]) -> Callable[[], None]:
        """Call ``callback(attempt, error, delay)`` before every retry of any call; returns a
        function that stops it."""
        self._retry_listeners.append(callback)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._retry_listeners.remove(callback)

        return remove

    def redact(self, text: str) -> str:
        """``text`` with every API key of this client masked (the service may echo a key in an
        error message: mask before printing or storing what it said)."""
        return self._transport.redact(text)

    @property
    def is_open(self) -> bool:
        """True between ``start()`` (or entering ``async with``) and ``aclose()``."""
        return self._state == "open"

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy every call uses unless it is given its own."""
        return self._transport.retry

    @property
    def http_session(self) -> aiohttp.ClientSession:
        """The aiohttp session in use (for downloads of output links): only while open."""
        return self._transport.session

    def _on_retry(self, attempt: int, error: Exception, delay: float) -> None:
        for listener in self._retry_listeners:
            listener(attempt, error, delay)

    @property
    def key_count(self) -> int:
        """How many API keys this client uses (they are never shown; see ``api_key``)."""
        return self._keys.count

    @property
    def retired_keys(self) -> dict[int, str]:
        """Keys retired in this client (0-based position -> the error's type name): the
        service refused them (401) or they could not pay (402)."""
        return dict(self._keys.retired)

    @property
    def key_ring(self) -> KeyRing:
        """The positions of this client's keys: which are live, which are retired, and which key
        submitted each job (never the keys themselves). A batch shares it, so that a key the
        service refuses is retired for the whole client; read-only: the ring itself is the
        client's."""
        return self._keys

    def _key_index(self, index: int) -> int:
        valid = isinstance(index, int) and not isinstance(index, bool)
        if not valid or not 0 <= index < self._keys.count:
            raise RequestValidationError(
                "key_index", index, f"a key position from 0 to {self._keys.count - 1}"
            )
        return index

    @property
    def slot_pool(self) -> SlotPool:
        """The account's queue slots this client may hold: one adaptive window per key, shared
        by every ``submit``/``generate`` call and every batch that does not fix its own
        concurrency, so that they wait their turn (first come, first served) instead of racing
        each other for room. Read ``slot_pool.limit`` and ``slot_pool.held`` to watch it."""
        return self._slots

    @property
    def poller(self) -> Poller:
        """The background poller (its ``fetch_calls`` and ``pending`` counts are handy)."""
        return self._poller

    # --- downloads and batches ----------------------------------------------------------------

    async def download(
        self,
        result: GenerationResult,
        directory: str | os.PathLike[str],
        *,
        not_found_grace: float = 30.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> list[Path]:
        """Download every output image of ``result`` into ``directory``; return the paths.

        Streams to disk, retries a 404 on a just-finished output for ``not_found_grace``
        seconds, checks the content type and ``max_bytes``, and names files safely.
        """
        self._check_open()
        if self._cache is not None:
            cached = self._cache.done_for(result)
            if cached is not None and all(path.is_file() for path in cached.files):
                # The stored copies: no download.
                return copy_files(cached, cached.files, directory)
        return await download_result(
            result,
            directory,
            sessions=self._sessions,
            not_found_grace=not_found_grace,
            max_bytes=max_bytes,
        )

    def map(
        self,
        requests: Iterable[BatchInput] | AsyncIterable[BatchInput],
        concurrency: int | None = None,
        *,
        progress: bool | ProgressReporter = False,
        **options: Unpack[MapOptions],
    ) -> BatchRun:
        """Run many requests; yield a :class:`BatchItem` for each as it completes.

        ``concurrency=None`` adapts to the account's queue slots; ``requests`` is read lazily.
        Use ``async with client.map(...) as items: async for item in items: ...`` for
        guaranteed cleanup. Options (``fail_fast``, ``manifest``, ``on_event``,
        ``download_to``, ``rate_limit``, ...) are those of :func:`map_requests`.

        ``progress=True`` shows a progress display while the batch runs: a tqdm bar (a widget
        in a Jupyter notebook, via ``tqdm.auto``) when tqdm is installed and the output is a
        terminal or a notebook, status lines on stderr otherwise. A
        :class:`~dreambooth_async._progress.ProgressReporter` of your own is fed the same events
        (and left for you to close).
        """
        if progress is not False:
            options = with_progress(progress, requests, options)
        return map_requests(
            self,
            requests,
            concurrency,
            spawn=self._spawn,
            telemetry=self._telemetry,
            sessions=self._sessions,
            **options,
        )

    async def gather(
        self,
        requests: Iterable[BatchInput] | AsyncIterable[BatchInput],
        concurrency: int | None = None,
        **options: Unpack[MapOptions],
    ) -> list[BatchItem]:
        """Run many requests and return their :class:`BatchItem` in input order."""
        async with self.map(requests, concurrency, **options) as run:
            items = [item async for item in run]
        return sorted(items, key=lambda item: item.index)


async def _to_the_end(step: Callable[[], Awaitable[None]]) -> bool:
    """Await ``step()`` to its end even if the calling task is cancelled meanwhile (an
    unclosed session leaks its sockets); True when it was. A second cancellation wins."""
    cancelled = False
    while True:
        try:
            await step()
            return cancelled
        except asyncio.CancelledError:
            if cancelled:
                raise
            cancelled = True
