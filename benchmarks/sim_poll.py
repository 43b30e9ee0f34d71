"""The poller's logic over many seeds, on a fake clock: how much the polling figures move.

The real-time benchmark (``bench_poll``) runs five fresh clients per regime; its figures move
from run to run with the draw of job lengths and ETA errors. This drives the library's own
:class:`Poller` (its planning, learning and probing, unchanged) against a simulated service on
a fake clock, so that a client's stream of 60 jobs takes milliseconds and a hundred seeds show
the spread: for one client (each seed) and for clients pooled as the benchmark pools them
(about 300 jobs). Not a
measurement of the client: no HTTP, no event loop lag (a fixed 4 ms round trip), so delays come
out a little lower than in real time.

``--oracle`` gives the planner the true range of the ETA's error from the start instead of
what it learns: the same planning with nothing to learn, which shows what the learning costs;
``--oracle after-first`` only once jobs have finished, which shows what the first jobs cost.
The success answer carries the job's generation time, as the service's and the emulator's do;
``--no-generation-time`` leaves it out (as the v3 fetch answer does).

    python -m benchmarks.sim_poll [--jobs 60] [--rate 10] [--length 0.6] [--seeds 100]
        [--after] [--oracle [after-first]] [--no-generation-time]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import random
import statistics
import time
from collections.abc import Iterator
from typing import Any

import dreambooth_async as dba
from benchmarks._harness import percentile
from dreambooth_async import _eta, _fetch_timing, _job, _poller

_CLOCK_READERS = [_poller, _eta, _fetch_timing, _job]

REGIMES = {
    "a: ETA 30% high, 5% noise": (0.3, 0.05),
    "a: ETA 30% low, 5% noise": (-0.3, 0.05),
    "b: ETA +-20% at random": (0.0, 0.2),
}


class _Clock:
    """Stands in for the ``time`` module inside the poller."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class _Oracle(_eta.EtaModel):
    """An ETA model that knows the true range of ``rho``: from the start, or (``learning``)
    only once its own estimate rests on finished jobs, so that the first jobs are planned as a
    fresh client plans them."""

    def __init__(self, bounds: tuple[float, float], *, learning: bool = False) -> None:
        super().__init__()
        self._true = bounds
        self._learning = learning

    def bounds(self) -> tuple[float, float]:
        learned = super().bounds()
        return learned if self._learning and self._learned() == 0 else self._true

    def _learned(self) -> int:
        # How many finished-job measurements the model's own estimate rests on.
        super().bounds()
        return self._samples

    @property
    def samples(self) -> int:
        return self._learned() if self._learning else 1000

    @property
    def low_samples(self) -> int:
        return 1000

    def share_below(self, rho: float) -> float | None:
        return None


def true_range(bias: float, noise: float) -> tuple[float, float]:
    """The 5% and 95% quantiles of ``rho`` when the ETA is off by ``bias`` and by up to
    ``noise`` either way, uniformly."""
    return 1 / ((1 + bias) * (1 + 0.9 * noise)), 1 / ((1 + bias) * (1 - 0.9 * noise))


@contextlib.contextmanager
def _fake_clock() -> Iterator[_Clock]:
    """A clock that stands in for the ``time`` module of every module of the poller that
    reads it, for the ``with`` block."""
    clock = _Clock()
    modules = [m for m in _CLOCK_READERS if getattr(m, "time", None) is time]
    for module in modules:
        module.time = clock  # type: ignore[attr-defined]
    try:
        yield clock
    finally:
        for module in modules:
            module.time = time  # type: ignore[attr-defined]


async def simulate(
    *,
    jobs: int,
    rate: float,
    length: float,
    bias: float,
    noise: float,
    seed: int,
    oracle: str | None = None,
    generation_time: bool = True,
) -> dict[str, Any]:
    with _fake_clock() as clock:
        rng = random.Random(seed)
        random.seed(seed)  # the poller's own jitter
        rtt = 0.004
        finish: dict[str, float] = {}
        duration: dict[str, float] = {}

        def eta(job_id: str) -> float:
            left = max(0.0, finish[job_id] - clock.now)
            return left * (1 + bias) * (1 + rng.uniform(-noise, noise))

        async def fetch(job_id: str, _url: str | None) -> dba.GenerationResult | dba.Processing:
            sent = clock.now
            clock.now = sent + rtt / 2  # the service looks at the job half a round trip later
            if clock.now >= finish[job_id]:
                answer: dba.GenerationResult | dba.Processing = dba.GenerationResult(
                    id=job_id,
                    status="success",
                    output=(),
                    generation_time=duration[job_id] if generation_time else None,
                )
            else:
                answer = dba.Processing(id=job_id, eta=eta(job_id), raw={"status": "processing"})
            clock.now = sent + rtt
            return answer

        poller = _poller.Poller(fetch, dba.PollPolicy())
        if oracle:
            learning = oracle == "after-first"
            poller._planner.eta_model = _Oracle(true_range(bias, noise), learning=learning)
        arrivals = []
        at = clock.now
        for _ in range(jobs):
            arrivals.append(at)
            at += rng.expovariate(rate)
        handles: dict[str, dba.Job] = {}
        delays, fetches, steady_delays, steady_fetches = [], [], [], []
        request = dba.Text2Img(model_id="m", prompt="p")
        index = 0
        while index < len(arrivals) or poller._heap:
            due = poller._heap[0][0] if poller._heap else float("inf")
            if index < len(arrivals) and arrivals[index] <= due:
                clock.now = arrivals[index]
                job_id = str(index)
                duration[job_id] = length * max(0.05, 1 + rng.gauss(0, 0.15))
                finish[job_id] = clock.now + duration[job_id]
                first = eta(job_id)
                clock.now += rtt
                handles[job_id] = poller.track(
                    dba.Processing(id=job_id, eta=first, raw={"status": "processing"}),
                    request=request,
                )
                index += 1
                continue
            due, _, job_id = heapq.heappop(poller._heap)
            state = poller._jobs.get(job_id)
            if state is None or state.due != due:
                continue
            clock.now = max(clock.now, due)
            state.due = float("inf")
            await poller._poll(state)
            job = handles[job_id]
            if job.done():
                delay = (clock.now - finish[job_id]) / duration[job_id]
                delays.append(delay)
                fetches.append(job.fetches)
                if int(job_id) >= 5:
                    steady_delays.append(delay)
                    steady_fetches.append(job.fetches)
        return {
            "fetches": statistics.fmean(fetches),
            "fetches_after_5": statistics.fmean(steady_fetches),
            "p95": percentile(delays, 0.95),
            "p95_after_5": percentile(steady_delays, 0.95),
            "raw": {
                "fetches": fetches,
                "fetches_after_5": steady_fetches,
                "p95": delays,
                "p95_after_5": steady_delays,
            },
        }


