"""How far to trust the service's ETA: a small model learned from the jobs this client saw.

The service's ``eta`` is only a hint: it may be consistently high or low, and noisy. For every
finished job that was seen "processing" more than once, the poller can place its real finish
closely (the last, short ETA pins it down; the success answer bounds it), so each earlier ETA
yields one measurement of ``rho = real time left / eta``. The model keeps the recent ones and
offers the range of ``rho`` it expects: :meth:`EtaModel.bounds`.
"""

from __future__ import annotations

import statistics
from collections import deque

__all__ = ["EtaModel"]


class EtaModel:
    """The learned range of ``rho`` (real time left divided by the ETA the service gave).

    Measurements come from jobs that needed more than one fetch, and those are the slower ones:
    a job done at its first fetch yields none. That would bias the low end upward, so the low
    end is taken from *probes* only, jobs fetched early on purpose whatever their speed.
    """

    def __init__(
        self,
        *,
        prior: tuple[float, float] = (0.5, 1.5),
        window: int = 64,
        min_samples: int = 6,
        max_width: float = 0.25,
    ) -> None:
        self._prior = prior
        self._samples: deque[float] = deque(maxlen=window)
        self._probes: deque[float] = deque(maxlen=window // 2)
        self._widths: deque[float] = deque(maxlen=window)
        # Rough readings from how fast a pending job's ETA falls: used only until enough
        # finished jobs have been measured, so that a new client does not poll blindly.
        self._trends: deque[float] = deque(maxlen=16)
        self._min_samples = min_samples
        self._max_width = max_width
        self._cached: tuple[float, float] | None = None

    @property
    def samples(self) -> int:
        """How many informative measurements the model holds."""
        return len(self._samples)

    def observe(self, rho: float, uncertainty: float, *, probe: bool = False) -> None:
        """One measurement of ``rho``, known to within ``uncertainty`` (the width of the range
        it may lie in); ``probe`` when it comes from a job fetched early on purpose, whose
        speed did not decide whether it was measured. Loose measurements are dropped."""
        if rho <= 0 or uncertainty < 0 or uncertainty / rho > self._max_width:
            return
        self._samples.append(rho)
        self._widths.append(uncertainty)
        if probe:
            self._probes.append(rho)
        self._cached = None

    def observe_trend(self, rho: float) -> None:
        """A rough reading of ``rho`` from two ETAs of a job still pending (see the poller)."""
        if rho > 0:
            self._trends.append(rho)
            self._cached = None

    def bounds(self) -> tuple[float, float]:
        """``(earliest, latest)``: the range of ``rho`` a job is expected to fall in."""
        if len(self._samples) < self._min_samples:
            if len(self._trends) < 3:
                return self._prior
            # Each reading is off by the noise of two ETAs: keep a wide margin.
            lo, hi = min(self._trends), max(self._trends)
            return (max(0.0, lo * 0.85, self._prior[0] * lo), hi * 1.15)
        if self._cached is None:
            ordered = sorted(self._samples)
            low_side = sorted(self._probes) if len(self._probes) >= 3 else ordered
            # Samples are midpoints of small ranges and a small sample understates the
            # spread: widen by the mean half-width and a share of the observed range.
            half_width = statistics.fmean(self._widths) / 2
            lo = low_side[int(0.05 * (len(low_side) - 1))]
            hi = ordered[round(0.95 * (len(ordered) - 1))]
            # The low end only sets the earliest fetch, whose delay budget already absorbs
            # a little error; the high end decides success at the first try: pad it more.
            pad = half_width + 0.1 * max(0.0, hi - lo)
            self._cached = (max(0.0, lo - half_width), hi + pad)
        return self._cached
