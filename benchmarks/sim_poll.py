"""The poller's logic over many seeds, on a fake clock: how much the polling figures move.

The real-time benchmark (``bench_poll``) runs each regime once; its figures move from run to run
with the draw of job lengths and ETA errors. This drives the library's own :class:`Poller` (its
planning, learning and probing, unchanged) against a simulated service on a fake clock, so that
a run of 60 jobs takes milliseconds and twenty seeds show the spread. Not a measurement of the
client: no HTTP, no event loop lag (a fixed 4 ms round trip), so delays come out a little lower
than in real time.

    python -m benchmarks.sim_poll [--jobs 60] [--rate 10] [--length 0.6] [--seeds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import random
import statistics
import time
from typing import Any

import dreambooth_async as dba
from benchmarks._harness import percentile
from dreambooth_async import _eta, _fetch_plan, _job, _poller

_CLOCK_READERS = [_poller, _eta, _fetch_plan, _job]

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


async def simulate(
    *, jobs: int, rate: float, length: float, bias: float, noise: float, seed: int
) -> dict[str, Any]:
    clock = _Clock()
    # Every module of the poller that reads the clock reads this one instead.
    modules = [m for m in _CLOCK_READERS if getattr(m, "time", None) is time]
    for module in modules:
        module.time = clock  # type: ignore[attr-defined]
    try:
        return await _run(clock, jobs, rate, length, bias, noise, seed)
    finally:
        for module in modules:
            module.time = time  # type: ignore[attr-defined]


async def _run(
    clock: _Clock, jobs: int, rate: float, length: float, bias: float, noise: float, seed: int
) -> dict[str, Any]:
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
            answer: Any = dba.GenerationResult(id=job_id, status="success", output=())
        else:
            answer = dba.Processing(id=job_id, eta=eta(job_id), raw={"status": "processing"})
        clock.now = sent + rtt
        return answer

    poller = _poller.Poller(fetch, dba.PollPolicy())
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


async def run(jobs: int, rate: float, length: float, seeds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for regime, (bias, noise) in REGIMES.items():
        runs = [
            await simulate(jobs=jobs, rate=rate, length=length, bias=bias, noise=noise, seed=s)
            for s in range(seeds)
        ]
        out[regime] = {
            key: {
                "mean": statistics.fmean(r[key] for r in runs),
                "min": min(r[key] for r in runs),
                "max": max(r[key] for r in runs),
            }
            for key in runs[0]
        }
        bound = 2.0 if regime.startswith("b") else 1.3
        out[regime]["seeds_over_fetch_bound"] = sum(r["fetches"] > bound for r in runs)
        out[regime]["seeds_over_p95_bound"] = sum(r["p95"] > 0.10 for r in runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--rate", type=float, default=10.0, help="jobs arriving per second")
    parser.add_argument("--length", type=float, default=0.6, help="seconds per job")
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    results = asyncio.run(run(args.jobs, args.rate, args.length, args.seeds))
    print(
        f"{args.seeds} seeds of {args.jobs} jobs of {args.length:g} s arriving "
        f"{args.rate:g} a second (fake clock, default PollPolicy())"
    )
    for regime, r in results.items():
        print(
            f"{regime}: fetches/job mean {r['fetches']['mean']:.3f} "
            f"[{r['fetches']['min']:.3f}, {r['fetches']['max']:.3f}], after 5 "
            f"{r['fetches_after_5']['mean']:.3f}; p95 delay mean {r['p95']['mean']:.3f} "
            f"[{r['p95']['min']:.3f}, {r['p95']['max']:.3f}]; seeds over the bounds: "
            f"fetches {r['seeds_over_fetch_bound']}, p95 {r['seeds_over_p95_bound']}"
        )


if __name__ == "__main__":
    main()
