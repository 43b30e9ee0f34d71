"""How many requests per second the emulator serves, in a process of its own.

Later benchmarks run a client against the emulator; this figure shows whether the emulator could
be their bottleneck. The emulator runs with a tiny time scale, no queue limit and no spam filter,
so every request is answered at once; this process drives it with aiohttp at a concurrency of 64:
text2img submissions with distinct prompts, each followed by a fetch of the id it got back.

    python -m benchmarks.bench_emulator [--quick]

Both processes share the machine, so the figure is what one aiohttp client process can get from
the emulator here; the emulator's own CPU use is reported beside it to show which side saturates.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import aiohttp

from benchmarks._harness import admin_get, running_emulator, write_results

KEY = "emulator-key"
CONCURRENCY = 64

EMULATOR_ARGS = (
    "--time-scale=0.0001",
    "--queue-limit=1000000",
    "--spam-filter=off",
    "--workers=64",
)


async def _drive(
    http: aiohttp.ClientSession, base_url: str, jobs: int, tag: str
) -> tuple[list[float], int]:
    """Submit ``jobs`` distinct requests, each followed by its fetch, 64 at a time.

    Returns each request's latency and how many answers were not the expected kind."""
    latencies: list[float] = []
    unexpected = 0
    next_job = 0

    async def call(url: str, body: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        async with http.post(url, json=body) as resp:
            answer: dict[str, Any] = await resp.json()
        latencies.append(time.perf_counter() - started)
        return answer

    async def worker() -> None:
        nonlocal next_job, unexpected
        while next_job < jobs:
            n = next_job
            next_job += 1
            body = {
                "key": KEY,
                "model_id": "midjourney",
                "prompt": f"{tag} prompt {n}",
                "width": "512",
                "height": "512",
                "samples": "1",
                "num_inference_steps": "30",
                "seed": n,
            }
            answer = await call(f"{base_url}/api/v3/dreambooth", body)
            if answer.get("status") not in ("processing", "success"):
                unexpected += 1
                continue
            # A success answer carries no fetch_result; fetching it anyway is still a request.
            fetch_url = answer.get("fetch_result") or (
                f"{base_url}/api/v3/dreambooth/fetch/{answer['id']}"
            )
            fetched = await call(fetch_url, {"key": KEY})
            if fetched.get("status") not in ("processing", "success"):
                unexpected += 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return latencies, unexpected


async def measure_capacity(quick: bool) -> dict[str, Any]:
    """Run the benchmark; returns the figures (also what ``main`` writes as JSON)."""
    jobs = 1_000 if quick else 10_000
    async with running_emulator(*EMULATOR_ARGS) as emulator:
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as http:
            await _drive(http, emulator.base_url, 200, "warm-up")
            cpu_before = emulator.cpu_seconds()
            started = time.perf_counter()
            latencies, unexpected = await _drive(http, emulator.base_url, jobs, "measured")
            elapsed = time.perf_counter() - started
            cpu_after = emulator.cpu_seconds()
        stats = await admin_get(emulator.base_url, "stats")
    latencies.sort()
    emulator_cpu = (
        None if cpu_before is None or cpu_after is None else (cpu_after - cpu_before) / elapsed
    )
    return {
        "benchmark": "emulator_capacity",
        "quick": quick,
        "requests": len(latencies),
        "submissions": jobs,
        "concurrency": CONCURRENCY,
        "seconds": round(elapsed, 3),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "latency_ms_p50": round(statistics.median(latencies) * 1000, 2),
        "latency_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "unexpected_answers": unexpected,
        "emulator_cpu_share": None if emulator_cpu is None else round(emulator_cpu, 2),
        "emulator_accepted": stats["submissions_accepted"],
        "emulator_args": ["--port=0", *EMULATOR_ARGS],
        "aiohttp": aiohttp.__version__,
    }


async def run(quick: bool = False) -> dict[str, Any]:
    """The figures as a dict (what ``main`` writes to results/emulator.json)."""
    return await measure_capacity(quick)


def render(result: dict[str, Any]) -> str:
    rows = [
        ("requests", f"{result['requests']} ({result['submissions']} submit + fetch pairs)"),
        ("concurrency", str(result["concurrency"])),
        ("elapsed", f"{result['seconds']} s"),
        ("requests/second", str(result["requests_per_second"])),
        ("latency p50 / p99", f"{result['latency_ms_p50']} / {result['latency_ms_p99']} ms"),
        ("emulator CPU (cores)", str(result["emulator_cpu_share"])),
        ("unexpected answers", str(result["unexpected_answers"])),
    ]
    width = max(len(name) for name, _ in rows)
    lines = ["\nEmulator capacity (aiohttp driving it, one process each)"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1,000 submissions, not 10,000")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.quick))
    print(render(result))
    path = write_results("emulator", result)
    print(f"\nwritten to {path}")
    return 0 if result["unexpected_answers"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
