"""Batch makespan under a hidden queue limit, and memory/tasks for a very long batch.

1. **Makespan**, at three job lengths: 0.4 s and 4 s with the emulator in **real time**
   (``time_scale=1``), and 60 s on an emulator whose clock runs 100 times faster
   (``time_scale=0.01``: 0.6 s of real time). The client uses its default ``PollPolicy()``,
   unscaled, whatever the emulator's clock. Each emulator runs in a process of its own with an
   account queue limit of 7 that the client is not told, more workers than that (the limit is
   the only bottleneck), jobs of exactly the same length (so the ideal makespan is
   ``jobs x length / 7``) and ETAs off by up to 10% either way at random. Compared in the same
   run, each against a fresh emulator:

   - ``map(concurrency=None)``: this library, adaptive;
   - ``map(concurrency=7)``: this library told the limit;
   - naive: ``asyncio.gather`` over every job with a semaphore of 64, each task submitting
     (the client's default retry policy, which waits out "queue full" a few times, and then
     the task's own loop sending again after ``retry_after`` until accepted) and then polling
     ``client.fetch`` at a fixed interval of 10% of the job's length.

   Reported: makespan / ideal, rejected submissions / all submissions (the emulator's counts),
   fetch calls per job, and the p95 of the delay between a job's end on the server and its
   item in the caller's hands, as a share of the job's length.

2. **Memory and tasks.** 100,000 requests (10,000 with ``--quick``) from a generator, against an
   emulator that answers every submission at once: the peak of traced memory above the start
   (``tracemalloc``) and the most tasks alive at once (``len(asyncio.all_tasks())``), at two
   batch sizes, to show both are bounded by the concurrency rather than the count.

    python -m benchmarks.bench_batch [--quick] [--only 0.4s 4s 60s memory]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import aiohttp

import dreambooth_async as dba
from benchmarks._harness import (
    INSTANT_OPTIONS,
    admin_get,
    emulator_process,
    job_cost,
    percentile,
    table,
    write_results,
)

KEY = "emulator-key"
QUEUE_LIMIT = 7
WORKERS = 8

#: name -> (job length in service seconds, time scale, jobs, quick jobs)
LENGTHS: dict[str, tuple[float, float, int, int]] = {
    "0.4s": (0.4, 1.0, 150, 70),
    "4s": (4.0, 1.0, 42, 28),
    "60s": (60.0, 0.01, 300, 100),
}


def makespan_options(job: float, scale: float) -> tuple[str, ...]:
    return (
        "--time-scale",
        str(scale),
        "--queue-limit",
        str(QUEUE_LIMIT),
        "--workers",
        str(WORKERS),
        "--sync-window",
        "0",
        *job_cost(job),
        "--eta-noise",
        "0.1",
        "--eta-noise-kind",
        "uniform",
    )


def requests(count: int, tag: str) -> Iterator[dba.Text2Img]:
    for i in range(count):
        yield dba.Text2Img(model_id="midjourney", prompt=f"{tag} prompt {i}", seed=i)


async def emulator_stats(base_url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/_emulator/stats") as r:
        stats: dict[str, Any] = await r.json()
        return stats


def client_for(base_url: str, **options: Any) -> dba.DreamboothClient:
    # The default poll policy, unscaled: a real service does not scale the client's policy.
    return dba.DreamboothClient(KEY, base_url=base_url, **options)


# --- makespan ---------------------------------------------------------------------------------


async def delays(base_url: str, received: dict[str, float]) -> list[float]:
    """For each job, (in the caller's hands - finished on the server) / the job's length."""
    shares = []
    for job_id, at in received.items():
        info = await admin_get(base_url, f"jobs/{job_id}")
        length = info["finished_at"] - info["created_at"]
        shares.append(max(0.0, at - info["finished_at"]) / length)
    return shares


async def ours(base_url: str, jobs: int, concurrency: int | None) -> dict[str, Any]:
    received: dict[str, float] = {}
    async with client_for(base_url) as client:
        started = time.monotonic()
        failed = 0
        async with client.map(requests(jobs, f"c{concurrency}"), concurrency) as run:
            async for item in run:
                if item.ok and item.job_id is not None:
                    received[item.job_id] = time.monotonic()
                failed += not item.ok
        elapsed = time.monotonic() - started
        return {
            "seconds": elapsed,
            "failed": failed,
            "final_concurrency": run.stats["concurrency"],
            "peak_concurrency": run.stats["peak_concurrency"],
            "fetches": client.poller.fetch_calls,
            "received": received,
        }


async def naive(base_url: str, jobs: int, interval: float) -> dict[str, Any]:
    semaphore = asyncio.Semaphore(64)
    fetches = 0
    received: dict[str, float] = {}

    async with client_for(base_url) as client:

        async def one(request: dba.Text2Img) -> bool:
            nonlocal fetches
            async with semaphore:
                try:
                    while True:
                        try:
                            # Outside the client's slot window: each task for itself.
                            job = await client.submit(request, timeout=3600, wait_for_slot=False)
                            break
                        except dba.RateLimitError as error:
                            # What one writes after the first failures: wait, send again.
                            await asyncio.sleep(error.retry_after or interval)
                    while True:
                        await asyncio.sleep(interval)
                        fetches += 1
                        answer = await client.fetch(job.id)
                        if isinstance(answer, dba.GenerationResult):
                            received[job.id] = time.monotonic()
                            return True
                except dba.DreamboothError:
                    return False

        started = time.monotonic()
        outcomes = await asyncio.gather(*(one(r) for r in requests(jobs, "naive")))
        elapsed = time.monotonic() - started
    return {
        "seconds": elapsed,
        "failed": outcomes.count(False),
        "fetches": fetches,
        "received": received,
    }


async def makespan(name: str, quick: bool) -> dict[str, Any]:
    job, scale, count, quick_count = LENGTHS[name]
    jobs = quick_count if quick else count
    job_seconds = job * scale
    ideal = jobs * job_seconds / QUEUE_LIMIT
    strategies = {
        "ours, concurrency=None": lambda url: ours(url, jobs, None),
        f"ours, concurrency={QUEUE_LIMIT}": lambda url: ours(url, jobs, QUEUE_LIMIT),
        "naive gather + semaphore(64)": lambda url: naive(url, jobs, 0.1 * job_seconds),
    }
    rows: dict[str, Any] = {}
    for label, strategy in strategies.items():
        async with emulator_process(*makespan_options(job, scale)) as base_url:
            figures = await strategy(base_url)
            stats = await emulator_stats(base_url)
            shares = await delays(base_url, figures.pop("received"))
        received = stats["submissions_received"]
        rejected = stats["rejected_queue_full"] + stats["rejected_spam"]
        figures.update(
            makespan_over_ideal=figures["seconds"] / ideal,
            submissions=received,
            accepted=stats["submissions_accepted"],
            rejected=rejected,
            rejected_share=rejected / received,
            duplicates=len(stats["duplicate_submissions"]),
            fetches_per_job=figures["fetches"] / jobs,
            delay_p50=percentile(shares, 0.5),
            delay_p95=percentile(shares, 0.95),
        )
        rows[label] = figures
    return {
        "jobs": jobs,
        "queue_limit": QUEUE_LIMIT,
        "workers": WORKERS,
        "job_service_seconds": job,
        "time_scale": scale,
        "job_seconds": job_seconds,
        "ideal_seconds": ideal,
        "strategies": rows,
    }


# --- memory and tasks -------------------------------------------------------------------------


async def long_batch(base_url: str, count: int) -> dict[str, Any]:
    async with client_for(base_url, max_concurrency=64) as client:
        tracemalloc.start()
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        started = time.monotonic()
        tasks_before = len(asyncio.all_tasks())
        max_tasks = tasks_before
        done = failed = 0
        async with client.map(requests(count, "long")) as run:
            async for item in run:
                done += 1
                failed += not item.ok
                if done % 16 == 0:
                    max_tasks = max(max_tasks, len(asyncio.all_tasks()))
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return {
        "requests": count,
        "seconds": elapsed,
        "items_per_second": count / elapsed,
        "failed": failed,
        "peak_memory_growth_mib": (peak - baseline) / 2**20,
        "max_tasks_alive": max_tasks,
        "tasks_before": tasks_before,
        "peak_concurrency": run.stats["peak_concurrency"],
    }


async def memory(quick: bool) -> dict[str, Any]:
    sizes = (2_000, 10_000) if quick else (10_000, 100_000)
    rows = {}
    for count in sizes:
        async with emulator_process(*INSTANT_OPTIONS) as base_url:
            rows[str(count)] = await long_batch(base_url, count)
    return {"max_concurrency": 64, "runs": rows}


async def run(quick: bool, only: list[str] | None = None) -> dict[str, Any]:
    """The figures as a dict (also what ``main`` writes to results/batch.json)."""
    results: dict[str, Any] = {"quick": quick, "makespan": {}}
    for name in LENGTHS:
        if not only or name in only:
            results["makespan"][name] = await makespan(name, quick)
    if not only or "memory" in only:
        results["memory"] = await memory(quick)
    return results


def render(results: dict[str, Any]) -> str:
    parts = []
    for span in results["makespan"].values():
        scale = span["time_scale"]
        clock = "real time" if scale == 1 else f"time_scale {scale:g}"
        parts.append(
            table(
                f"\nBatch makespan: {span['jobs']} jobs of {span['job_service_seconds']:g} s "
                f"({clock}, {span['job_seconds']:g} s real), hidden queue limit "
                f"{span['queue_limit']}, ideal {span['ideal_seconds']:.2f} s, default PollPolicy()",
                [
                    "strategy",
                    "seconds",
                    "x ideal",
                    "rejected",
                    "submissions",
                    "rejected %",
                    "fetches/job",
                    "delay p95",
                    "failed",
                ],
                [
                    [
                        name,
                        r["seconds"],
                        r["makespan_over_ideal"],
                        r["rejected"],
                        r["submissions"],
                        100 * r["rejected_share"],
                        r["fetches_per_job"],
                        r["delay_p95"],
                        r["failed"],
                    ]
                    for name, r in span["strategies"].items()
                ],
            )
        )
    mem = results.get("memory")
    if mem is not None:
        parts.append(
            table(
                f"\nLong batch from a generator (instant emulator, max_concurrency "
                f"{mem['max_concurrency']})",
                [
                    "requests",
                    "seconds",
                    "items/s",
                    "peak memory growth MiB",
                    "max tasks alive",
                    "peak concurrency",
                ],
                [
                    [
                        r["requests"],
                        r["seconds"],
                        r["items_per_second"],
                        r["peak_memory_growth_mib"],
                        r["max_tasks_alive"],
                        r["peak_concurrency"],
                    ]
                    for r in mem["runs"].values()
                ],
            )
        )
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs and requests")
    parser.add_argument("--only", nargs="+", choices=[*LENGTHS, "memory"], help="these parts only")
    args = parser.parse_args()
    results = asyncio.run(run(quick=args.quick, only=args.only))
    print(render(results))
    path = write_results("batch", {"benchmark": "batch", **results})
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