#: The real-time benchmark pools enough fresh clients for about this many jobs.
POOLED_JOBS = 300


def _pooled(runs: list[dict[str, Any]], fetch_key: str, delay_key: str) -> tuple[float, float]:
    fetches = [n for r in runs for n in r["raw"][fetch_key]]
    delays = [d for r in runs for d in r["raw"][delay_key]]
    return statistics.fmean(fetches), percentile(delays, 0.95)


async def run(
    jobs: int,
    rate: float,
    length: float,
    seeds: int,
    *,
    after: bool,
    oracle: str | None,
    generation_time: bool = True,
) -> dict[str, Any]:
    fetch_key, delay_key = ("fetches_after_5", "p95_after_5") if after else ("fetches", "p95")
    out: dict[str, Any] = {}
    for regime, (bias, noise) in REGIMES.items():
        runs = [
            await simulate(
                jobs=jobs,
                rate=rate,
                length=length,
                bias=bias,
                noise=noise,
                seed=s,
                oracle=oracle,
                generation_time=generation_time,
            )
            for s in range(seeds)
        ]
        bound = 2.0 if regime.startswith("b") else 1.3
        clients = max(1, round(POOLED_JOBS / jobs))
        one = [(r[fetch_key], r[delay_key]) for r in runs]
        pooled = [
            _pooled(runs[k : k + clients], fetch_key, delay_key)
            for k in range(0, seeds - clients + 1, clients)
        ]
        out[regime] = {
            "fetch_bound": bound,
            "one client": _summary(one, bound),
            f"{clients} clients pooled": _summary(pooled, bound),
        }
    return out


def _summary(draws: list[tuple[float, float]], bound: float) -> dict[str, Any]:
    fetches = sorted(f for f, _ in draws)
    delays = sorted(d for _, d in draws)
    return {
        "draws": len(draws),
        "fetches_mean": statistics.fmean(fetches),
        "fetches_range": (fetches[0], fetches[-1]),
        "p95_mean": statistics.fmean(delays),
        "p95_range": (delays[0], delays[-1]),
        "share_within_both_bounds": sum(f <= bound and d <= 0.10 for f, d in draws) / len(draws),
    }


ORACLE_LABELS = {
    "always": ", the true ETA range given",
    "after-first": ", the true ETA range given once jobs finished",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--rate", type=float, default=10.0, help="jobs arriving per second")
    parser.add_argument("--length", type=float, default=0.6, help="seconds per job")
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument(
        "--after", action="store_true", help="leave each client's first five jobs out"
    )
    parser.add_argument(
        "--oracle",
        nargs="?",
        const="always",
        choices=["always", "after-first"],
        help="the planner knows the ETA's error range (after-first: once jobs have finished)",
    )
    parser.add_argument(
        "--no-generation-time",
        action="store_true",
        help="the success answer does not say how long the job ran",
    )
    args = parser.parse_args()
    results = asyncio.run(
        run(
            args.jobs,
            args.rate,
            args.length,
            args.seeds,
            after=args.after,
            oracle=args.oracle,
            generation_time=not args.no_generation_time,
        )
    )
    print(
        f"{args.seeds} seeds of {args.jobs} jobs of {args.length:g} s arriving "
        f"{args.rate:g} a second (fake clock, default PollPolicy()"
        f"{ORACLE_LABELS.get(args.oracle or '', '')})"
        f"{', first five jobs of each client left out' if args.after else ''}"
        f"{', no generation time in the answers' if args.no_generation_time else ''}"
    )
    for regime, r in results.items():
        for label, x in r.items():
            if label == "fetch_bound":
                continue
            print(
                f"{regime}, {label} ({x['draws']} draws): fetches/job "
                f"{x['fetches_mean']:.3f} [{x['fetches_range'][0]:.2f}-"
                f"{x['fetches_range'][1]:.2f}], p95 delay {x['p95_mean']:.3f} "
                f"[{x['p95_range'][0]:.3f}-{x['p95_range'][1]:.3f}]; within both bounds "
                f"(<= {r['fetch_bound']:g}, <= 0.10): {100 * x['share_within_both_bounds']:.0f}%"
            )


if __name__ == "__main__":
    main()
