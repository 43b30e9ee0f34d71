"""Polling: fetch calls per job and notification delay, at three job lengths, default policy.

Streams of jobs run against an emulator in a process of its own. Three job lengths: 0.6 s and
6 s with the emulator in **real time** (``time_scale=1``), and 60 s on an emulator whose clock
runs 20 times faster (``time_scale=0.05``: 3 s of real time). Every run uses the client's
default ``PollPolicy()``, unscaled: a real service does not scale the client's policy for it,
and the policy has no absolute notion of a "fast" job to scale.

For each length, the service's ETA is off in one of three ways: (a) consistently 30% too high,
(a') 30% too low, both with +-5% uniform noise, and (b) off by up to 20% either way at random.
Fresh clients for each, at once, each with its own stream of jobs (5 x 60 jobs of 0.6 s,
12 x 25 of 6 s, 2 x 200 of 60 s: about 300 jobs in all): a client starts knowing nothing of the
ETA's bias, and its first jobs pay for the learning; the "after 5" columns leave each client's
first five jobs out. One client's stream is one draw of the ETA errors and of what its first
jobs teach it, and its figures move from draw to draw: the table gives them over all the
clients' jobs, and each client's range beside (``sim_poll`` shows the spread over many more
draws).

Baselines from the same run, which ignore the ETA and so are run once per length, one client
each: a fixed interval of 10% of the job's length (a hand-tuned client that knows the length;
its delay is about half its interval), a fixed 0.5 s of the service's time (the common
approach), and, for the scaled run only, the official SDK's fixed 60 s for 10 tries (in real
time a 0.6 s job would wait a minute).

Delay is "result in the caller's hands" minus "job finished on the server" (the emulator's own
clock, read from its admin endpoint; same machine, same monotonic clock), as a share of the
job's duration on the server (submission to finish).

    python -m benchmarks.bench_poll [--quick] [--only 0.6s 6s 60s] [--seed N]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

import dreambooth_async as dba
from benchmarks._harness import emulator_process, job_cost, percentile, table, write_results

KEY = "emulator-key"
#: A new client knows nothing of the service's ETA yet; figures are given with and without
#: its first jobs.
WARM_UP = 5

#: name -> (job length in service seconds, time scale, jobs, jobs per real second, quick jobs)
LENGTHS: dict[str, tuple[float, float, int, float, int]] = {
    "0.6s": (0.6, 1.0, 60, 10.0, 40),
    "6s": (6.0, 1.0, 25, 1.5, 15),
    "60s": (60.0, 0.05, 200, 10.0, 60),
}

REGIMES: dict[str, dict[str, float]] = {
    "a: ETA 30% high, 5% noise": {"eta_bias": 0.3, "eta_noise": 0.05},
    "a: ETA 30% low, 5% noise": {"eta_bias": -0.3, "eta_noise": 0.05},
    "b: ETA +-20% at random": {"eta_bias": 0.0, "eta_noise": 0.2},
}

OURS = "dreambooth_async poller"

#: Fresh clients run at once per regime, each with its own stream of jobs, enough of them for
#: about this many jobs in all: one client's stream is one draw of the ETA errors and of its
#: first lessons, and its figures move from draw to draw (``sim_poll`` shows how much); the
#: figures are given over all of them and for each.
POOLED_JOBS = 300

Strategy = Callable[[dba.DreamboothClient, dba.Text2Img], Awaitable[tuple[str, int]]]


async def ours(client: dba.DreamboothClient, request: dba.Text2Img) -> tuple[str, int]:
    job = await client.submit(request)
    await job
    return job.id, job.fetches


def fixed_interval(seconds: float, tries: int | None = None) -> Strategy:
    async def poll(client: dba.DreamboothClient, request: dba.Text2Img) -> tuple[str, int]:
        # Submit without the poller, then fetch on a fixed beat, as the baselines do.
        job = await client.submit(request, timeout=3600)
        calls = 0
        while tries is None or calls < tries:
            await asyncio.sleep(seconds)
            calls += 1
            answer = await client.fetch(job.id)
            if isinstance(answer, dba.GenerationResult):
                return job.id, calls
        raise RuntimeError(f"job {job.id} not done after {calls} fetches")

    return poll


def emulator_options(job: float, scale: float, eta: dict[str, float]) -> list[str]:
    return [
        "--time-scale",
        str(scale),
        "--workers",
        "256",
        "--queue-limit",
        "100000",
        "--sync-window",
        "0",
        "--spam-filter",
        "off",
        *job_cost(job, noise=0.15),
        "--eta-bias",
        str(eta["eta_bias"]),
        "--eta-noise",
        str(eta["eta_noise"]),
        "--eta-noise-kind",
        "uniform",
    ]


async def one_stream(
    base_url: str, strategy: Strategy, *, jobs: int, rate: float, seed: int
) -> list[tuple[str, float, int, int]]:
    """One fresh client's stream of jobs: (job id, received at, fetch calls, index) each."""
    rng = random.Random(seed)
    done: list[tuple[str, float, int, int]] = []
    # The default policy, unscaled, whatever the emulator's clock.
    async with dba.DreamboothClient(KEY, base_url=base_url, poll=dba.PollPolicy()) as client:

        async def one(i: int) -> None:
            request = dba.Text2Img(model_id="midjourney", prompt=f"bench {seed} {i}", seed=i)
            job_id, calls = await strategy(client, request)
            done.append((job_id, time.monotonic(), calls, i))

        async with asyncio.TaskGroup() as tg:
            for i in range(jobs):
                tg.create_task(one(i))
                await asyncio.sleep(rng.expovariate(rate))
    return done


