"""How far to trust the service's ETA: a small model learned from the jobs this client saw.

The service's ``eta`` is only a hint: it may be consistently high or low, and noisy. Each finished
job that was seen "processing" after its first ETA places its real finish closely (the last
"processing" answer and the success answer bound it, and the last, short ETA narrows that), so
each earlier ETA yields one measurement of ``rho = real time left / eta``. The model keeps the
recent jobs as observed and offers the range of ``rho`` it expects: :meth:`EtaModel.bounds`.

The measurements depend on the model (the last ETA narrows the finish by the model's range), so
they are recomputed from the raw observations whenever the model changes: a new client's first,
loosely placed jobs gain precision as the model does, instead of widening it for good.
"""

from __future__ import annotations

import bisect
import statistics
from collections import deque
from collections.abc import Iterator

import attrs

__all__ = ["DurationModel", "EtaModel", "FinishedJob"]


@attrs.frozen
class FinishedJob:
    """What the poller saw of one finished job, in ``time.monotonic()`` seconds."""

    #: (when, eta) of each answer that gave an ETA above 0, oldest first.
    anchors: tuple[tuple[float, float], ...]
    #: When it was first fetched.
    first_fetch: float
    #: The last time the service said "processing", and when it was seen done.
    after: float
    by: float
    #: Fetched early on purpose (see :class:`EtaModel`).
    probe: bool = False
    #: First fetched before it could possibly be done, whatever its speed: a probe, or a job
    #: of a new client whose model knew nothing yet. Its measurement is unbiased.
    early: bool = False

    def finish(self, bounds: tuple[float, float]) -> tuple[float, float]:
        """Where the real finish lies, ``(earliest, latest)``: between the last "processing"
        and the success, narrowed by where the last ETA puts it (if ``bounds`` agree)."""
        earliest, latest = self.after, self.by
        if len(self.anchors) >= 2:
            at, eta = self.anchors[-1]
            narrow = max(earliest, at + eta * bounds[0]), min(latest, at + eta * bounds[1])
            if narrow[0] <= narrow[1]:
                earliest, latest = narrow
        return earliest, latest


@attrs.frozen
class _Sample:
    rho: float
    width: float
    #: Its job was fetched, the first time, before it could possibly be done: whatever its
    #: speed, it was going to be measured.
    unbiased: bool


def _extreme(samples: list[_Sample], *, high: bool) -> tuple[float, int, float]:
    """The 95% (or 5%) quantile of the measurements, their count and their median half-width.
    The measurements are midpoints of their ranges: the errors of the midpoints already spread
    the extremes, so the widths are not added to them."""
    ordered = sorted(s.rho for s in samples)
    n = len(ordered)
    value = ordered[round(0.95 * (n - 1))] if high else ordered[int(0.05 * (n - 1))]
    return value, n, statistics.median(s.width for s in samples) / 2


