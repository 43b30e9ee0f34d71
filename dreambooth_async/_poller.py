"""Queued jobs as awaited results: one background task per client polls every pending job.

Pending jobs sit in a heap ordered by when they are next due for a fetch, so ten thousand
pending jobs cost one task and a heap entry each, not ten thousand sleeping tasks.

Nothing here knows what "fast" is: every wait is a share of the job's own time, so the same
policy serves a half-second turbo job and a five-minute one. What the poller knows of a job is a
*window* in which it should finish: from the service's latest ETA, corrected by what the client
learned about those ETAs (:mod:`._eta`), or, without an ETA, from the durations measured on this
client's finished jobs. Inside the window it fetches at the latest moment the job may finish,
unless that would leave the result waiting more than ``delay_budget`` of the job's duration past
the earliest moment; then it fetches at that earliest moment plus the allowed delay and lets the
answer (a fresher, tighter ETA, or only "not yet") decide the next fetch. Past the window, or with
nothing to go on, it waits a share of the job's age that grows with every answer still saying
"processing". The one absolute number is a politeness floor between two fetches of a job.

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
from ._eta import DurationModel, EtaModel, FinishedJob
from ._job import Job, JobState, new_state
from ._models import GenerationRequest, GenerationResult, Processing

__all__ = ["Job", "PollPolicy", "Poller"]

logger = logging.getLogger("dreambooth_async")

#: One fetch call for a job id: returns the result or the processing status, or raises.
FetchFn = Callable[[str, str | None], Awaitable[GenerationResult | Processing]]

#: Below this many unbiased measurements of the ETA's low end, the poller probes more often.
_LOW_SAMPLES = 4

#: "Not found" is asked about at least this many times before the job is given up on.
_NOT_FOUND_TRIES = 3


@attrs.frozen(kw_only=True)
class PollPolicy:
    """How the poller paces fetch calls. Every wait is relative to the job itself.

    ``delay_budget`` is the share of a job's duration that its result may wait on the service
    before the client fetches it; within it the poller spends as few fetch calls as it can. A
    job past every estimate of its finish is fetched again after a share of its age that starts
    at ``delay_budget`` and grows by ``backoff_factor`` with every answer that still says
    "processing", up to ``backoff_factor - 1``; a job about which nothing is known (no ETA, no
    finished job measured yet) starts there. Failed fetches (network, 5xx, 429) back off the
    same way, or by the ``retry_after`` the service gave.

    ``not_found_grace``: a job the service says it does not know (right after it was accepted,
    it may not show yet) is asked about again until it is this many times its expected duration
    old (the window from its ETA, else from the durations measured on this client's jobs, else
    its age at the first such answer), and at least three times; then the job fails with
    :class:`JobNotFound`, which names it. A job attached by id counts its age from the attach.
    An answer that fits no rule (an unknown status, a 4xx with no meaning for a fetch) is asked
    about again the same way, then ends the job with :class:`JobTimeout` (which names it and
    is caused by that answer): the job may still finish, ``wait_for(job_id)`` attaches again.

    The absolute settings, in seconds: ``min_interval``, the least time between two fetches
    of one job (politeness); ``max_interval``, the most; ``initial_interval``, a fixed first
    wait for a job about which nothing is known (None: a share of its age, as above);
    ``job_timeout``, the bound of every job (None: no bound).
    """

    delay_budget: float = 0.09
    min_interval: float = 0.025
    initial_interval: float | None = None
    max_interval: float = 30.0
    backoff_factor: float = 1.5
    not_found_grace: float = 2.0
    fetch_concurrency: int = 16
    job_timeout: float | None = 1800.0
    #: With a webhook receiver, the poller is a fallback: it waits this much longer.
    webhook_slowdown: float = 3.0
    #: One job in this many is a probe: fetched just before it can possibly be done, so that
    #: the ETA model keeps learning without bias (0: never).
    explore_every: int = 16

    def scaled(self, factor: float) -> PollPolicy:
        """The same policy for a service whose clock runs ``factor`` times real time (an
        emulator with ``time_scale=factor``). The pacing is relative and needs no scaling; this
        scales the absolute settings (the floor, the ceiling, the job timeout)."""
        return attrs.evolve(
            self,
            min_interval=self.min_interval * factor,
            initial_interval=None
            if self.initial_interval is None
            else self.initial_interval * factor,
            max_interval=self.max_interval * factor,
            job_timeout=None if self.job_timeout is None else self.job_timeout * factor,
        )


class Poller:
    """Owns every pending job of one client; runs as one task for the client's lifetime."""

    def __init__(self, fetch: FetchFn, policy: PollPolicy) -> None:
        self._fetch = fetch
        self.policy = policy
        self.eta_model = EtaModel()
        #: How long this client's jobs took, submission to finish: the time scale of a job
        #: whose answers carry no ETA, and of the batch's waits.
        self.durations = DurationModel()
        self._jobs: dict[str, JobState] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._closed = False
        self._since_probe = 0
        self._surprise = 0.0
        #: The share of recent jobs done at their first fetch (an average that forgets).
        self._done_at_first = 1.0
        self._on_done: list[
            Callable[[str, GenerationResult | None, BaseException | None], None]
        ] = []
        #: Total fetch calls made (for benchmarks and tests).
        self.fetch_calls = 0
        #: The round trip of a fetch (an average that forgets): the service looks at a job
        #: about half of it after the request leaves, and its ETA was that old on arrival.
        self._round_trip = 0.0

    # --- registration -------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """How many jobs are being polled."""
        return len(self._jobs)

    def resolved(self, result: GenerationResult, request: GenerationRequest | None) -> Job:
        """A handle for a job that finished in its submission answer."""
        state = new_state(result.id or "")
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
        """Start polling a job the service answered "processing" for (or attach to it).

        With ``request`` the answer is the job's submission answer, so the job started now;
        without, it is a job attached by id, whose start is unknown.
        """
        if self._closed:
            raise ClientClosedError("the client is closed; open a new one to wait for jobs")
        state = self._jobs.get(processing.id)
        if state is None:
            state = new_state(processing.id)
            state.webhook = webhook
            state.measured = request is not None
            limit = timeout if timeout is not None else self.policy.job_timeout
            state.deadline = None if limit is None else state.submitted_at + limit
            state.probe = self._probe_next()
            self._jobs[state.id] = state
            now = time.monotonic()
            if request is None and not processing.raw:
                # Attached by id: no answer was seen yet, so nothing is known of the job.
                self._schedule(state, self._plan(state, now))
            else:
                self._observe_processing(state, processing, now - self._round_trip / 2, now)
        return Job(state, request=request, poller=self)

    def _probe_next(self) -> bool:
        """Whether the job being tracked should be a probe (see :class:`PollPolicy`)."""
        explore = self.policy.explore_every
        if not explore:
            return False
        # A probe costs the fetches a normal job would have been spared: nearly one when jobs
        # are mostly done at their first fetch, little when most need a second anyway. While
        # the low end rests on few measurements, probe more.
        every = max(2, min(explore, round(explore * self._done_at_first)))
        low_samples = self.eta_model.low_samples
        if low_samples < _LOW_SAMPLES:
            every = min(every, max(2, explore // 4))
        elif low_samples >= 16:
            every *= 4  # the low end is well placed: probes only keep it fresh
        self._since_probe += 1
        if self._since_probe < every:
            return False
        self._since_probe = 0
        return True

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

    def next_finish(self) -> float | None:
        """When (``time.monotonic()``) the first of the pending jobs should be done, at the
        latest by what the poller knows; None when no pending job has an estimate."""
        windows = (self._window(state) for state in self._jobs.values())
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
        eta = answer.eta
        if eta is not None:
            # The fetch page's own example has no ETA: then the last one given still holds.
            state.eta = eta
            if eta <= 0:
                state.zero_at = at  # the service expects it done by now
            else:
                state.zero_at = None
                if state.anchors:
                    # The ETA fell by (previous - eta) while (at - then) passed: if it is off by
                    # a steady factor, that factor shows. Rough, but it spares a new client the
                    # blind polling of its first jobs.
                    then, previous = state.anchors[-1]
                    if previous - eta > 0.3 * previous:
                        self.eta_model.observe_trend((at - then) / (previous - eta))
                state.anchors.append((at, eta))
        self._reschedule(state, self._plan(state, now), now)

    def _window(self, state: JobState) -> tuple[float, float] | None:
        """When the job should finish, ``(earliest, latest)``, or None when nothing says."""
        if state.zero_at is not None:
            return state.zero_at, state.zero_at
        if state.anchors:
            rho_lo, rho_hi = self.eta_model.bounds()
            at, eta = state.anchors[-1]
            earliest, latest = at + eta * rho_lo, at + eta * rho_hi
            # Each ETA places the finish on its own, with noise of its own: together they
            # place it more closely. If they disagree, the model is off: trust the last.
            for at, eta in state.anchors[:-1]:
                earliest = max(earliest, at + eta * rho_lo)
                latest = min(latest, at + eta * rho_hi)
            if earliest > latest:
                at, eta = state.anchors[-1]
                return at + eta * rho_lo, at + eta * rho_hi
            return earliest, latest
        if state.measured:
            durations = self.durations.bounds()
            if durations is not None:
                return state.submitted_at + durations[0], state.submitted_at + durations[1]
        return None

    def _plan(self, state: JobState, now: float) -> float:
        """When to fetch a job that is not done at ``now``."""
        policy = self.policy
        window = self._window(state)
        if window is not None and now < window[1]:
            state.overdue = 0
            earliest, latest = window
            if state.probe and state.fetches == 0 and self.eta_model.samples > 0:
                # An exploring job asks well before the earliest plausible finish (the model's
                # low end may be too high): the model needs both sides.
                wait = _backoff.probe_wait(now, earliest)
            else:
                # The service looks at the job half a round trip after the request leaves.
                wait = _backoff.in_window(
                    now,
                    earliest,
                    latest,
                    started=state.submitted_at,
                    budget=policy.delay_budget,
                    lead=self._round_trip / 2,
                )
        else:
            wait = self._backoff(state, now, known=window is not None, step=state.overdue)
            state.overdue += 1
        if state.webhook:
            wait *= policy.webhook_slowdown
        return now + wait

    def _replan(self) -> None:
        """The ETA model changed: move the next fetch of every job waiting on an estimate.
        While a new client learns, this is what lets the jobs it already has benefit."""
        now = time.monotonic()
        for state in self._jobs.values():
            if state.due == float("inf") or state.due <= now or state.overdue or state.nudged:
                continue  # in flight, due anyway, or past every estimate already
            window = self._window(state)
            if window is None:
                continue
            due = self._plan(state, now) if now < window[1] else now
            self._reschedule(state, due, now)

    def _backoff(self, state: JobState, now: float, *, known: bool, step: int) -> float:
        """The wait before asking again about a job past every estimate (``known``) or with
        none: a share of its age, growing with ``step`` (answers or failures in a row)."""
        policy = self.policy
        widest = max(0.0, policy.backoff_factor - 1.0)
        if not known and step == 0 and policy.initial_interval is not None:
            return policy.initial_interval
        # Just past an estimate, the job is most likely about to finish: the delay budget
        # holds; the longer it overruns, the less the estimate says, up to a blind back-off.
        share = widest
        if known:
            share = _backoff.exponential(
                step,
                base=policy.delay_budget,
                factor=policy.backoff_factor,
                cap=widest,
                jitter=None,
            )
        return _backoff.share_of_age(now - state.submitted_at, share, cap=policy.max_interval)

    def _expected_duration(self, state: JobState) -> float | None:
        window = self._window(state)
        return None if window is None else max(0.0, window[1] - state.submitted_at)

    def _learn(self, state: JobState, finished_by: float) -> None:
        """Teach the models what the job showed, now that it finished by ``finished_by``
        (and after ``state.last_processing``, the last "not yet")."""
        if state.last_processing is None or state.first_fetch is None:
            return
        seen = FinishedJob(
            anchors=tuple(state.anchors),
            first_fetch=state.first_fetch,
            after=state.last_processing,
            by=finished_by,
            probe=state.probe,
            early=state.first_unbiased,
        )
        if not state.probe and state.anchors:
            done_at_first = float(state.fetches == 1)
            self._done_at_first += 0.1 * (done_at_first - self._done_at_first)
            at, eta = state.anchors[0]
            expected = self.eta_model.share_below((state.first_fetch - at) / eta)
            if expected is not None:
                # More jobs done at their first fetch than the unbiased measurements foresee:
                # those are few and may sit too high, and results then wait past their
                # budget. Probe to find out.
                self._surprise += 0.2 * (done_at_first - expected - self._surprise)
                if self._surprise > 0.15:
                    self._surprise = 0.0
                    self._since_probe = self.policy.explore_every
        elif state.probe and state.fetches == 1:
            # A probe that came too late (the job was done): the model's low end is too
            # high, and results wait past their budget. Probe again at once.
            self._since_probe = self.policy.explore_every
        before = self.eta_model.bounds()
        self.eta_model.observe_job(seen)
        after = self.eta_model.bounds()
        if max(abs(a - b) for a, b in zip(before, after, strict=True)) > 0.005 * after[1]:
            self._replan()
        if state.measured:
            earliest, latest = seen.finish(self.eta_model.bounds())
            self.durations.observe((earliest + latest) / 2 - state.submitted_at, latest - earliest)

    # --- completion ---------------------------------------------------------------------------

    def _finish(
        self, state: JobState, result: GenerationResult | None, error: BaseException | None
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

    def _retry_later(self, state: JobState, now: float, retry_after: float | None = None) -> None:
        """Ask again after a fetch that told nothing about the job (it failed, or its answer
        fits no rule): back off relative to the job, or as long as the service asked."""
        state.failures += 1
        wait = self._backoff(
            state, now, known=self._window(state) is not None, step=state.failures - 1
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
        expected = self._expected_duration(state) or 0.0
        horizon = self.policy.not_found_grace * max(expected, state.puzzled_age)
        if state.puzzled >= _NOT_FOUND_TRIES and age >= horizon:
            return False
        wait = self._backoff(state, now, known=False, step=state.puzzled)
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
            state.first_unbiased = bool(state.anchors) and self.eta_model.at_prior
        state.fetches += 1
        self.fetch_calls += 1
        try:
            answer = await self._fetch(state.id, state.fetch_url)
        except (TransportError, ServerError, RateLimitError) as error:
            # Fetching is idempotent and the transport already retried: the job itself is
            # fine, so try again later rather than fail it.
            logger.info("fetch of job %s failed (%s); trying again later", state.id, error)
            self._retry_later(state, time.monotonic(), getattr(error, "retry_after", None))
            return
        except GenerationFailed as error:
            error.job_id = error.job_id or state.id
            self._finish(state, None, error)
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
        self._round_trip += 0.2 * (received - now - self._round_trip)
        state.failures = state.puzzled = 0
        state.puzzled_age = None
        if isinstance(answer, Processing):
            self._observe_processing(state, answer, at, received)
            return
        self._learn(state, at)
        if answer.id is None:
            answer = attrs.evolve(answer, id=state.id)
        if not answer.meta and state.meta:
            # The v3/v4 fetch answer is {status, id, output}: the seed and the rest of what ran
            # were in the processing answers. generation_time is left as the service gave it:
            # the client measures submission to fetch, queue wait included, not the generation.
            answer = attrs.evolve(answer, meta=state.meta)
        self._finish(state, answer, None)

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