def figures(rows: list[tuple[float, int, int]]) -> dict[str, Any]:
    """Fetches per job and delay quantiles of (delay, fetch calls, index) rows."""
    delays = [delay for delay, _, _ in rows]
    calls = [n for _, n, _ in rows]
    steady = [(delay, n) for delay, n, index in rows if index >= WARM_UP]
    return {
        "jobs": len(rows),
        "fetch_calls_per_job": sum(calls) / len(calls),
        "fetch_calls_per_job_after_warm_up": sum(n for _, n in steady) / max(1, len(steady)),
        "delay_p50": percentile(delays, 0.5),
        "delay_p95": percentile(delays, 0.95),
        "delay_p95_after_warm_up": percentile([delay for delay, _ in steady], 0.95),
    }


async def run_streams(
    base_url: str, strategy: Strategy, *, jobs: int, rate: float, streams: int, seed: int
) -> dict[str, Any]:
    """``streams`` fresh clients at once, each with its own stream of jobs; the figures over
    all their jobs, and each client's own."""
    runs = await asyncio.gather(
        *(
            one_stream(base_url, strategy, jobs=jobs, rate=rate, seed=seed + k)
            for k in range(streams)
        )
    )
    # The server's view of each job: when it was created and when it finished.
    per_run: list[list[tuple[float, int, int]]] = []
    async with aiohttp.ClientSession() as session:
        for done in runs:
            rows = []
            for job_id, received, n, index in done:
                async with session.get(f"{base_url}/_emulator/jobs/{job_id}") as response:
                    info = await response.json()
                duration = info["finished_at"] - info["created_at"]
                rows.append((max(0.0, received - info["finished_at"]) / duration, n, index))
            per_run.append(rows)
    pooled = figures([row for rows in per_run for row in rows])
    pooled["streams"] = streams
    pooled["runs"] = [figures(rows) for rows in per_run]
    return pooled


