"""Sharing one key: a burst of single calls in one client, and several processes on one key.

The emulator runs in **real time** (``time_scale=1``) in a process of its own, with an account
queue limit the client is not told, more workers than that (the limit is the only bottleneck),
jobs of exactly one length (so the account's ideal makespan is ``jobs x length / limit``) and
ETAs off by up to 10% either way at random. Every figure is measured against a fresh emulator.

1. **Burst**: 100 concurrent ``client.generate`` calls on one client, an undisclosed limit of
   10, 1 s jobs, the service's own ``retry_after`` (the wait until a slot frees): the last
   result against the ideal 10 s, the share of submissions refused as "queue full", and how
   many calls raised :class:`~dreambooth_async.RateLimitError`. Then the same burst as 100
   concurrent ``POST /generate`` to ``examples/webapp.py`` served on loopback: how many
   answered 429.
2. **Shards**: one, two and three processes on one key (each a separate Python process running
   ``client.map`` over its ``dba.shard(prompts, i, n)``), started together, an undisclosed
   limit of 7 and a service that suggests ``retry_after`` 0.2 s whatever the jobs' length, at
   0.4 s and 4 s jobs: the account's makespan (first start to last result) against its ideal,
   the share of all submissions refused, and whether every prompt was accepted exactly once
   (the emulator's record), each beside the one-process figure of the same run.

    python -m benchmarks.bench_shared [--quick] [--draws N] [--only burst webapp 0.4s 4s]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

import dreambooth_async as dba
from benchmarks._harness import admin_get, emulator_process, job_cost, table, write_results

KEY = "emulator-key"

BURST_CALLS = 100
BURST_LIMIT = 10
BURST_JOB = 1.0

SHARED_LIMIT = 7
SHARED_HINT = 0.2
#: name -> (job length in seconds, prompts, quick prompts)
LENGTHS: dict[str, tuple[float, int, int]] = {
    "0.4s": (0.4, 150, 70),
    "4s": (4.0, 42, 28),
}
PROCESSES = (1, 2, 3)


def emulator_options(limit: int, job: float, *extra: str) -> tuple[str, ...]:
    return (
        "--time-scale",
        "1",
        "--queue-limit",
        str(limit),
        "--workers",
        str(limit + 2),
        "--sync-window",
        "0",
        *job_cost(job),
        "--eta-noise",
        "0.1",
        "--eta-noise-kind",
        "uniform",
        *extra,
    )


def prompts(count: int, tag: str) -> list[dba.Text2Img]:
    return [
        dba.Text2Img(model_id="midjourney", prompt=f"{tag} prompt {i}", seed=i)
        for i in range(count)
    ]


async def refusals(base_url: str) -> tuple[int, int, dict[str, int]]:
    """(accepted, refused as queue full, accepted more than once: digest -> count)."""
    stats = await admin_get(base_url, "stats")
    twice = {digest: count for digest, count in stats["accepted_by_request"].items() if count > 1}
    return stats["submissions_accepted"], stats["rejected_queue_full"], twice


def shares(accepted: int, rejected: int) -> float:
    return rejected / max(1, accepted + rejected)


# --- 1. the burst -----------------------------------------------------------------------------


async def burst(calls: int) -> dict[str, Any]:
    options = emulator_options(BURST_LIMIT, BURST_JOB)
    async with emulator_process(*options) as base_url:
        async with dba.DreamboothClient(KEY, base_url=base_url) as client:
            requests = prompts(calls, "burst")
            limited = 0

            async def one(request: dba.Text2Img) -> bool:
                nonlocal limited
                try:
                    result = await client.generate(request, timeout=120)
                except dba.RateLimitError:
                    limited += 1
                    return False
                return bool(result.output)

            started = time.monotonic()
            done = await asyncio.gather(*(one(r) for r in requests))
            seconds = time.monotonic() - started
            window = client.slot_pool.limit
        accepted, rejected, twice = await refusals(base_url)
    ideal = calls * BURST_JOB / BURST_LIMIT
    return {
        "calls": calls,
        "queue_limit": BURST_LIMIT,
        "job_seconds": BURST_JOB,
        "ideal_seconds": ideal,
        "seconds": seconds,
        "makespan_over_ideal": seconds / ideal,
        "images": sum(done),
        "rate_limit_errors": limited,
        "accepted": accepted,
        "rejected": rejected,
        "rejected_share": shares(accepted, rejected),
        "accepted_twice": len(twice),
        "final_window": window,
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def webapp_process(base_url: str) -> AsyncIterator[str]:
    """``examples/webapp.py`` served on loopback against ``base_url``; yields its URL."""
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "examples/webapp.py",
        "--port",
        str(port),
        "--base-url",
        base_url,
        env={**__import__("os").environ, "DREAMBOOTH_API_KEY": KEY},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(30):
            while True:
                try:
                    async with session.get(f"{url}/health") as answer:
                        if answer.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        yield url
    finally:
        process.terminate()
        await process.wait()


async def webapp(calls: int) -> dict[str, Any]:
    options = emulator_options(BURST_LIMIT, BURST_JOB)
    async with emulator_process(*options) as base_url, webapp_process(base_url) as url:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(i: int) -> int:
                body = {"prompt": f"webapp prompt {i}", "seed": i}
                async with session.post(f"{url}/generate", json=body) as answer:
                    await answer.read()
                    return answer.status

            started = time.monotonic()
            statuses = await asyncio.gather(*(one(i) for i in range(calls)))
            seconds = time.monotonic() - started
        accepted, rejected, twice = await refusals(base_url)
    ideal = calls * BURST_JOB / BURST_LIMIT
    return {
        "calls": calls,
        "ideal_seconds": ideal,
        "seconds": seconds,
        "makespan_over_ideal": seconds / ideal,
        "ok": statuses.count(200),
        "http_429": statuses.count(429),
        "other": len(statuses) - statuses.count(200) - statuses.count(429),
        "accepted": accepted,
        "rejected": rejected,
        "rejected_share": shares(accepted, rejected),
        "accepted_twice": len(twice),
    }


# --- 2. processes sharing a key ---------------------------------------------------------------


async def drive(base_url: str, index: int, count: int, jobs: int) -> None:
    """One process's part (run as ``--drive``): its shard of the prompts, through
    ``client.map``, from the start time the parent sends once every process is ready (a
    process still importing under load would otherwise start late and count as slow); prints
    one JSON line."""
    mine = list(dba.shard(prompts(jobs, "shared"), index, count))
    async with dba.DreamboothClient(KEY, base_url=base_url) as client:
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await asyncio.sleep(max(0.0, float(line) - time.time()))
        started = time.time()
        done = failed = 0
        async with client.map(mine) as run:
            async for item in run:
                done += item.ok
                failed += not item.ok
        print(
            json.dumps(
                {
                    "prompts": len(mine),
                    "done": done,
                    "failed": failed,
                    "started": started,
                    "ended": time.time(),
                    "submissions": run.stats["submissions"],
                    "rejected": run.stats["rejected_queue_full"],
                    "window": run.stats["concurrency"],
                }
            ),
            flush=True,
        )


async def processes(base_url: str, count: int, jobs: int) -> list[dict[str, Any]]:
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.bench_shared",
            "--drive",
            base_url,
            str(index),
            str(count),
            str(jobs),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for index in range(1, count + 1)
    ]
    for child in children:  # every process imported and connected
        assert child.stdout is not None
        assert (await child.stdout.readline()).strip() == b"ready"
    start_at = f"{time.time() + 0.2!r}\n".encode()
    outputs = await asyncio.gather(*(child.communicate(start_at) for child in children))
    return [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]


async def shared(name: str, count: int, quick: bool) -> dict[str, Any]:
    job, jobs, quick_jobs = LENGTHS[name]
    jobs = quick_jobs if quick else jobs
    options = emulator_options(SHARED_LIMIT, job, "--queue-full-retry-after", str(SHARED_HINT))
    async with emulator_process(*options) as base_url:
        parts = await processes(base_url, count, jobs)
        accepted, rejected, twice = await refusals(base_url)
    seconds = max(p["ended"] for p in parts) - min(p["started"] for p in parts)
    ideal = jobs * job / SHARED_LIMIT
    return {
        "processes": count,
        "prompts": jobs,
        "seconds": seconds,
        "ideal_seconds": ideal,
        "makespan_over_ideal": seconds / ideal,
        "accepted": accepted,
        "rejected": rejected,
        "rejected_share": shares(accepted, rejected),
        "done": sum(p["done"] for p in parts),
        "failed": sum(p["failed"] for p in parts),
        "every_prompt_once": accepted == jobs and not twice,
        "windows": [p["window"] for p in parts],
        "per_process_seconds": [p["ended"] - p["started"] for p in parts],
    }


# --- the whole run ----------------------------------------------------------------------------


async def run(quick: bool, draws: int, only: list[str] | None = None) -> dict[str, Any]:
    """The figures as a dict (also what ``main`` writes to results/shared.json)."""
    results: dict[str, Any] = {"quick": quick, "draws": draws}
    calls = 50 if quick else BURST_CALLS
    if not only or "burst" in only:
        results["burst"] = [await burst(calls) for _ in range(draws)]
    if not only or "webapp" in only:
        results["webapp"] = [await webapp(calls) for _ in range(draws)]
    results["shared"] = {}
    for name in LENGTHS:
        if only and name not in only:
            continue
        results["shared"][name] = [
            {str(count): await shared(name, count, quick) for count in PROCESSES}
            for _ in range(draws)
        ]
    return results


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def render(results: dict[str, Any]) -> str:
    parts = []
    draws = results["draws"]
    if "burst" in results:
        rows = results["burst"]
        first = rows[0]
        parts.append(
            table(
                f"\nBurst: {first['calls']} concurrent generate() on one client, undisclosed "
                f"limit {first['queue_limit']}, {first['job_seconds']:g} s jobs (real time), "
                f"ideal {first['ideal_seconds']:g} s; {draws} draw(s)",
                ["draw", "x ideal", "images", "RateLimitError", "rejected %", "window"],
                [
                    [
                        i + 1,
                        r["makespan_over_ideal"],
                        r["images"],
                        r["rate_limit_errors"],
                        100 * r["rejected_share"],
                        r["final_window"],
                    ]
                    for i, r in enumerate(rows)
                ],
            )
        )
    if "webapp" in results:
        rows = results["webapp"]
        parts.append(
            table(
                f"\nThe same burst through examples/webapp.py on loopback; {draws} draw(s)",
                ["draw", "x ideal", "200", "429", "other", "rejected %"],
                [
                    [
                        i + 1,
                        r["makespan_over_ideal"],
                        r["ok"],
                        r["http_429"],
                        r["other"],
                        100 * r["rejected_share"],
                    ]
                    for i, r in enumerate(rows)
                ],
            )
        )
    for name, runs in results["shared"].items():
        job, _jobs, _quick = LENGTHS[name]
        first = runs[0]["1"]
        parts.append(
            table(
                f"\nProcesses on one key: {first['prompts']} prompts of {job:g} s (real time), "
                f"undisclosed limit {SHARED_LIMIT}, retry_after {SHARED_HINT:g} s, ideal "
                f"{first['ideal_seconds']:.2f} s; {draws} draw(s), each beside its own "
                "one-process baseline",
                [
                    "draw",
                    "processes",
                    "x ideal",
                    "x one process",
                    "rejected %",
                    "once each",
                    "windows",
                ],
                [
                    [
                        i + 1,
                        count,
                        r["makespan_over_ideal"],
                        r["seconds"] / draw["1"]["seconds"],
                        100 * r["rejected_share"],
                        "yes" if r["every_prompt_once"] else "NO",
                        "/".join(str(w) for w in r["windows"]),
                    ]
                    for i, draw in enumerate(runs)
                    for count, r in ((int(k), v) for k, v in draw.items())
                ],
            )
        )
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and prompts")
    parser.add_argument("--draws", type=int, default=3, help="runs of each figure")
    parser.add_argument(
        "--only", nargs="+", choices=["burst", "webapp", *LENGTHS], help="these parts only"
    )
    parser.add_argument("--drive", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        base_url, index, count, jobs = args.drive
        asyncio.run(drive(base_url, int(index), int(count), int(jobs)))
        return
    results = asyncio.run(run(quick=args.quick, draws=args.draws, only=args.only))
    print(render(results))
    path = write_results("shared", {"benchmark": "shared", **results})
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
