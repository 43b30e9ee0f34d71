"""How far to trust the service's ETA: a small model learned from the jobs this client saw.

The service's ``eta`` is only a hint: it may be consistently high or low, and noisy. Each ETA
relates to the job's real finish by ``rho = real time left / eta``, and the model offers the
range of ``rho`` it expects: :meth:`EtaModel.bounds`. A finished job tells, for each ETA it was
given, either ``rho`` closely (the job was still running at the next fetch, and later answers
place its finish) or only a bound (the next fetch found it done: it was at least that fast).
Both kinds go into one Kaplan-Meier estimate, so that the fast jobs a fetch came too late to
measure are counted rather than dropped; no fetch was ever timed by the job's own speed, only
by its ETA and what other jobs showed, which is what makes that sound.

The measurements depend on the model (the last ETA narrows the finish by the model's range), so
they are recomputed from the raw observations whenever the model changes, and a finish is
narrowed so only when the last ETA was short beside the one measured: otherwise a model placed
wrong would place the measurements where it expects them, and keep itself. Until enough jobs
have finished, how fast pending jobs' ETAs fall gives a rough range.

The success answer says how long the job ran (``generationTime``). Counted from the submission,
that places the finish of every job, those found done at a first fetch too, once recent jobs
show that it does so closely (the service ran them as it accepted them): then every ETA is
measured, not only bounded, and the low end rests on every job rather than on a few probes.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import deque
from collections.abc import Iterator

import attrs

__all__ = ["DurationModel", "EtaModel", "FinishedJob"]

#: A finish narrowed by the last ETA measures an earlier one only if the last is at most this
#: share of it.
_NARROWS = 0.3
#: The margin below the low end grows with the range's width beside its level up to this
#: width, and no more (see :meth:`EtaModel._estimate`).
_WIDE = 0.3
#: The service's generation time places finishes once this many recent jobs bound its lag
#: (see :meth:`EtaModel._offset`), and only if those bounds place a job's finish to within this
#: share of its generation time; an ETA is measured against such a finish only if it is long
#: enough for the same share of it to hold the finish.
_MIN_OFFSETS = 4
_PLACED = 0.03
#: Of the jobs whose bounds put the lag above where the others' put it (they waited in a queue
#: first), this many are let off.
_LET_OFF = 1
#: The likely place rests on the two smallest delays and may be narrower than it should: an
#: ETA is measured against it only if this share of the sure uncertainty would do too.
_LIKELY = 0.5
#: The lag is put this many gaps below the smallest bound from above (the gap between the two
#: smallest): those bounds are the lag plus each job's delay, and the smallest delay among
#: some dozens of jobs is about as large as the gap between the two smallest.
_GAPS = 2.0
#: With ``_MANY`` measurements or more (the generation time measures every job), the low end
#: keeps this share of the range, over the square root of their number, below their 5% point:
#: about how far a sample's 5% point strays from the jobs' own.
_STRAY = 0.3
_MANY = 20


@attrs.frozen
class FinishedJob:
    """What the poller saw of one finished job, in ``time.monotonic()`` seconds."""

    #: (when, eta) of each answer that gave an ETA above 0, oldest first.
    anchors: tuple[tuple[float, float], ...]
    #: The last time the service said "processing", and when it was seen done.
    after: float
    by: float
    #: Fetched early on purpose (see :class:`EtaModel`).
    probe: bool = False
    #: First fetched before it could possibly be done, whatever its speed: a probe, or a job
    #: of a new client whose model knew nothing yet. Its measurement is unbiased.
    early: bool = False
    #: Where the service's ``generationTime`` puts the finish (the submission answer plus that
    #: time), and that time; None when the answer gave none or the job was attached by id.
    reported: float | None = None
    generation_time: float | None = None

    def finish(self, bounds: tuple[float, float]) -> tuple[float, float]:
        """Where the real finish lies, ``(earliest, latest)``: between the last "processing"
        and the success, narrowed by where the last ETA puts it under ``bounds``. Where that
        misses the two answers altogether, the model is off for this job: the finish is put
        at the edge nearest to it (as closely as the model places any), so that the job pulls
        the model its way instead of being left out, which would let a wrong model keep
        itself."""
        earliest, latest = self.after, self.by
        if len(self.anchors) >= 2:
            at, eta = self.anchors[-1]
            low, high = at + eta * bounds[0], at + eta * bounds[1]
            width = high - low
            if high < earliest:
                low, high = earliest, earliest + width
            elif low > latest:
                low, high = latest - width, latest
            earliest, latest = max(earliest, low), min(latest, high)
        return earliest, latest


@attrs.frozen
class _Sample:
    rho: float
    #: The job was already done at the next fetch: ``rho`` is only an upper bound.
    censored: bool = False


@attrs.frozen
class _Distribution:
    """The share of jobs at or below each measured ``rho``, ascending: a Kaplan-Meier estimate
    over measurements some of which are only upper bounds (jobs done at their first fetch).

    Which jobs get measured depends on their speed: a job still running at its first fetch is
    measured closely, one already done only bounded (it was faster than that). Dropping the
    bounded ones would leave the slow ones and place both ends too high; the estimate instead
    spreads each bounded job over the measurements below its bound. That is sound because no
    job's first fetch depended on its own speed, only on its ETA and on what other jobs showed.
    """

    #: (rho, share of jobs at or below it), ascending.
    steps: tuple[tuple[float, float], ...]
    #: The share of jobs below every measurement (bounded ones the measurements do not reach).
    below: float
    #: The smallest value seen, measurement or bound.
    floor: float

    @classmethod
    def of(cls, samples: list[_Sample]) -> _Distribution:
        bounds = sorted(s.rho for s in samples if s.censored)
        exact = sorted(s.rho for s in samples if not s.censored)
        steps: list[tuple[float, float]] = []
        at_or_below = 1.0
        for index in range(len(exact) - 1, -1, -1):
            value = exact[index]
            steps.append((value, at_or_below))
            # Still to place at or below this value: the measurements there and the bounds.
            at_risk = index + 1 + bisect.bisect_right(bounds, value)
            at_or_below *= 1 - 1 / at_risk
        steps.reverse()
        return cls(tuple(steps), at_or_below, min(s.rho for s in samples))

    def quantile(self, share: float) -> float | None:
        """The smallest measurement with at least ``share`` of the jobs at or below it; None
        when jobs only bounded from above (done at a first fetch, with nothing measured
        below them) hold that share: how much faster they were, nothing here says."""
        if self.below >= share:
            return None
        for value, at_or_below in self.steps:
            if at_or_below >= share:
                return value
        return self.steps[-1][0]

    def share_at_or_below(self, rho: float) -> float:
        index = bisect.bisect_right([value for value, _ in self.steps], rho)
        return self.steps[index - 1][1] if index else self.below * (rho >= self.floor)


class EtaModel:
    """The learned range of ``rho`` (real time left divided by the ETA the service gave).

    Close measurements come from jobs still running at their first fetch, the slower ones; the
    faster ones give only bounds. How far below those bounds the fastest jobs are, only jobs
    first fetched before they could be done say: a new client's first jobs (fetched while the
    model knew nothing of finished jobs) and *probes*, jobs the poller fetches early on
    purpose. :attr:`low_samples` counts those the low end rests on.
    """

    def __init__(
        self,
        *,
        prior: tuple[float, float] = (0.5, 1.5),
        window: int = 64,
        min_samples: int = 4,
        max_width: float = 0.25,
        low_pad: float = 5.0,
    ) -> None:
        self._prior = prior
        self._jobs: deque[FinishedJob] = deque(maxlen=window)
        # Jobs fetched before they could be done are rarer (probes, a new client's first
        # jobs) and alone say where the low end is: kept apart, so that the common ones do
        # not push them out.
        self._early: deque[FinishedJob] = deque(maxlen=window // 2)
        # Rough readings from how fast a pending job's ETA falls: used only until enough
        # finished jobs have been measured, so that a new client does not poll blindly.
        self._trends: deque[tuple[float, float]] = deque(maxlen=16)
        # For each recent job, how far its finish lay from where the service's generation
        # time put it, (at least, at most) seconds: see :meth:`_offset`.
        self._offsets: deque[tuple[float, float]] = deque(maxlen=window)
        self._min_samples = min_samples
        self._max_width = max_width
        self._low_pad = low_pad
        self._cached: tuple[float, float] | None = None
        self._last: tuple[float, float] | None = None
        self._samples = 0
        self._low_samples = 0
        self._distribution: _Distribution | None = None

    @property
    def samples(self) -> int:
        """How many measurements the current range rests on (0: the prior or the trends)."""
        self.bounds()
        return self._samples

    @property
    def low_samples(self) -> int:
        """How many unbiased measurements its low end rests on (few: the poller probes more)."""
        self.bounds()
        return self._low_samples

    def share_below(self, rho: float) -> float | None:
        """The share of jobs the model expects done by ``rho`` of their ETA (None while fewer
        than three measurements place the low end)."""
        self.bounds()
        if self._distribution is None or self._low_samples < 3:
            return None
        return self._distribution.share_at_or_below(rho)

    def observe_job(self, job: FinishedJob) -> None:
        """A finished job, as the poller saw it."""
        if not job.anchors:
            return
        if job.early or job.probe:
            self._early.append(job)
        else:
            self._jobs.append(job)
        if job.reported is not None:
            self._offsets.append((job.after - job.reported, job.by - job.reported))
        self._cached = None

    def observe_trend(self, rho: float, spread: float = 1.0) -> None:
        """A rough reading of ``rho`` from two ETAs of a job still pending (see the poller).
        ``spread``: how many times the noise of one ETA the reading's error is (it depends on
        how far the ETA fell: a small fall between two noisy ETAs says little)."""
        if rho > 0 and spread > 0:
            self._trends.append((rho, spread))
            self._cached = None

    def _fallback(self) -> tuple[float, float]:
        if len(self._trends) < 4:
            return self._prior
        # Each reading is off by the noise of two ETAs, amplified by its own ``spread``: the
        # readings, so weighed, give the centre and, from how they scatter, the noise of one
        # ETA, which is also how far ``rho`` itself spreads. The range covers that spread and
        # the centre's own uncertainty, more of it below (a low end placed too high keeps
        # results waiting past their budget). Readings that scatter widely say little: keep
        # the prior then.
        weights = [1 / spread**2 for _, spread in self._trends]
        total = sum(weights)
        centre = sum(w * rho for w, (rho, _) in zip(weights, self._trends, strict=True)) / total
        n = len(self._trends)
        noise = math.sqrt(
            sum(((rho / centre - 1) / spread) ** 2 for rho, spread in self._trends) / (n - 1)
        )
        # A few readings may agree by chance: take the noise as large as they allow (the
        # upper end of its 80% confidence interval, by Wilson and Hilferty's approximation
        # of the chi-square quantile).
        k = n - 1
        chi2 = k * (1 - 2 / (9 * k) - 1.2816 * math.sqrt(2 / (9 * k))) ** 3
        noise *= math.sqrt(k / max(chi2, 0.1))
        uncertain = noise + noise / math.sqrt(total)
        if uncertain > 0.3:
            return self._prior
        uncertain = max(uncertain, 0.04)
        return (
            max(self._prior[0] * centre, centre * (1 - 2.5 * uncertain)),
            centre * (1 + 2.0 * uncertain),
        )

    def _offset(self) -> tuple[float, float, float] | None:
        """The lag from where the service's generation time puts a finish (the submission
        answer plus ``generationTime``) to the real finish, in seconds: ``(surely at least,
        likely at least, at most)``; None until recent jobs agree on it.

        While the service runs a job as soon as it accepts it, that lag is the same for every
        job (the submission's answer left a little after the job started), and each finished
        job bounds it: the job finished after its last "processing" and by the answer that
        showed it done. Pinned down so, the generation time places every finish, those of jobs
        a first fetch found done too, which otherwise only bound how fast a job was: the low
        end is then measured on every job rather than on a few probes. A job that waited in a
        queue finished later than its generation time says, so its lower bound on the lag
        sits above the others' upper bounds: one such job is let off; with more, the
        generation time places nothing."""
        if len(self._offsets) < _MIN_OFFSETS:
            return None
        first, second = sorted(high for _, high in self._offsets)[:2]
        lows = [low for low, _ in self._offsets]
        consistent = [low for low in lows if low <= first]
        if len(lows) - len(consistent) > _LET_OFF:
            return None
        at_least = max(consistent, default=-math.inf)
        # The bounds say the lag is between ``at_least`` and ``first``; the smallest delays
        # say where in between it likely is.
        return at_least, max(at_least, first - _GAPS * (second - first)), first

    def _placed(
        self, job: FinishedJob, offset: tuple[float, float, float] | None
    ) -> tuple[float, float, float] | None:
        """Where the generation time puts ``job``'s finish, if closely (see :meth:`_offset`)
        and consistently with what the poller saw of the job: ``(likely earliest, latest,
        how far it may surely be off)``."""
        if offset is None or job.reported is None or job.generation_time is None:
            return None
        surely, likely, latest = (job.reported + lag for lag in offset)
        off = latest - surely
        if off > _PLACED * job.generation_time:
            return None
        earliest, latest = max(likely, job.after), min(latest, job.by)
        return (earliest, latest, off) if earliest <= latest else None

    def _measure(self, bounds: tuple[float, float]) -> Iterator[_Sample]:
        offset = self._offset()
        for job in (*self._early, *self._jobs):
            anchors = job.anchors
            placed = self._placed(job, offset)
            if placed is not None:
                # The finish is known: every ETA the job was given is measured, the last too.
                low, high, off = placed
                for at, eta in anchors:
                    rho = ((low + high) / 2 - at) / eta
                    # A short ETA measured against an uncertain finish says little.
                    if rho > 0 and max(high - low, _LIKELY * off) <= _PLACED * eta:
                        yield _Sample(rho)
                continue
            # The fetch after the last ETA found the job done: of that ETA, only a bound.
            at, eta = anchors[-1]
            yield _Sample((job.by - at) / eta, censored=True)
            if len(anchors) == 1:
                continue
            # After each earlier one, it was still running: those are measured, as closely
            # as the finish is known.
            earliest, latest = job.finish(bounds)
            last_eta = anchors[-1][1]
            for at, eta in anchors[:-1]:
                # Narrowed by the last ETA under the model, the finish is only as good as the
                # model: fine when that ETA is short beside this one, circular when not (a
                # model placed wrong would place the measurements where it expects them, and
                # keep itself).
                if last_eta <= _NARROWS * eta:
                    low, high = earliest, latest
                else:
                    low, high = job.after, job.by
                rho = ((low + high) / 2 - at) / eta
                width = (high - low) / eta
                if rho > 0 and width <= self._max_width * rho:
                    yield _Sample(rho)

    def _estimate(self, bounds: tuple[float, float]) -> tuple[tuple[float, float] | None, int, int]:
        measured = list(self._measure(bounds))
        # Every measurement counts, the loose ones too (within ``max_width``): the few that
        # reach below where first fetches find jobs done are all that says how far down the
        # fastest jobs go, and leaving one out for being loose would leave that to a bound.
        used = [s for s in measured if not s.censored]
        if len(used) < self._min_samples:
            return None, 0, 0
        bounded = [s for s in measured if s.censored]
        distribution = _Distribution.of(used + bounded)
        top = distribution.quantile(0.95)
        hi = top if top is not None else max(s.rho for s in used)
        lo = distribution.quantile(0.05)
        if lo is None:
            # Jobs were done at their first fetch, and nothing measured is faster: how much
            # faster they were is unknown. At most their bound (only probes measure below).
            lo = distribution.floor
        # The low end rests on the measurements below where first fetches usually find jobs
        # done (few: a new client's first jobs and probes), and a sample of n falls short of
        # the extreme by about 1/(n+1) of the range: a margin of about that share, more for
        # a wide range, much less for a narrow one. In a wide one a low end placed too high
        # keeps results waiting past their budget; in a narrow one the first fetch lands near
        # the range's top, so every bit of margin sends that share of the jobs to a second
        # fetch, while a low end a little too high costs little delay. So the margin grows
        # with the range's width beside its level, up to ``_WIDE`` (1.5 times the share).
        # With many measurements that share is small, but a sample's 5% point still strays
        # from the jobs' own by some share of the range over the square root of their
        # number: at least that.
        cut = statistics.median(s.rho for s in bounded) if bounded else hi
        low_count = sum(s.rho <= cut for s in used)
        self._distribution = distribution
        spread = max(0.0, hi - lo)
        # One ETA far off (a job done long before its last ETA said) may bound a job very
        # low: that must not send every first fetch to the start of its job. Below the
        # prior's low end, only a measurement takes the range down.
        reach = min(self._prior[0], min(s.rho for s in used))
        return (
            (
                max(
                    reach,
                    lo
                    - max(
                        self._low_pad * min(spread / hi, _WIDE) * spread / (low_count + 1),
                        _STRAY * spread / math.sqrt(low_count + 1) if low_count >= _MANY else 0.0,
                    ),
                ),
                hi + spread / (len(used) + 1),
            ),
            len(used),
            low_count,
        )

    def bounds(self) -> tuple[float, float]:
        """``(earliest, latest)``: the range of ``rho`` a job is expected to fall in."""
        if self._cached is not None:
            return self._cached
        fallback = self._fallback()
        current = self._last or fallback
        estimate: tuple[float, float] | None = None
        count = low = 0
        # The measurements depend on the range and the range on them: a few rounds settle it.
        for _ in range(3):
            estimate, count, low = self._estimate(current)
            if estimate is None:
                break
            current = estimate
        self._samples, self._low_samples = count, low
        self._cached = estimate or fallback
        self._last = estimate
        return self._cached


class DurationModel:
    """How long this client's jobs took, from submission to finish: the time scale of a job
    whose answers carry no ETA. Only measurements known to within ``max_width`` of their value
    count; ``bounds`` is None until ``min_samples`` of them are in."""

    def __init__(self, *, window: int = 64, min_samples: int = 3, max_width: float = 0.25) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self._min_samples = min_samples
        self._max_width = max_width

    @property
    def samples(self) -> int:
        """How many measurements the model holds."""
        return len(self._samples)

    def observe(self, duration: float, uncertainty: float) -> None:
        """One job took ``duration`` seconds, known to within ``uncertainty``."""
        if duration > 0 and 0 <= uncertainty <= self._max_width * duration:
            self._samples.append(duration)

    def bounds(self) -> tuple[float, float] | None:
        """``(shortest, longest)`` a job is expected to take, widened for a small sample;
        None while too few jobs were measured."""
        if len(self._samples) < self._min_samples:
            return None
        ordered = sorted(self._samples)
        lo = ordered[int(0.05 * (len(ordered) - 1))]
        hi = ordered[round(0.95 * (len(ordered) - 1))]
        pad = 0.1 * (hi - lo) + 0.05 * hi
        return max(0.0, lo - pad), hi + pad

    def typical(self) -> float | None:
        """The median duration (None before any measurement)."""
        return statistics.median(self._samples) if self._samples else None
