"""How far to trust the service's ETA: a small model learned from the jobs this client saw.

The service's ``eta`` is only a hint: it may be consistently high or low, and noisy. For every
finished job the poller knows an interval in which it really finished (after the last
"processing" answer, no later than the success), so each ETA it was given yields bounds on
``rho = real time left / eta``. The model keeps the recent tight ones and offers the range of
``rho`` it expects: :meth:`EtaModel.bounds`.
"""

from __future__ import annotations

import statistics
from collections import deque

__all__ = ["EtaModel"]


class EtaModel:
    """The learned range of ``rho`` (real time left divided by the ETA the service gave)."""

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
        self._widths: deque[float] = deque(maxlen=window)
        self._min_samples = min_samples
        self._max_width = max_width
        self._cached: tuple[float, float] | None = None

    @property
    def samples(self) -> int:
        """How many informative observations the model holds."""
        return len(self._samples)

    def observe(self, low: float, high: float) -> None:
        """A job's ``rho`` lay in ``(low, high]``. Loose intervals teach nothing and are dropped."""
        if high <= 0 or low < 0 or high < low:
            return
        if (high - low) / high > self._max_width:
            return
        self._samples.append((low + high) / 2)
        self._widths.append(high - low)
        self._cached = None

    def bounds(self) -> tuple[float, float]:
        """``(earliest, latest)``: the range of ``rho`` a job is expected to fall in."""
        if len(self._samples) < self._min_samples:
            return self._prior
        if self._cached is None:
            ordered = sorted(self._samples)
            n = len(ordered)
            # The extremes of a small sample understate the spread; widen by the interval
            # half-width (each sample is a midpoint) and a share of the observed range.
            half_width = statistics.fmean(self._widths) / 2
            lo, hi = ordered[int(0.05 * (n - 1))], ordered[round(0.95 * (n - 1))]
            pad = half_width + 0.1 * (hi - lo)
            self._cached = (max(0.0, lo - pad), hi + pad)
        return self._cached
