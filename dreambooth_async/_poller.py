"""Queued jobs as awaited results: one background task per client polls every pending job.

Pending jobs sit in a heap ordered by when they are next due for a fetch, so ten thousand
pending jobs cost one task and a heap entry each, not ten thousand sleeping tasks. When a job is
due is decided from the service's ETA as corrected by what the client learned about it
(:mod:`._eta`): fetch at the latest moment the job may finish, unless that would leave the
result waiting too long after the earliest moment it may finish, in which case fetch at that
earliest moment plus the allowed delay and let the fresher (and so tighter) ETA of the answer
decide the next fetch.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import anyio
import attrs

from ._errors import (
    APIError,
    AuthenticationError,
    ClientClosedError,
    DreamboothError,
    GenerationFailed,
    JobTimeout,
    RateLimitError,
    ServerError,
    TransportError,
)
from ._eta import EtaModel
from ._models import GenerationRequest, GenerationResult, Processing

__all__ = ["Job", "PollPolicy", "Poller"]

logger = logging.getLogger("dreambooth_async")

#: One fetch call for a job id: returns the result or the processing status, or raises.
FetchFn = Callable[[str, str | None], Awaitable[GenerationResult | Processing]]


@attrs.frozen(kw_only=True)
class PollPolicy:
    """How the poller paces fetch calls. Seconds, except the fractions.

    ``delay_budget`` is the share of a job's duration that its result may wait on the server
    before the client fetches it; within it the poller spends as few fetch calls as it can.
    Without an ETA it backs off from ``initial_interval`` by ``backoff_factor`` up to
    ``max_interval``, with jitter. ``job_timeout`` bounds every job (None: no bound).
    """

    min_interval: float = 1.0
    initial_interval: float = 2.0
    max_interval: float = 30.0
    backoff_factor: float = 1.6
    delay_budget: float = 0.085
    fetch_concurrency: int = 16
    job_timeout: float | None = 1800.0
    #: With a webhook receiver, the poller is a fallback: it waits this much longer.
    webhook_slowdown: float = 3.0
    #: One job in this many is a probe: fetched just before it can possibly be done, so that
    #: the ETA model keeps learning without bias (0: never).
    explore_every: int = 16

    def scaled(self, factor: float) -> PollPolicy:
        """The same policy for a service whose clock runs ``factor`` times real time
        (an emulator with ``time_scale=factor``)."""
        return attrs.evolve(
            self,
            min_interval=self.min_interval * factor,
            initial_interval=self.initial_interval * factor,
            max_interval=self.max_interval * factor,
            job_timeout=None if self.job_timeout is None else self.job_timeout * factor,
        )


class _State:
    """A pending job's bookkeeping, shared by every :class:`Job` handle for the same id."""

    __slots__ = (
        "anchors",
        "backoff",
        "deadline",
        "due",
        "eta",
        "failures",
        "fetch_url",
        "fetches",
        "future",
        "id",
        "last_fetch",
        "last_processing",
        "nudged",
        "probe",
        "submitted_at",
        "webhook",
    )

    def __init__(self, job_id: str, future: asyncio.Future[GenerationResult]) -> None:
        self.id = job_id
        self.future = future
        self.eta: float | None = None
        self.fetch_url: str | None = None
        self.submitted_at = time.monotonic()
        self.deadline: float | None = None
        self.due = 0.0
        self.last_fetch: float | None = None
        self.last_processing: float | None = None
        # (time, eta) for each processing answer: the material for the ETA model.
        self.anchors: list[tuple[float, float]] = []
        self.backoff = 0.0
        self.failures = 0
        self.fetches = 0
        self.probe = False
        self.webhook = False
        self.nudged = False


