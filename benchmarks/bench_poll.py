"""Polling: fetch calls per job and notification delay, against fixed-interval baselines.

A stream of jobs runs against a time-scaled emulator in a process of its own, whose ETA is off
in one of three ways: (a) consistently 30% too high, (a') 30% too low, both with +-5% uniform
noise, and (b) off by up to 20% either way at random. For each regime the same job stream is
polled by this client's poller, by a fixed 0.5 s interval (the common approach) and by the
official SDK's fixed 60 s interval (both scaled by the emulator's time scale).

Delay is "result in the caller's hands" minus "job finished on the server" (the emulator's own
clock, read from its admin endpoint; same machine, same monotonic clock), as a share of the
job's duration on the server (submission to finish).

    python -m benchmarks.bench_poll [--quick]
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
from benchmarks._harness import emulator_process, percentile, table, write_results

SCALE = 0.05  # a 20 s job takes 1 s: loopback latency stays small beside it
KEY = "emulator-key"
# A new client knows nothing of the service's ETA yet: its first jobs, submitted before any
# has finished, pay for the learning. Figures are given with and without them.
WARM_UP = 50

REGIMES: dict[str, dict[str, float]] = {
    "a: ETA 30% high, 5% noise": {"eta_bias": 0.3, "eta_noise": 0.05},
    "a: ETA 30% low, 5% noise": {"eta_bias": -0.3, "eta_noise": 0.05},
    "b: ETA +-20% at random": {"eta_bias": 0.0, "eta_noise": 0.2},
}

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


async def run_stream(
    base_url: str, strategy: Strategy, *, jobs: int, rate: float, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    done: dict[str, tuple[float, int, int]] = {}
    policy = dba.PollPolicy().scaled(SCALE)
    async with dba.DreamboothClient(KEY, base_url=base_url, poll=policy) as client:

        async def one(i: int) -> None:
            request = dba.Text2Img(model_id="midjourney", prompt=f"bench {seed} {i}", seed=i)
            job_id, calls = await strategy(client, request)
            done[job_id] = (time.monotonic(), calls, i)

        async with asyncio.TaskGroup() as tg:
            for i in range(jobs):
                tg.create_task(one(i))
                await asyncio.sleep(rng.expovariate(rate))

        # The server's view of each job: when it was created and when it finished.
        delays, calls, steady = [], [], []
        async with aiohttp.ClientSession() as session:
            for job_id, (received, n, index) in done.items():
                async with session.get(f"{base_url}/_emulator/jobs/{job_id}") as response:
                    info = await response.json()
                duration = info["finished_at"] - info["created_at"]
                delays.append(max(0.0, received - info["finished_at"]) / duration)
                calls.append(n)
                if index >= WARM_UP:
                    steady.append(n)
    return {
        "jobs": len(calls),
        "fetch_calls_per_job": sum(calls) / len(calls),
        "fetch_calls_per_job_after_warm_up": sum(steady) / max(1, len(steady)),
        "delay_p50": percentile(delays, 0.5),
        "delay_p95": percentile(delays, 0.95),
    }


async def run(quick: bool = False) -> dict[str, Any]:
    jobs = 150 if quick else 600
    strategies: dict[str, Strategy] = {
        "dreambooth_async poller": ours,
        "fixed 0.5 s": fixed_interval(0.5 * SCALE),
        "official SDK (60 s, 10 tries)": fixed_interval(60 * SCALE, tries=10),
    }
    results: dict[str, Any] = {}
    for regime, eta in REGIMES.items():
        options = [
            "--time-scale",
            str(SCALE),
            "--workers",
            "64",
            "--queue-limit",
            "100000",
            "--sync-window",
            "0",
            "--spam-filter",
            "off",
            "--cost-base",
            "20",
            "--cost-per-step",
            "0",
            "--cost-per-sample",
            "0",
            "--cost-per-megapixel",
            "0",
            "--cost-noise",
            "0.15",
            "--eta-bias",
            str(eta["eta_bias"]),
            "--eta-noise",
            str(eta["eta_noise"]),
            "--eta-noise-kind",
            "uniform",
        ]
        results[regime] = {}
        for name, strategy in strategies.items():
            async with emulator_process(*options) as base_url:
                results[regime][name] = await run_stream(
                    base_url, strategy, jobs=jobs, rate=25.0, seed=7
                )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs")
    args = parser.parse_args()
    results = asyncio.run(run(quick=args.quick))
    for regime, rows in results.items():
        base = rows["fixed 0.5 s"]["fetch_calls_per_job"]
        print(
            table(
                f"\nPolling, {regime} (delay as a share of the job's duration)",
                [
                    "strategy",
                    "fetches/job",
                    f"after {WARM_UP} jobs",
                    "x fixed 0.5 s",
                    "delay p50",
                    "delay p95",
                ],
                [
                    [
                        name,
                        r["fetch_calls_per_job"],
                        r["fetch_calls_per_job_after_warm_up"],
                        r["fetch_calls_per_job"] / base,
                        r["delay_p50"],
                        r["delay_p95"],
                    ]
                    for name, r in rows.items()
                ],
            )
        )
    path = write_results("poll", {"time_scale": SCALE, "regimes": results})
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