async def run_length(name: str, quick: bool, seed: int | None = None) -> dict[str, Any]:
    job, scale, jobs, rate, quick_jobs = LENGTHS[name]
    count = quick_jobs if quick else jobs
    streams = 2 if quick else max(1, round(POOLED_JOBS / count))
    # The draw: the clients' arrivals, and (given a seed) the emulator's job lengths and ETA
    # errors; without one, the emulator's own default seed.
    first_stream = 7 if seed is None else seed
    draw = () if seed is None else ("--seed", str(seed))
    baselines: dict[str, Strategy] = {
        "fixed 10% of the job": fixed_interval(0.1 * job * scale),
        "fixed 0.5 s": fixed_interval(0.5 * scale),
    }
    if scale < 1:
        baselines["official SDK (60 s, 10 tries)"] = fixed_interval(60 * scale, tries=10)
    rows: dict[str, Any] = {}
    for regime, eta in REGIMES.items():
        async with emulator_process(*emulator_options(job, scale, eta), *draw) as base_url:
            rows[regime] = {
                OURS: await run_streams(
                    base_url, ours, jobs=count, rate=rate, streams=streams, seed=first_stream
                )
            }
    # The baselines ignore the ETA: one client each, under the first regime's settings.
    first = next(iter(REGIMES.values()))
    fixed: dict[str, Any] = {}
    for label, strategy in baselines.items():
        async with emulator_process(*emulator_options(job, scale, first), *draw) as base_url:
            fixed[label] = await run_streams(
                base_url, strategy, jobs=count, rate=rate, streams=1, seed=first_stream
            )
    return {
        "job_service_seconds": job,
        "time_scale": scale,
        "job_real_seconds": job * scale,
        "jobs": count,
        "streams": streams,
        "arrivals_per_second": rate,
        "regimes": rows,
        "baselines": fixed,
    }


async def run(quick: bool = False, only: list[str] | None = None, seed: int = 7) -> dict[str, Any]:
    return {
        name: await run_length(name, quick, seed) for name in LENGTHS if not only or name in only
    }


def render(results: dict[str, Any]) -> str:
    parts = []
    for data in results.values():
        headers = [
            "ETA regime / strategy",
            "fetches/job",
            f"after {WARM_UP}",
            "delay p50",
            "delay p95",
            f"p95 after {WARM_UP}",
            "each client: fetches/job",
            "each client: p95",
        ]
        rows: list[list[Any]] = []

        def spread(r: dict[str, Any], key: str) -> str:
            values = [run[key] for run in r["runs"]]
            return f"{min(values):.2f}-{max(values):.2f}" if len(values) > 1 else ""

        def row(label: str, r: dict[str, Any]) -> list[Any]:
            return [
                label,
                r["fetch_calls_per_job"],
                r["fetch_calls_per_job_after_warm_up"],
                r["delay_p50"],
                r["delay_p95"],
                r["delay_p95_after_warm_up"],
                spread(r, "fetch_calls_per_job"),
                spread(r, "delay_p95"),
            ]

        for regime, strategies in data["regimes"].items():
            rows.append(row(f"{regime}: {OURS}", strategies[OURS]))
        for label, r in data["baselines"].items():
            rows.append(row(f"baseline, any ETA: {label}", r))
        scale = data["time_scale"]
        clock = "real time" if scale == 1 else f"time_scale {scale:g}"
        parts.append(
            table(
                f"\nPolling {data['streams']} fresh clients x {data['jobs']} jobs of "
                f"{data['job_service_seconds']:g} s ({clock}, {data['job_real_seconds']:g} s "
                "real), default PollPolicy(); delay as a share of the job; figures over all "
                "their jobs, then each client's range",
                headers,
                rows,
            )
        )
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer jobs")
    parser.add_argument("--only", nargs="+", choices=list(LENGTHS), help="these job lengths only")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="another draw: the clients' arrivals and the emulator's job lengths and ETA errors",
    )
    args = parser.parse_args()
    results = asyncio.run(run(quick=args.quick, only=args.only, seed=args.seed))
    print(render(results))
    name = "poll" if args.seed is None else f"poll-seed{args.seed}"
    path = write_results(
        name, {"benchmark": "poll", "quick": args.quick, "seed": args.seed, "lengths": results}
    )
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