class Job:
    """A submitted generation. ``await job`` (or ``await job.wait(timeout)``) for its result.

    Every handle for the same id shares one outcome: cancelling one waiter leaves the others
    and the polling alone, and the result is delivered once.
    """

    def __init__(
        self,
        state: _State,
        *,
        request: GenerationRequest | None = None,
        poller: Poller | None = None,
    ) -> None:
        self._state = state
        self._poller = poller
        #: The request that created the job (None when attached by id).
        self.request = request

    def __repr__(self) -> str:
        return f"<Job id={self.id!r} status={self.status!r} eta={self.eta!r}>"

    @property
    def id(self) -> str:
        """The service's job id (a string)."""
        return self._state.id

    @property
    def eta(self) -> float | None:
        """Seconds the service last estimated the job still needs (None when unknown)."""
        return self._state.eta

    @property
    def status(self) -> str:
        """``"processing"``, ``"success"``, ``"failed"`` (any error), or ``"cancelled"``."""
        future = self._state.future
        if not future.done():
            return "processing"
        if future.cancelled():
            return "cancelled"
        return "failed" if future.exception() is not None else "success"

    @property
    def fetches(self) -> int:
        """How many fetch calls this job has cost so far."""
        return self._state.fetches

    def done(self) -> bool:
        """True once the job has a result or an error."""
        return self._state.future.done()

    def result(self) -> GenerationResult:
        """The result of a finished job (raises its error, or InvalidStateError if pending)."""
        return self._state.future.result()

    async def wait(self, timeout: float | None = None) -> GenerationResult:
        """Wait for the result. ``timeout`` bounds this waiter only: on expiry it raises
        :class:`JobTimeout` and the job goes on (wait again, or ``client.wait_for(job.id)``)."""
        if timeout is None:
            return await asyncio.shield(self._state.future)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(self._state.future)
        except TimeoutError:
            if self._state.future.done():
                return self._state.future.result()
            raise JobTimeout(self.id, timeout) from None

    def __await__(self) -> Generator[Any, None, GenerationResult]:
        return self.wait().__await__()


def _consume_exception(future: asyncio.Future[Any]) -> None:
    # A job nobody awaits may still fail; reading the exception keeps asyncio from logging
    # "exception was never retrieved" for it.
    if not future.cancelled():
        future.exception()


