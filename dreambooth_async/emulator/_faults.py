"""Seeded fault injection. Which requests each kind applies to is documented on FaultConfig."""

from __future__ import annotations

import random
from typing import Literal

import attrs

from ._config import FaultConfig

RequestFault = Literal["5xx", "drop_before", "429", "drop_after", "slow"]


@attrs.frozen
class JobFaults:
    failed: bool = False
    stuck: bool = False
    output_404: bool = False

    def kinds(self) -> list[str]:
        return [name for name in ("failed", "stuck", "output_404") if getattr(self, name)]


class FaultInjector:
    """Two independent seeded streams, so that the sequence of request faults does not depend on
    how many of the requests were accepted as jobs, and the other way round."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._requests = random.Random(f"{config.seed}:requests")
        self._jobs = random.Random(f"{config.seed}:jobs")
        cfg = config
        # Cumulative slices of [0, 1): one draw picks at most one kind, so each kind's frequency
        # is its own rate whatever the others are set to.
        edges: list[tuple[float, RequestFault]] = []
        kinds: tuple[tuple[float, RequestFault], ...] = (
            (cfg.rate_5xx, "5xx"),
            (cfg.rate_drop_before, "drop_before"),
            (cfg.rate_429, "429"),
            (cfg.rate_drop_after, "drop_after"),
            (cfg.rate_slow, "slow"),
        )
        total = 0.0
        for rate, kind in kinds:
            total += rate
            edges.append((total, kind))
        self._edges = tuple(edges)
        self.last_5xx_status = 503

    def draw_request(self) -> RequestFault | None:
        # Always one draw per request, even with every rate at zero, so that the sequence for a
        # seed is the same whichever rates are set.
        u = self._requests.random()
        # The 5xx status comes from the same draw, not a second one, to keep the stream aligned.
        self.last_5xx_status = 502 if u < self.config.rate_5xx / 2 else 503
        for edge, kind in self._edges:
            if u < edge:
                return kind
        return None

    def draw_job(self) -> JobFaults:
        cfg = self.config
        failed = self._jobs.random() < cfg.rate_failed
        stuck = self._jobs.random() < cfg.rate_stuck
        output_404 = self._jobs.random() < cfg.rate_output_404
        # A failed job has no output to hide, and "stuck" then only delays the failure.
        return JobFaults(failed=failed, stuck=stuck, output_404=output_404 and not failed)
