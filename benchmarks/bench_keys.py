"""Batch makespan with one, two and three API keys, 3 queue slots each, against the ideal.

An emulator in a process of its own gives every key 3 queue slots (the client is not told) and
has more workers than all the keys' slots together, and every job takes the same time (cost
noise 0): the slots are the only bottleneck, and the ideal makespan with ``n`` keys is
``jobs x job time / (3 n)``. For each number of keys, against a fresh emulator:

- ``map(concurrency=None)``: one adaptive window per key, each learning its account's limit;
- ``map(concurrency=3)``: the same told the limit (a fixed window of 3 per key).

Reported: makespan, the ideal, their ratio, the speed-up over one key in the same mode,
rejected submissions / all submissions, and the jobs each key was given (the emulator's
per-key counts, by position).

    python -m benchmarks.bench_keys [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator
from typing import Any

import dreambooth_async as dba
from benchmarks._harness import admin_get, emulator_process, job_cost, table, write_results

SCALE = 0.01
JOB_SERVICE_SECONDS = 20.0  # 0.2 s real per job at SCALE
SLOTS_PER_KEY = 3
WORKERS = 16  # more than 3 keys x 3 slots: the slots are the bottleneck
KEYS = ("bench-key-one", "bench-key-two", "bench-key-three")


def emulator_options(keys: tuple[str, ...]) -> list[str]:
    options = [
        "--time-scale",
        str(SCALE),
        "--queue-limit",
        str(SLOTS_PER_KEY),
        "--workers",
        str(WORKERS),
        *job_cost(JOB_SERVICE_SECONDS),
    ]
    for key in keys:
        options += ["--key", key]
    return options


def requests(count: int, tag: str) -> Iterator[dba.Text2Img]:
    for i in range(count):
        yield dba.Text2Img(model_id="midjourney", prompt=f"{tag} prompt {i}", seed=i)


async def one_run(keys: tuple[str, ...], jobs: int, concurrency: int | None) -> dict[str, Any]:
    async with emulator_process(*emulator_options(keys)) as base_url:
        client = dba.DreamboothClient(
            list(keys), base_url=base_url, poll=dba.PollPolicy().scaled(SCALE)
        )
        async with client:
            started = time.monotonic()
            failed = 0
            tag = f"k{len(keys)}c{concurrency}"
            async with client.map(requests(jobs, tag), concurrency) as run:
                async for item in run:
                    failed += not item.ok
            seconds = time.monotonic() - started
        stats = await admin_get(base_url, "stats")
    ideal = jobs * JOB_SERVICE_SECONDS * SCALE / (SLOTS_PER_KEY * len(keys))
    submissions = stats["submissions_received"]
    return {
        "keys": len(keys),
        "mode": "adaptive" if concurrency is None else f"fixed {concurrency} per key",
        "jobs": jobs,
        "seconds": round(seconds, 3),
        "ideal_seconds": round(ideal, 3),
        "ratio_to_ideal": round(seconds / ideal, 3),
        "failed": failed,
        "submissions": submissions,
        "rejected": stats["rejected_queue_full"],
        "rejected_share": round(stats["rejected_queue_full"] / max(1, submissions), 3),
        "accepted_per_key": [row["accepted"] for row in stats["per_key"]],
        "peak_in_flight_per_key": [row["peak_in_flight"] for row in run.key_stats],
    }


async def main(quick: bool) -> dict[str, Any]:
    jobs = 48 if quick else 120
    runs: list[dict[str, Any]] = []
    for concurrency in (None, SLOTS_PER_KEY):
        baseline = None
        for count in (1, 2, 3):
            result = await one_run(KEYS[:count], jobs, concurrency)
            baseline = baseline or result["seconds"]
            result["speedup_over_one_key"] = round(baseline / result["seconds"], 3)
            runs.append(result)
    rows = [
        (
            r["mode"],
            r["keys"],
            r["seconds"],
            r["ideal_seconds"],
            f"{r['ratio_to_ideal']:.2f}x",
            f"{r['speedup_over_one_key']:.2f}x",
            f"{r['rejected']}/{r['submissions']}",
            "/".join(map(str, r["accepted_per_key"])),
            r["failed"],
        )
        for r in runs
    ]
    print(
        table(
            f"makespan of {jobs} jobs of {JOB_SERVICE_SECONDS * SCALE:.2f} s, "
            f"{SLOTS_PER_KEY} slots per key",
            (
                "mode",
                "keys",
                "seconds",
                "ideal",
                "/ideal",
                "speed-up",
                "rejected",
                "jobs per key",
                "failed",
            ),
            rows,
        )
    )
    return {
        "jobs": jobs,
        "job_seconds": JOB_SERVICE_SECONDS * SCALE,
        "slots_per_key": SLOTS_PER_KEY,
        "runs": runs,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="48 jobs instead of 120")
    args = parser.parse_args()
    data = asyncio.run(main(args.quick))
    print(f"written to {write_results('keys', data)}")