class Poller:
    """Owns every pending job of one client; runs as one task for the client's lifetime."""

    def __init__(self, fetch: FetchFn, policy: PollPolicy) -> None:
        self._fetch = fetch
        self.policy = policy
        self.eta_model = EtaModel()
        self._jobs: dict[str, _State] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._closed = False
        self._tracked = 0
        self._on_done: list[
            Callable[[str, GenerationResult | None, BaseException | None], None]
        ] = []
        #: Total fetch calls made (for benchmarks and tests).
        self.fetch_calls = 0

    # --- registration -------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """How many jobs are being polled."""
        return len(self._jobs)

    def _new_state(self, job_id: str) -> _State:
        future: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume_exception)
        return _State(job_id, future)

    def resolved(self, result: GenerationResult, request: GenerationRequest | None) -> Job:
        """A handle for a job that finished in its submission answer."""
        state = self._new_state(result.id or "")
        state.future.set_result(result)
        return Job(state, request=request, poller=self)

    def track(
        self,
        processing: Processing,
        *,
        request: GenerationRequest | None = None,
        timeout: float | None = None,
        webhook: bool = False,
    ) -> Job:
        """Start polling a job the service answered "processing" for (or attach to it)."""
        if self._closed:
            raise ClientClosedError("the client is closed; open a new one to wait for jobs")
        state = self._jobs.get(processing.id)
        if state is None:
            state = self._new_state(processing.id)
            state.webhook = webhook
            limit = timeout if timeout is not None else self.policy.job_timeout
            state.deadline = None if limit is None else state.submitted_at + limit
            explore = self.policy.explore_every
            self._tracked += 1
            state.probe = bool(explore) and self._tracked % explore == 0
            self._jobs[state.id] = state
            self._observe_processing(state, processing, time.monotonic())
        return Job(state, request=request, poller=self)

    def subscribe(
        self, callback: Callable[[str, GenerationResult | None, BaseException | None], None]
    ) -> None:
        """Call ``callback(job_id, result, error)`` when a polled job ends."""
        self._on_done.append(callback)

    def nudge(self, job_id: str) -> bool:
        """Fetch ``job_id`` now (a webhook said it finished). False if it is not pending."""
        state = self._jobs.get(job_id)
        if state is None:
            return False
        if state.due == float("inf"):
            state.nudged = True  # a fetch is in flight; if it says "processing", ask again soon
        else:
            self._schedule(state, time.monotonic())
        return True

    # --- scheduling ---------------------------------------------------------------------------

    def _schedule(self, state: _State, due: float) -> None:
        if state.deadline is not None:
            due = min(due, state.deadline)
        state.due = due
        heapq.heappush(self._heap, (due, next(self._seq), state.id))
        if self._heap[0][2] == state.id:
            self._wakeup.set()

    def _observe_processing(self, state: _State, answer: Processing, now: float) -> None:
        state.last_processing = now
        if answer.fetch_result:
            state.fetch_url = answer.fetch_result
        state.eta = answer.eta
        policy = self.policy
        if answer.eta is None or answer.eta <= 0:
            state.backoff = (
                policy.initial_interval
                if state.backoff == 0
                else min(policy.max_interval, state.backoff * policy.backoff_factor)
            )
            due = now + state.backoff * random.uniform(0.9, 1.1)
        else:
            if state.anchors:
                # The ETA fell by (previous - this) while (now - then) passed: if it is off by
                # a steady factor, that factor shows. Rough, but it spares a new client the
                # blind polling of its first jobs.
                then, previous = state.anchors[-1]
                if previous - answer.eta > 0.3 * previous:
                    self.eta_model.observe_trend((now - then) / (previous - answer.eta))
            state.anchors.append((now, answer.eta))
            due = self._due_from_eta(state, now, answer.eta)
        if state.nudged:
            state.nudged = False
            due = now
        if state.last_fetch is not None:
            due = max(due, state.last_fetch + policy.min_interval)
        self._schedule(state, due)

    def _due_from_eta(self, state: _State, now: float, eta: float) -> float:
        rho_lo, rho_hi = self.eta_model.bounds()
        earliest, latest = now + eta * rho_lo, now + eta * rho_hi
        if state.probe and state.fetches == 0 and self.eta_model.samples > 0:
            # An exploring job asks just before the earliest plausible finish, so that its
            # answer bounds the real duration from below; the model needs both sides.
            return earliest * 0.98 + now * 0.02
        # The budget is a share of the job's duration; measured against the shortest duration
        # it may have, so that a job finishing early is not kept waiting too long.
        shortest = earliest - state.submitted_at
        budget = self.policy.delay_budget * shortest
        factor = self.policy.webhook_slowdown if state.webhook else 1.0
        if latest - earliest <= budget:
            return now + (latest - now) * factor
        return now + (earliest + budget - now) * factor

    def _learn(self, state: _State, finished_by: float) -> None:
        """Measure ``rho`` for the job's earlier ETAs, now that it finished by ``finished_by``."""
        if len(state.anchors) < 2 or state.last_processing is None:
            if state.probe and state.anchors:
                # A probe that found the job done: it was faster than the model's low end.
                at, eta = state.anchors[0]
                self.eta_model.observe((finished_by - at) / eta, 0.0, probe=True)
            return
        # The last ETA was short, so it places the real finish closely; the last "processing"
        # answer and the success answer bound it.
        last_at, last_eta = state.anchors[-1]
        lo, hi = self.eta_model.bounds()
        earliest = max(state.last_processing, last_at + last_eta * lo)
        latest = min(finished_by, last_at + last_eta * hi)
        if earliest > latest:  # the model is off: fall back on the observed bounds alone
            earliest, latest = state.last_processing, finished_by
        finished = (earliest + latest) / 2
        for n, (at, eta) in enumerate(state.anchors[:-1]):
            rho = (finished - at) / eta
            self.eta_model.observe(rho, (latest - earliest) / eta, probe=state.probe and n == 0)

    # --- completion ---------------------------------------------------------------------------

    def _finish(
        self, state: _State, result: GenerationResult | None, error: BaseException | None
    ) -> None:
        if self._jobs.get(state.id) is state:
            del self._jobs[state.id]
        if state.future.done():
            return
        if error is not None:
            state.future.set_exception(error)
        else:
            assert result is not None
            state.future.set_result(result)
        for callback in self._on_done:
            callback(state.id, result, error)

    async def _poll(self, state: _State) -> None:
        now = time.monotonic()
        if state.deadline is not None and now >= state.deadline:
            limit = state.deadline - state.submitted_at
            self._finish(state, None, JobTimeout(state.id, limit))
            return
        state.last_fetch = now
        state.fetches += 1
        self.fetch_calls += 1
        try:
            answer = await self._fetch(state.id, state.fetch_url)
        except (TransportError, ServerError, RateLimitError) as error:
            # Fetching is idempotent and the transport already retried: the job itself is
            # fine, so try again later rather than fail it.
            state.failures += 1
            delay = min(self.policy.max_interval, self.policy.initial_interval * 2**state.failures)
            logger.info("fetch of job %s failed (%s); next try in %.2fs", state.id, error, delay)
            self._schedule(state, time.monotonic() + delay * random.uniform(0.5, 1.0))
            return
        except (GenerationFailed, AuthenticationError) as error:
            self._finish(state, None, error)
            return
        except APIError as error:
            # "Request not found" and the like: perhaps not visible yet; give it a few tries.
            state.failures += 1
            if state.failures >= 4:
                self._finish(state, None, error)
            else:
                self._schedule(state, time.monotonic() + self.policy.initial_interval)
            return
        except DreamboothError as error:
            self._finish(state, None, error)
            return
        except Exception as error:
            # Nothing foresaw this (an answer no rule covers, or a bug): it costs this job,
            # never the poller, which would take every pending job down with it.
            failure = DreamboothError(
                f"fetching job {state.id!r} failed: {type(error).__name__}: {error}"
            )
            failure.__cause__ = error
            self._finish(state, None, failure)
            return
        received = time.monotonic()
        state.failures = 0
        if isinstance(answer, Processing):
            self._observe_processing(state, answer, received)
            return
        self._learn(state, received)
        if answer.id is None:
            answer = attrs.evolve(answer, id=state.id)
        self._finish(state, answer, None)

    # --- the task -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll until cancelled. Fetches run concurrently, at most ``fetch_concurrency``."""
        slots = anyio.Semaphore(self.policy.fetch_concurrency)

        async def poll_one(state: _State) -> None:
            try:
                await self._poll(state)
            finally:
                slots.release()

        async with anyio.create_task_group() as tg:
            while True:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    due, _, job_id = heapq.heappop(self._heap)
                    state = self._jobs.get(job_id)
                    if state is None or state.due != due:
                        continue  # finished, or rescheduled since this entry was pushed
                    await slots.acquire()
                    state.due = float("inf")  # in flight: not due again until rescheduled
                    tg.start_soon(poll_one, state)
                self._wakeup.clear()
                timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                if timeout is None or timeout > 0:
                    try:
                        async with asyncio.timeout(timeout):
                            await self._wakeup.wait()
                    except TimeoutError:
                        pass

    def close(self) -> None:
        """Fail every pending job: the client is going away."""
        self._closed = True
        for state in list(self._jobs.values()):
            self._finish(
                state,
                None,
                ClientClosedError(
                    f"the client closed while job {state.id} was pending; it may still finish: "
                    f"attach with client.wait_for({state.id!r}) in a new client"
                ),
            )
        self._heap.clear()
