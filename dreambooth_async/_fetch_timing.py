"""When to fetch each pending job, and what each finished job teaches the models behind that.

Nothing here knows what "fast" is: every wait is a share of the job's own time, so the same
policy serves a half-second turbo job and a five-minute one. What the planner knows of a job is a
*window* in which it should finish: from the service's latest ETA, corrected by what the client
learned about those ETAs (:mod:`._eta`), or, without an ETA, from the durations measured on this
client's finished jobs. Inside the window it fetches at the latest moment the job may finish,
unless that would leave the result waiting more than ``delay_budget`` of the job's duration past
the earliest moment; then it fetches at that earliest moment plus the allowed delay and lets the
answer (a fresher, tighter ETA, or only "not yet") decide the next fetch. Past the window, or with
nothing to go on, it waits a share of the job's age that grows with every answer still saying
"processing". The arithmetic of each wait is in :mod:`._backoff`; the one absolute number, a
politeness floor between two fetches of a job, is applied by the poller.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs

from . import _backoff
from ._eta import DurationModel, EtaModel, FinishedJob
from ._job import JobState

__all__ = ["FetchPlanner", "PollPolicy"]

#: Below this many unbiased measurements of the ETA's low end, the poller probes more often.
_LOW_SAMPLES = 4
#: From this many, the low end is well placed: probes only keep it fresh, and are rarer.
_WELL_PLACED = 8


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
    #: The least time, in seconds, between two reads of the account's count of jobs
    #: (``request_count``) while callers wait for a slot of a key found full: the service
    #: allows 30 a minute per key, for every process on it (a process whose reads the others
    #: used up probes for room by submission until it may read again).
    account_read_interval: float = attrs.field(default=2.0, validator=attrs.validators.gt(0))

    def scaled(self, factor: float) -> PollPolicy:
        """The same policy for a service whose clock runs ``factor`` times real time (an
        emulator with ``time_scale=factor``). The pacing is relative and needs no scaling; this
        scales the absolute settings (the floor, the ceiling, the job timeout, the account's
        read interval)."""
        return attrs.evolve(
            self,
            min_interval=self.min_interval * factor,
            initial_interval=None
            if self.initial_interval is None
            else self.initial_interval * factor,
            max_interval=self.max_interval * factor,
            job_timeout=None if self.job_timeout is None else self.job_timeout * factor,
            account_read_interval=self.account_read_interval * factor,
        )


class FetchPlanner:
    """The pacing of one poller's jobs: the ETA and duration models, the fetch round trip, and
    which jobs are probes. ``on_model_moved`` is called when what was learned moves the ETA
    model enough that jobs waiting on an estimate should be planned again."""

    def __init__(self, policy: PollPolicy, on_model_moved: Callable[[], None]) -> None:
        self.policy = policy
        self._on_model_moved = on_model_moved
        self.eta_model = EtaModel()
        #: How long this client's jobs took, submission to finish: the time scale of a job
        #: whose answers carry no ETA, and of the batch's waits.
        self.durations = DurationModel()
        #: The round trip of a fetch (an average that forgets): the service looks at a job
        #: about half of it after the request leaves, and its ETA was that old on arrival.
        self.round_trip = 0.0
        self._since_probe = 0
        self._surprise = 0.0
        #: The share of recent jobs done at their first fetch (an average that forgets).
        self._done_at_first = 1.0

    def observe_round_trip(self, seconds: float) -> None:
        """A fetch took ``seconds``, request to answer."""
        self.round_trip += 0.2 * (seconds - self.round_trip)

    def probe_next(self) -> bool:
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
        elif low_samples >= _WELL_PLACED:
            every *= 4  # the low end is well placed: probes only keep it fresh
        self._since_probe += 1
        if self._since_probe < every:
            return False
        self._since_probe = 0
        return True

    def _is_probe(self, state: JobState) -> bool:
        """Whether a job not fetched yet is a probe, decided when it is first planned on
        finished jobs' measurements: before that every job is fetched on the prior or the
        trends, early enough to be measured whatever its speed, and a probe would cost a
        fetch for nothing. Deciding then, not when the job was tracked, also counts the
        measurements that arrived in between."""
        if self.eta_model.samples == 0:
            return False
        if state.probe is None:
            state.probe = self.probe_next()
        return state.probe

    def observe_eta(self, state: JobState, eta: float, at: float) -> None:
        """The service gave ``eta`` for the job at about ``at``: the job's window moves, and
        the fall of the ETA since the previous one teaches the model."""
        state.eta = eta
        if eta <= 0:
            state.zero_at = at  # the service expects it done by now
        else:
            state.zero_at = None
            if state.anchors:
                # The ETA fell by (previous - eta) while (at - then) passed: if it is off by
                # a steady factor, that factor shows. Rough, but it spares a new client the
                # blind polling of its first jobs. The jobs already pending are planned again
                # when it moves the model: with many jobs in flight, most were planned on the
                # prior alone and would each be fetched early.
                then, previous = state.anchors[-1]
                if previous - eta > 0.3 * previous:
                    before = self.eta_model.bounds()
                    self.eta_model.observe_trend(
                        (at - then) / (previous - eta),
                        math.hypot(previous, eta) / (previous - eta),
                    )
                    self._moved(before)
            state.anchors.append((at, eta))

    def window(self, state: JobState) -> tuple[float, float] | None:
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

    def plan(self, state: JobState, now: float) -> float:
        """When to fetch a job that is not done at ``now``."""
        policy = self.policy
        window = self.window(state)
        if window is not None and now < window[1]:
            state.overdue = 0
            earliest, latest = window
            if state.fetches == 0 and self._is_probe(state):
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
                    pending_at=state.last_processing
                    if state.last_processing is not None
                    else state.submitted_at,
                    budget=policy.delay_budget,
                    lead=self.round_trip / 2,
                )
        elif window is None:
            wait = self.backoff(state, now, known=False, step=state.overdue)
            state.overdue += 1
        else:
            # The first time, the window closed since the last answer (its ETA was about to
            # run out): the job is most likely done this instant, and a share of its age
            # would all be delay. Past that, the job overruns its estimates.
            state.overdue += 1
            wait = (
                0.0
                if state.overdue == 1
                else self.backoff(state, now, known=True, step=state.overdue - 2)
            )
        if state.webhook:
            wait *= policy.webhook_slowdown
        return now + wait

    def backoff(self, state: JobState, now: float, *, known: bool, step: int) -> float:
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

    def _moved(self, before: tuple[float, float]) -> None:
        """Replan the pending jobs if the model's range moved from ``before`` enough to matter."""
        after = self.eta_model.bounds()
        if max(abs(a - b) for a, b in zip(before, after, strict=True)) > 0.005 * after[1]:
            self._on_model_moved()

    def expected_duration(self, state: JobState) -> float | None:
        window = self.window(state)
        return None if window is None else max(0.0, window[1] - state.submitted_at)

    def learn(
        self, state: JobState, finished_by: float, *, generation_time: float | None = None
    ) -> None:
        """Teach the models what the job showed, now that it finished by ``finished_by``
        (and after ``state.last_processing``, the last "not yet"). ``generation_time``: how
        long the service says the job ran (its ``generationTime``), if it said."""
        if state.last_processing is None or state.first_fetch is None:
            return
        # Only a job this client submitted has a known start to count the generation from.
        ran = (
            generation_time
            if state.measured and generation_time is not None and 0 < generation_time < math.inf
            else None
        )
        seen = FinishedJob(
            anchors=tuple(state.anchors),
            after=state.last_processing,
            by=finished_by,
            probe=bool(state.probe),
            early=state.first_unbiased,
            reported=None if ran is None else state.submitted_at + ran,
            generation_time=ran,
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
        self._moved(before)
        if state.measured:
            earliest, latest = seen.finish(self.eta_model.bounds())
            self.durations.observe((earliest + latest) / 2 - state.submitted_at, latest - earliest)
