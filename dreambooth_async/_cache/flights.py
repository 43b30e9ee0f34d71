"""The client's side of the cache: one submission per seeded request, across callers and
processes. A request found ``done`` is answered from the file; ``submitted`` by another process
(or an earlier run) is followed by its job id; ``claimed`` is waited on; else this process
claims it and submits, through the client's own submit path handed over at construction.

The cache sees the client only through :class:`JobHost` and the callables of
:mod:`.._sending`; the client implements them."""

from __future__ import annotations

import asyncio
import sqlite3
from functools import partial
from typing import Any, Protocol

import attrs

from .. import _backoff
from .._download import SessionSource
from .._errors import (
    AmbiguousSubmission,
    APIError,
    ClientClosedError,
    GenerationFailed,
    RequestValidationError,
    TransportError,
)
from .._job import Job
from .._models import ApiVersion, CachedResult, GenerationRequest, GenerationResult
from .._sending import SendFn, Sending, SpawnFn
from .._transport import logger
from .store import ResultCache, cache_key

__all__ = ["CachedSubmissions", "JobHost"]


class JobHost(Protocol):
    """What the cache needs of the client that uses it: where requests go (part of the cache
    key), attaching to a job another process paid for, and masking the keys in what it keeps.
    Implemented by :class:`~dreambooth_async.DreamboothClient`."""

    @property
    def api_version(self) -> ApiVersion: ...
    @property
    def base_url(self) -> str: ...

    def attach(
        self, job_id: str | int, *, timeout: float | None = None, fetch_url: str | None = None
    ) -> Job: ...

    def redact(self, text: str) -> str: ...


@attrs.define
class _Flight:
    """One cached request being resolved in this process: every caller shares it."""

    answer: asyncio.Future[GenerationResult | Job]
    final: asyncio.Future[GenerationResult]


def _quiet(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _settle(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _provably_not_sent(error: BaseException) -> bool:
    """True when ``error`` shows that no submission was accepted: bad input, a connection that
    was never made, or an answer of the service refusing it."""
    if isinstance(error, RequestValidationError):
        return True
    if isinstance(error, TransportError | APIError):
        return not error.may_have_landed
    return False


class CachedSubmissions:
    """The cache as one client uses it. ``send`` is the client's submit path (see
    :class:`SendFn`), ``spawn`` its task group; ``host`` is what else it needs of the client
    (:class:`JobHost`); ``sessions`` is the session handle its results keep and its images are
    fetched with."""

    def __init__(
        self,
        cache: ResultCache,
        host: JobHost,
        send: SendFn,
        spawn: SpawnFn,
        *,
        sessions: SessionSource,
    ) -> None:
        self.cache = cache
        self._client = host
        self._send = send
        self._spawn = spawn
        self._sessions = sessions
        #: Cache key -> the request being resolved for it in this process.
        self._flights: dict[str, _Flight] = {}

    async def answer(
        self,
        request: GenerationRequest,
        sending: Sending,
        *,
        final: bool,
    ) -> GenerationResult | Job | None:
        """The cache's part of ``submit`` (``final=False``: the answer, a result or the job)
        and ``generate`` (``final=True``: the result). None when ``request`` is not cacheable."""
        client = self._client
        key = cache_key(request, client.api_version, client.base_url)
        if key is None:
            return None
        flight = self._flights.get(key)
        if flight is None:
            loop = asyncio.get_running_loop()
            flight = _Flight(loop.create_future(), loop.create_future())
            flight.answer.add_done_callback(_quiet)
            flight.final.add_done_callback(_quiet)
            self._flights[key] = flight
            # A task of the client's group, not the caller's: a caller that gives up must not
            # take the shared submission with it; closing the client ends it.
            self._spawn(
                partial(self._fly, key, request, flight, sending),
                "dreambooth-cache",
            )
        if final:
            return await asyncio.shield(flight.final)
        return await asyncio.shield(flight.answer)

    def done_for(self, result: GenerationResult) -> CachedResult | None:
        """The cached form of ``result`` (found by its job id), when its images are stored."""
        return self.cache.done_for(result, self._sessions)

    async def aclose(self) -> None:
        """Close the file. The requests still being resolved were cancelled with the
        client's task group (their callers got ClientClosedError) before this runs."""
        self.cache.close()

    async def _fly(
        self,
        key: str,
        request: GenerationRequest,
        flight: _Flight,
        sending: Sending,
    ) -> None:
        try:
            await self._resolve(key, request, flight, sending)
        except asyncio.CancelledError:
            closed = ClientClosedError("the client closed while the request was in flight")
            _settle(flight.answer, closed)
            _settle(flight.final, closed)
            raise
        except BaseException as error:
            _settle(flight.answer, error)
            _settle(flight.final, error)
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]

    async def _resolve(
        self,
        key: str,
        request: GenerationRequest,
        flight: _Flight,
        sending: Sending,
    ) -> None:
        cache, client = self.cache, self._client
        waits = 0
        attached = False
        while True:
            row = cache.claim(key)
            if row is None:
                break  # ours to submit
            if row.state == "done":
                cached = cache.restore(row, self._sessions)
                logger.debug("cache hit for job %s", cached.id)
                flight.answer.set_result(cached)
                flight.final.set_result(cached)
                return
            if row.state == "ambiguous":
                raise AmbiguousSubmission(
                    None,
                    f"the cache holds an earlier submission of this request that may have been "
                    f"accepted (its answer was lost; cache key {key[:16]}): it is not sent "
                    f"again. To send it anyway: dreambooth-async cache prune "
                    f"{cache.path} --older-than 0",
                )
            if row.state == "submitted" and row.job_id:
                # Another process (or an earlier run) paid for it: follow its job.
                job = client.attach(row.job_id, timeout=sending.timeout, fetch_url=row.fetch_url)
                attached = True
                break
            # Claimed by another process that is sending it now: its answer is a moment away
            # (from 20 ms, half as long again each time, up to 0.5 s).
            delay = _backoff.exponential(waits, base=0.02, factor=1.5, cap=0.5, jitter=None)
            await asyncio.sleep(delay)
            waits += 1
        if not attached:
            try:
                answer = await self._send(request, sending)
            except BaseException as error:
                if _provably_not_sent(error):
                    cache.release(key)
                else:
                    cache.ambiguous(key)  # it may have been accepted: nobody sends it again
                raise
            if isinstance(answer, GenerationResult):
                stored = await self._store(key, answer)
                flight.answer.set_result(stored)
                flight.final.set_result(stored)
                return
            job = answer
            cache.submitted(key, job.id, job.fetch_url)
        flight.answer.set_result(job)
        try:
            result = await job.wait()
        except BaseException as error:
            # Only the service's word that the job failed frees the row: a job that timed out
            # or could not be fetched may still finish, and the next call attaches to it.
            if isinstance(error, GenerationFailed):
                cache.release(key, job_id=job.id)
            raise
        flight.final.set_result(await self._store(key, result))

    async def _store(self, key: str, result: GenerationResult) -> GenerationResult:
        try:
            return await self.cache.store(
                key, result, sessions=self._sessions, redact=self._client.redact
            )
        except (OSError, sqlite3.Error) as error:
            # The image was paid for and is here: a cache that cannot keep it must not lose it.
            logger.warning("cache: could not store job %s: %s", result.id, error)
            return result