class EtaModel:
    """The learned range of ``rho`` (real time left divided by the ETA the service gave).

    Measurements come from jobs that needed more than one fetch, and those are the slower ones:
    a job done at its first fetch yields none. That would bias the low end upward, so the low
    end is taken from jobs first fetched before they could be done (a new client's first jobs,
    fetched before the model knew anything, and *probes*: jobs fetched early on purpose).
    Deciding that from the model itself would feed on itself: a low end placed too high would
    count slow jobs as unbiased, and rise further.
    """

    def __init__(
        self,
        *,
        prior: tuple[float, float] = (0.5, 1.5),
        window: int = 64,
        min_samples: int = 4,
        max_width: float = 0.25,
        precise_width: float = 0.02,
        low_pad: float = 0.75,
    ) -> None:
        self._prior = prior
        self._jobs: deque[FinishedJob] = deque(maxlen=window)
        # Jobs fetched before they could be done are rarer (probes, a new client's first
        # jobs) and alone say where the low end is: kept apart, so that the common ones do
        # not push them out.
        self._early: deque[FinishedJob] = deque(maxlen=window // 2)
        # Rough readings from how fast a pending job's ETA falls: used only until enough
        # finished jobs have been measured, so that a new client does not poll blindly.
        self._trends: deque[float] = deque(maxlen=16)
        self._min_samples = min_samples
        self._max_width = max_width
        self._precise_width = precise_width
        self._low_pad = low_pad
        self._cached: tuple[float, float] | None = None
        self._last: tuple[float, float] | None = None
        self._samples = 0
        self._low_samples = 0
        self._unbiased: list[float] = []

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

    @property
    def at_prior(self) -> bool:
        """True while the model knows nothing: its range is the prior's."""
        return self.bounds() == self._prior and self._samples == 0

    def share_below(self, rho: float) -> float | None:
        """The share of unbiased measurements below ``rho``: how many jobs the model expects
        done by then (None with fewer than three)."""
        self.bounds()
        if len(self._unbiased) < 3:
            return None
        return bisect.bisect_right(self._unbiased, rho) / len(self._unbiased)

    def observe_job(self, job: FinishedJob) -> None:
        """A finished job, as the poller saw it."""
        if not job.anchors:
            return
        if job.early or job.probe:
            self._early.append(job)
        else:
            self._jobs.append(job)
        self._cached = None

    def observe_trend(self, rho: float) -> None:
        """A rough reading of ``rho`` from two ETAs of a job still pending (see the poller)."""
        if rho > 0:
            self._trends.append(rho)
            self._cached = None

    def _fallback(self) -> tuple[float, float]:
        if len(self._trends) < 4:
            return self._prior
        # Each reading is off by the noise of two ETAs, and noisy ETAs make readings that
        # scatter. Readings that disagree widely say little, and a few of them placed close
        # together by chance would narrow the range wrongly: keep the prior then. Else keep a
        # margin of half their spread above, their whole spread below (a low end placed too
        # high keeps results waiting past their budget), and at least 8% either way.
        lo, hi = min(self._trends), max(self._trends)
        if hi - lo > 0.4 * hi:
            return self._prior
        above = max(0.5 * (hi - lo), 0.08 * hi)
        below = max(hi - lo, 0.08 * hi)
        return (max(self._prior[0] * lo, lo - below), hi + above)

    def _measure(self, bounds: tuple[float, float]) -> Iterator[_Sample]:
        for job in (*self._early, *self._jobs):
            anchors = job.anchors
            if len(anchors) == 1 and job.probe and job.after <= anchors[0][0]:
                # A probe found done at its first fetch: it was faster than the model's low
                # end, which must come down at least to this.
                at, eta = anchors[0]
                yield _Sample((job.by - at) / eta, 0.0, True)
                continue
            earliest, latest = job.finish(bounds)
            finished = (earliest + latest) / 2
            for n, (at, eta) in enumerate(anchors if len(anchors) == 1 else anchors[:-1]):
                rho = (finished - at) / eta
                width = (latest - earliest) / eta
                if rho > 0 and width <= self._max_width * rho:
                    yield _Sample(rho, width, n == 0 and (job.early or job.probe))

    def _estimate(self, bounds: tuple[float, float]) -> tuple[tuple[float, float] | None, int, int]:
        samples = list(self._measure(bounds))
        # Once enough precise measurements are in, the loose ones say nothing more.
        precise = [s for s in samples if s.width <= self._precise_width * s.rho]
        used = precise if len(precise) >= self._min_samples else samples
        if len(used) < self._min_samples:
            return None, 0, 0
        hi, count, _ = _extreme(used, high=True)
        # The low end from the unbiased measurements (there are few): the precise ones, or
        # all, whichever places it more closely; from the biased ones only when there is
        # nothing else. A sample of n falls short of the extreme by about 1/(n+1) of the range.
        pools = [
            pool
            for pool in ([s for s in used if s.unbiased], [s for s in samples if s.unbiased])
            if len(pool) >= 3
        ]
        lows = [_extreme(pool, high=False) for pool in pools] or [_extreme(used, high=False)]
        # Judged on a common range, or the pool whose low end is highest would look best.
        common = hi - min(low[0] for low in lows)
        lo, low_count, _ = min(lows, key=lambda low: common / (low[1] + 1) + low[2])
        self._unbiased = sorted(s.rho for s in samples if s.unbiased)
        spread = max(0.0, hi - lo)
        return (
            # The low end is drawn from fewer, and placed too high it keeps results waiting
            # past their budget: half as much again.
            (
                max(0.0, lo - self._low_pad * (1 + 3 * spread / hi) * spread / (low_count + 1)),
                hi + spread / (count + 1),
            ),
            len(used),
            max((len(pool) for pool in pools), default=0),
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
