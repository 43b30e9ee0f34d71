"""Batch makespan under a hidden queue limit, and memory/tasks for a very long batch.

1. **Makespan.** 300 jobs (100 with ``--quick``) against a time-scaled emulator in a process of
   its own, whose account queue limit is 7 (the client is not told). Every job takes the same
   time (cost noise 0) and the emulator has more workers than 7, so the queue limit is the only
   bottleneck and the ideal makespan is ``jobs x job time / 7``. Compared in the same run, each
   against a fresh emulator:

   - ``map(concurrency=None)``: this library, adaptive;
   - ``map(concurrency=7)``: this library told the limit;
   - naive: ``asyncio.gather`` over every job with a semaphore of 64, each task submitting
     (the client's default retry policy, which waits out "queue full" a few times, and then
     the task's own loop sending again after ``retry_after`` until accepted) and then polling
     ``client.fetch`` at a fixed interval of 10% of the job time.

   Reported: makespan / ideal, rejected submissions / all submissions (the emulator's counts),
   items that failed.

2. **Memory and tasks.** 100,000 requests (10,000 with ``--quick``) from a generator, against an
   emulator that answers every submission at once: the peak of traced memory above the start
   (``tracemalloc``) and the most tasks alive at once (``len(asyncio.all_tasks())``), at two
   batch sizes, to show both are bounded by the concurrency rather than the count.

    python -m benchmarks.bench_batch [--quick]
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
from benchmarks._harness import INSTANT_OPTIONS, emulator_process, table, write_results

KEY = "emulator-key"
SCALE = 0.01
JOB_SERVICE_SECONDS = 20.0  # 0.2 s real per job at SCALE
QUEUE_LIMIT = 7
WORKERS = 8

MAKESPAN_OPTIONS = (
    "--time-scale",
    str(SCALE),
    "--queue-limit",
    str(QUEUE_LIMIT),
    "--workers",
    str(WORKERS),
    "--cost-base",
    str(JOB_SERVICE_SECONDS),
    "--cost-per-step",
    "0",
    "--cost-per-sample",
    "0",
    "--cost-per-megapixel",
    "0",
    "--cost-noise",
    "0",
)


def requests(count: int, tag: str) -> Iterator[dba.Text2Img]:
    for i in range(count):
        yield dba.Text2Img(model_id="midjourney", prompt=f"{tag} prompt {i}", seed=i)


async def emulator_stats(base_url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/_emulator/stats") as r:
        stats: dict[str, Any] = await r.json()
        return stats


def client_for(base_url: str, **options: Any) -> dba.DreamboothClient:
    return dba.DreamboothClient(
        KEY, base_url=base_url, poll=dba.PollPolicy().scaled(SCALE), **options
    )


# --- makespan ---------------------------------------------------------------------------------


async def ours(base_url: str, jobs: int, concurrency: int | None) -> dict[str, Any]:
    async with client_for(base_url) as client:
        started = time.monotonic()
        failed = 0
        async with client.map(requests(jobs, f"c{concurrency}"), concurrency) as run:
            async for item in run:
                failed += not item.ok
        elapsed = time.monotonic() - started
        return {
            "seconds": elapsed,
            "failed": failed,
            "final_concurrency": run.stats["concurrency"],
            "peak_concurrency": run.stats["peak_concurrency"],
            "fetches": client.poller.fetch_calls,
        }


async def naive(base_url: str, jobs: int) -> dict[str, Any]:
    interval = 0.1 * JOB_SERVICE_SECONDS * SCALE
    semaphore = asyncio.Semaphore(64)
    fetches = 0

    async with client_for(base_url) as client:

        async def one(request: dba.Text2Img) -> bool:
            nonlocal fetches
            async with semaphore:
                try:
                    while True:
                        try:
                            job = await client.submit(request, timeout=3600)
                            break
                        except dba.RateLimitError as error:
                            # What one writes after the first failures: wait, send again.
                            await asyncio.sleep(error.retry_after or interval)
                    while True:
                        await asyncio.sleep(interval)
                        fetches += 1
                        answer = await client.fetch(job.id)
                        if isinstance(answer, dba.GenerationResult):
                            return True
                except dba.DreamboothError:
                    return False

        started = time.monotonic()
        outcomes = await asyncio.gather(*(one(r) for r in requests(jobs, "naive")))
        elapsed = time.monotonic() - started
    return {"seconds": elapsed, "failed": outcomes.count(False), "fetches": fetches}


async def makespan(jobs: int) -> dict[str, Any]:
    job_seconds = JOB_SERVICE_SECONDS * SCALE
    ideal = jobs * job_seconds / QUEUE_LIMIT
    strategies = {
        "ours, concurrency=None": lambda url: ours(url, jobs, None),
        f"ours, concurrency={QUEUE_LIMIT}": lambda url: ours(url, jobs, QUEUE_LIMIT),
        "naive gather + semaphore(64)": lambda url: naive(url, jobs),
    }
    rows: dict[str, Any] = {}
    for name, strategy in strategies.items():
        async with emulator_process(*MAKESPAN_OPTIONS) as base_url:
            figures = await strategy(base_url)
            stats = await emulator_stats(base_url)
        received = stats["submissions_received"]
        figures.update(
            makespan_over_ideal=figures["seconds"] / ideal,
            submissions=received,
            accepted=stats["submissions_accepted"],
            rejected=stats["rejected_queue_full"] + stats["rejected_spam"],
            rejected_share=(stats["rejected_queue_full"] + stats["rejected_spam"]) / received,
            duplicates=len(stats["duplicate_submissions"]),
        )
        rows[name] = figures
    return {
        "jobs": jobs,
        "queue_limit": QUEUE_LIMIT,
        "workers": WORKERS,
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


async def run(quick: bool) -> dict[str, Any]:
    """Both parts; the figures as a dict (also what ``main`` writes to results/batch.json)."""
    return {
        "quick": quick,
        "makespan": await makespan(100 if quick else 300),
        "memory": await memory(quick),
    }


def render(results: dict[str, Any]) -> str:
    span = results["makespan"]
    parts = [
        table(
            f"\nBatch makespan: {span['jobs']} jobs of {span['job_seconds']:.2f} s, hidden queue "
            f"limit {span['queue_limit']}, ideal {span['ideal_seconds']:.2f} s",
            ["strategy", "seconds", "x ideal", "rejected", "submissions", "rejected %", "failed"],
            [
                [
                    name,
                    r["seconds"],
                    r["makespan_over_ideal"],
                    r["rejected"],
                    r["submissions"],
                    100 * r["rejected_share"],
                    r["failed"],
                ]
                for name, r in span["strategies"].items()
            ],
        )
    ]
    mem = results["memory"]
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
    args = parser.parse_args()
    results = asyncio.run(run(quick=args.quick))
    print(render(results))
    path = write_results("batch", {"benchmark": "batch", **results})
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
