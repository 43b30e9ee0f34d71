"""Queued jobs as awaited results: one background task per client polls every pending job.

Pending jobs sit in a heap ordered by when they are next due for a fetch, so ten thousand
pending jobs cost one task and a heap entry each, not ten thousand sleeping tasks.

When to fetch each job is the planner's (:mod:`._fetch_timing`): every wait is a share of the
job's own time. The poller applies it, with one absolute number, a politeness floor between two
fetches of a job, and owns what ends a job.

A job the service accepted ends only on an answer that ends it: its result, a documented failure
(``"failed"``), a refused key, the caller's timeout or the policy's job timeout. "Processing" with
or without id, ETA or ``fetch_result`` keeps it pending; "not found" is asked again for a bounded
time (:attr:`PollPolicy.not_found_grace`), then ends it with :class:`JobNotFound` naming the id;
an answer no rule covers is treated alike and ends it, after that time, with :class:`JobTimeout`
(caused by that answer). Every error that ends a job names it (``job_id``), so that a batch's
rerun fetches the job again instead of paying for it twice.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

import anyio
import attrs

from . import _backoff
from ._errors import (
    APIError,
    AuthenticationError,
    ClientClosedError,
    DreamboothError,
    GenerationFailed,
    JobNotFound,
    JobTimeout,
    RateLimitError,
    ServerError,
    TransportError,
)
from ._eta import DurationModel, EtaModel
from ._fetch_timing import FetchPlanner, PollPolicy
from ._job import Job, JobState, new_state
from ._models import GenerationRequest, GenerationResult, Processing
from ._telemetry import NO_TELEMETRY, NO_TRACE, JobTrace, Telemetry, outcome_of

__all__ = ["Job", "PollPolicy", "Poller"]

logger = logging.getLogger("dreambooth_async")

#: One fetch call for a job id: returns the result or the processing status, or raises.
FetchFn = Callable[[str, str | None], Awaitable[GenerationResult | Processing]]

#: "Not found" is asked about at least this many times before the job is given up on.
_NOT_FOUND_TRIES = 3


class Poller:
    """Owns every pending job of one client; runs as one task for the client's lifetime."""

    def __init__(
        self, fetch: FetchFn, policy: PollPolicy, telemetry: Telemetry = NO_TELEMETRY
    ) -> None:
        self._fetch = fetch
        self.policy = policy
        self._telemetry = telemetry
        #: When to fetch each job, and the models behind that (see :mod:`._fetch_timing`).
        self._planner = FetchPlanner(policy, self._replan)
        self._jobs: dict[str, JobState] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._closed = False
        self._on_done: list[
            Callable[[str, GenerationResult | None, BaseException | None], None]
        ] = []
        self._on_unconfirmed: list[Callable[[str], None]] = []
        #: Total fetch calls made (for benchmarks and tests).
        self.fetch_calls = 0

    @property
    def eta_model(self) -> EtaModel:
        """What the client learned of the service's ETAs."""
        return self._planner.eta_model

    @property
    def durations(self) -> DurationModel:
        """How long this client's jobs took, submission to finish: the time scale of a job
        whose answers carry no ETA, and of the batch's waits."""
        return self._planner.durations

    # --- registration -------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """How many jobs are being polled."""
        return len(self._jobs)

    def resolved(self, result: GenerationResult, request: GenerationRequest | None) -> Job:
        """A handle for a job that finished in its submission answer."""
        state = new_state(result.id or "")
        state.future.set_result(result)
        return Job(state, request=request)

    def track(
        self,
        processing: Processing,
        *,
        request: GenerationRequest | None = None,
        timeout: float | None = None,
        webhook: bool = False,
        trace: JobTrace = NO_TRACE,
    ) -> Job:
        """Start polling a job the service answered "processing" for (or attach to it).

        With ``request`` the answer is the job's submission answer, so the job started now;
        without, it is a job attached by id, whose start is unknown. ``trace`` is where its
        fetches are reported (see :mod:`._telemetry`).
        """
        if self._closed:
            raise ClientClosedError("the client is closed; open a new one to wait for jobs")
        state = self._jobs.get(processing.id)
        if state is None:
            state = new_state(processing.id)
            state.webhook = webhook
            state.measured = request is not None
            state.trace = trace
            trace.job(state.id)
            self._telemetry.job_started(trace, submitted=state.measured)
            limit = timeout if timeout is not None else self.policy.job_timeout
            state.deadline = None if limit is None else state.submitted_at + limit
            self._jobs[state.id] = state
            now = time.monotonic()
            if request is None and not processing.raw:
                # Attached by id: no answer was seen yet, so nothing is known of the job.
                self._schedule(state, self._planner.plan(state, now))
            else:
                self._observe_processing(state, processing, now - self._planner.round_trip / 2, now)
        return Job(state, request=request)

    def reports_to(self, job_id: str, trace: JobTrace) -> bool:
        """True when ``job_id`` is pending and reports its fetches to ``trace``."""
        state = self._jobs.get(job_id)
        return state is not None and state.trace is trace

    def subscribe(
        self, callback: Callable[[str, GenerationResult | None, BaseException | None], None]
    ) -> None:
        """Call ``callback(job_id, result, error)`` when a polled job ends."""
        self._on_done.append(callback)

    def on_unconfirmed(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(job_id)`` when the fetch a :meth:`hint` caused finds the job still
        running (the delivery behind the hint was early, or not the service's)."""
        self._on_unconfirmed.append(callback)

    def hint(self, job_id: str) -> bool:
        """A webhook delivery said ``job_id`` ended: fetch it now, and remember that this
        fetch checks a delivery. False if it is not pending."""
        state = self._jobs.get(job_id)
        if state is None:
            return False
        state.hinted = True
        state.trace.event("dreambooth.webhook.received")
        return self.nudge(job_id)

    def nudge(self, job_id: str) -> bool:
        """Fetch ``job_id`` now. False if it is not pending."""
        state = self._jobs.get(job_id)
        if state is None:
            return False
        if state.due == float("inf"):
            state.nudged = True  # a fetch is in flight; if it says "processing", ask again soon
        else:
            self._schedule(state, time.monotonic())
        return True

    def next_finish(self) -> float | None:
        """When (``time.monotonic()``) the first of the pending jobs should be done, at the
        latest by what the poller knows; None when no pending job has an estimate."""
        windows = (self._planner.window(state) for state in self._jobs.values())
        return min((window[1] for window in windows if window is not None), default=None)

    # --- scheduling ---------------------------------------------------------------------------

    def _schedule(self, state: JobState, due: float) -> None:
        if state.deadline is not None:
            due = min(due, state.deadline)
        state.due = due
        heapq.heappush(self._heap, (due, next(self._seq), state.id))
        if self._heap[0][2] == state.id:
            self._wakeup.set()

    def _reschedule(self, state: JobState, due: float, now: float) -> None:
        """Schedule the next fetch, no sooner than the politeness floor allows."""
        if state.nudged:
            state.nudged = False
            due = now
        since = state.last_fetch if state.last_fetch is not None else now
        self._schedule(state, max(due, since + self.policy.min_interval))

    def _observe_processing(
        self, state: JobState, answer: Processing, at: float, now: float
    ) -> None:
        """The service said "processing" at about ``at`` (the answer arrived at ``now``)."""
        state.last_processing = at
        if answer.fetch_result:
            state.fetch_url = answer.fetch_result
        if answer.meta:
            # The processing answers carry what will run (seed, size, steps); the v3/v4 fetch
            # answer of the result does not: keep it for the result.
            state.meta = answer.meta
        if answer.eta is not None:
            # The fetch page's own example has no ETA: then the last one given still holds.
            self._planner.observe_eta(state, answer.eta, at)
        self._reschedule(state, self._planner.plan(state, now), now)

    def _replan(self) -> None:
        """The ETA model changed: move the next fetch of every job waiting on an estimate.
        While a new client learns, this is what lets the jobs it already has benefit."""
        now = time.monotonic()
        for state in self._jobs.values():
            if state.due == float("inf") or state.due <= now or state.overdue or state.nudged:
                continue  # in flight, due anyway, or past every estimate already
            window = self._planner.window(state)
            if window is None:
                continue
            due = self._planner.plan(state, now) if now < window[1] else now
            self._reschedule(state, due, now)

    # The planning tests ask the poller itself for these two.

    def _window(self, state: JobState) -> tuple[float, float] | None:
        """When the job should finish (see :meth:`FetchPlanner.window`)."""
        return self._planner.window(state)

    def _backoff(self, state: JobState, now: float, *, known: bool, step: int) -> float:
        """The wait before asking again about a job (see :meth:`FetchPlanner.backoff`)."""
        return self._planner.backoff(state, now, known=known, step=step)

    # --- completion ---------------------------------------------------------------------------

    def _finish(
        self,
        state: JobState,
        result: GenerationResult | None,
        error: BaseException | None,
        *,
        resolved_by: str | None = None,
    ) -> None:
        if self._jobs.get(state.id) is state:
            del self._jobs[state.id]
        if state.future.done():
            return
        self._telemetry.job_ended(
            state.trace,
            outcome=outcome_of(error),
            error=error,
            duration=time.monotonic() - state.submitted_at if state.measured else None,
            fetches=state.fetches,
            resolved_by=resolved_by,
            submitted=state.measured,
        )
        if error is not None:
            state.future.set_exception(error)
        else:
            assert result is not None
            state.future.set_result(result)
        for callback in self._on_done:
            callback(state.id, result, error)

    def _retry_later(self, state: JobState, now: float, retry_after: float | None = None) -> None:
        """Ask again after a fetch that told nothing about the job (it failed, or its answer
        fits no rule): back off relative to the job, or as long as the service asked."""
        state.failures += 1
        wait = self._planner.backoff(
            state, now, known=self._planner.window(state) is not None, step=state.failures - 1
        )
        if retry_after is not None:
            wait = max(
                wait, _backoff.retry_after(retry_after, cap=self.policy.max_interval, jitter=None)
            )
        self._reschedule(state, now + wait, now)

    def _ask_again(self, state: JobState, now: float) -> bool:
        """Schedule another fetch after an answer that said nothing about the job ("not found",
        or a shape no rule covers); False once the grace is over."""
        state.puzzled += 1
        age = now - state.submitted_at
        if state.puzzled_age is None:
            state.puzzled_age = age
        expected = self._planner.expected_duration(state) or 0.0
        horizon = self.policy.not_found_grace * max(expected, state.puzzled_age)
        if state.puzzled >= _NOT_FOUND_TRIES and age >= horizon:
            return False
        wait = self._planner.backoff(state, now, known=False, step=state.puzzled)
        # The last tries fit within the grace, however long the back-off has grown.
        wait = _backoff.spread_over(wait, horizon - age, _NOT_FOUND_TRIES - state.puzzled)
        self._reschedule(state, now + wait, now)
        return True

    async def _poll(self, state: JobState) -> None:
        now = time.monotonic()
        if state.deadline is not None and now >= state.deadline:
            limit = state.deadline - state.submitted_at
            self._finish(state, None, JobTimeout(state.id, limit))
            return
        state.last_fetch = now
        if state.first_fetch is None:
            state.first_fetch = now
            state.first_unbiased = bool(state.anchors) and self.eta_model.samples == 0
        state.fetches += 1
        self.fetch_calls += 1
        try:
            # The poller's task is nobody's request: the job's own trace is the fetch's parent.
            with state.trace.active():
                answer = await self._fetch(state.id, state.fetch_url)
        except (TransportError, ServerError, RateLimitError) as error:
            # Fetching is idempotent and the transport already retried: the job itself is
            # fine, so try again later rather than fail it.
            logger.info("fetch of job %s failed (%s); trying again later", state.id, error)
            self._retry_later(state, time.monotonic(), getattr(error, "retry_after", None))
            return
        except GenerationFailed as error:
            error.job_id = error.job_id or state.id
            self._finish(state, None, error, resolved_by=self._resolver(state))
            return
        except AuthenticationError as error:
            self._finish(state, None, error)  # no fetch can succeed with a refused key
            return
        except JobNotFound as error:
            # Right after acceptance the service may not show the job yet.
            if not self._ask_again(state, time.monotonic()):
                error.job_id = error.job_id or state.id
                self._finish(state, None, error)
            return
        except APIError as error:
            # An answer no rule covers. The service accepted the job, which may be paid for:
            # ask again for a while, then give up waiting with an error that names the job.
            logger.warning("unexpected answer for job %s: %s", state.id, error)
            if not self._ask_again(state, time.monotonic()):
                timeout = JobTimeout(state.id, time.monotonic() - state.submitted_at)
                timeout.__cause__ = error
                self._finish(state, None, timeout)
            return
        except DreamboothError as error:
            self._finish(state, None, error)
            return
        except Exception as error:
            # Nothing foresaw this (a bug, an id no URL can carry): it costs this job, never
            # the poller, which would take every pending job down with it.
            failure = DreamboothError(
                f"fetching job {state.id!r} failed: {type(error).__name__}: {error}; "
                f"client.wait_for({state.id!r}) attaches to it again"
            )
            failure.__cause__ = error
            self._finish(state, None, failure)
            return
        received = time.monotonic()
        # The service answered somewhere between the request and its answer.
        at = (now + received) / 2
        self._planner.observe_round_trip(received - now)
        state.failures = state.puzzled = 0
        state.puzzled_age = None
        if isinstance(answer, Processing):
            if state.hinted:
                state.hinted = False
                state.trace.event("dreambooth.webhook.unconfirmed")
                for callback in self._on_unconfirmed:
                    callback(state.id)
            self._observe_processing(state, answer, at, received)
            return
        self._planner.learn(state, at, generation_time=answer.generation_time)
        if answer.id is None:
            answer = attrs.evolve(answer, id=state.id)
        if not answer.meta and state.meta:
            # The v3/v4 fetch answer is {status, id, output}: the seed and the rest of what ran
            # were in the processing answers. generation_time is left as the service gave it:
            # the client measures submission to fetch, queue wait included, not the generation.
            answer = attrs.evolve(answer, meta=state.meta)
        self._finish(state, answer, None, resolved_by=self._resolver(state))

    @staticmethod
    def _resolver(state: JobState) -> str:
        """What found a job's end: a fetch a webhook delivery caused, or the polling."""
        return "webhook" if state.hinted else "poll"

    # --- the task -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll until cancelled. Fetches run concurrently, at most ``fetch_concurrency``."""
        slots = anyio.Semaphore(self.policy.fetch_concurrency)

        async def poll_one(state: JobState) -> None:
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
