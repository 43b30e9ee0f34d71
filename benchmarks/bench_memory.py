"""Memory and tasks for ten thousand pending jobs in the poller.

10,000 jobs are submitted (64 at a time) to an emulator in a process of its own whose jobs take
ten minutes, with no queue limit worth the name, so every one of them stays "processing" and
sits in the client's poller. Measured with ``tracemalloc`` and ``len(asyncio.all_tasks())``:

- the tasks alive before the client opens, once it is open, and with the 10,000 jobs pending:
  the poller is one task, whatever the number of jobs;
- the traced memory the pending jobs add, per job (the caller's ``Job`` handle and its request
  included, as a caller holds them);
- a fetch storm: every pending job is made due at once (``poller.nudge``, what a webhook does),
  so 10,000 fetches are wanted at the same moment; the most tasks alive during it must stay
  within the poller plus its ``fetch_concurrency`` fetch tasks;
- the baseline, in the same run against a fresh emulator: 10,000 jobs submitted with plain
  aiohttp and waited for by one task each (a fixed-interval fetch loop per job, the common
  approach), tasks and memory likewise.

The other half of "memory and tasks at 10,000 and 100,000 items", a batch of 10,000 and 100,000
requests read from a generator, is measured by ``bench_batch`` (its "long batch" table): peak
memory growth and the most tasks alive stay bounded by the concurrency, not the count.

    python -m benchmarks.bench_memory [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import tracemalloc
from typing import Any

import aiohttp

import dreambooth_async as dba
from benchmarks._harness import admin_get, job_cost, running_emulator, table, write_results

KEY = "emulator-key"
JOBS = 10_000
SUBMITTERS = 64
JOB_SECONDS = 600.0

PENDING_OPTIONS = (
    "--time-scale",
    "1",
    "--sync-window",
    "0",
    "--queue-limit",
    "100000000",
    "--workers",
    "100000",
    "--spam-filter",
    "off",
    *job_cost(JOB_SECONDS),
)


def _tasks() -> int:
    return len(asyncio.all_tasks())


def _is_aiohttp_internal(task: asyncio.Task[Any]) -> bool:
    # aiohttp writes each request body from a short-lived task of its own
    # (ClientRequest.write_bytes): one per request in flight, not per pending job.
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and f"{os.sep}aiohttp{os.sep}" in code.co_filename


def _library_tasks() -> int:
    """Tasks alive, aiohttp's own transient request-writing tasks left out."""
    return sum(not _is_aiohttp_internal(task) for task in asyncio.all_tasks())


def _traced() -> int:
    return tracemalloc.get_traced_memory()[0]


async def _submit_all(client: dba.DreamboothClient, count: int) -> list[dba.Job]:
    jobs: list[dba.Job] = []
    indices = iter(range(count))

    async def submitter() -> None:
        for i in indices:
            request = dba.Text2Img(model_id="midjourney", prompt=f"pending job {i}", seed=i)
            jobs.append(await client.submit(request))

    async with asyncio.TaskGroup() as tg:
        for _ in range(SUBMITTERS):
            tg.create_task(submitter())
    return jobs


async def _fetch_storm(client: dba.DreamboothClient, jobs: list[dba.Job]) -> dict[str, Any]:
    """Make every job due now; sample the tasks alive until each was fetched once more."""
    poller = client.poller
    target = poller.fetch_calls + len(jobs)
    peak = peak_library = 0
    started = time.monotonic()
    for job in jobs:
        poller.nudge(job.id)
    # Sampling from this task (not a sampler task of its own, which would count itself) on
    # every turn of the event loop that it gets.
    while poller.fetch_calls < target:
        peak = max(peak, _tasks())
        peak_library = max(peak_library, _library_tasks())
        await asyncio.sleep(0)
    # The last fetches may still be in flight: let them land before the next figure.
    while any(task.get_name() != "dreambooth-poller" for task in _others()):
        peak = max(peak, _tasks())
        peak_library = max(peak_library, _library_tasks())
        await asyncio.sleep(0.001)
    return {
        "fetches": len(jobs),
        "seconds": time.monotonic() - started,
        "max_tasks_alive": peak,
        "max_tasks_alive_without_aiohttp_writers": peak_library,
    }


def _others() -> list[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return [task for task in asyncio.all_tasks() if task is not current]


async def ours(base_url: str, count: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"tasks_before_client": _tasks()}
    client = dba.DreamboothClient(KEY, base_url=base_url, max_concurrency=SUBMITTERS)
    async with client:
        figures["tasks_client_open"] = _tasks()
        figures["fetch_concurrency"] = client.poll_policy.fetch_concurrency
        # Warm the connection pool, so its sockets and buffers are not counted as the jobs'.
        warm = await _submit_all(client, SUBMITTERS)
        tracemalloc.start()
        before = _traced()
        started = time.monotonic()
        jobs = await _submit_all(client, count)
        figures["submit_seconds"] = time.monotonic() - started
        after = _traced()
        figures["pending"] = client.poller.pending - len(warm)
        figures["tasks_with_jobs_pending"] = _tasks()
        figures["fetches_while_pending"] = client.poller.fetch_calls
        figures["bytes_per_pending_job"] = (after - before) / count
        figures["traced_growth_mib"] = (after - before) / 2**20
        tracemalloc.stop()
        figures["storm"] = await _fetch_storm(client, jobs + warm)
        figures["pending_after_storm"] = client.poller.pending
    figures["tasks_added"] = figures["tasks_with_jobs_pending"] - figures["tasks_before_client"]
    storm = figures["storm"]
    figures["storm_tasks_added"] = storm["max_tasks_alive"] - figures["tasks_before_client"]
    figures["storm_library_tasks_added"] = (
        storm["max_tasks_alive_without_aiohttp_writers"] - figures["tasks_before_client"]
    )
    figures["storm_bound"] = 1 + figures["fetch_concurrency"]
    return figures


async def one_task_per_job(base_url: str, count: int) -> dict[str, Any]:
    """The baseline, written by hand with aiohttp as is commonly done: submit, then one task per
    job fetching it on a fixed interval until it is done."""
    figures: dict[str, Any] = {"tasks_before_client": _tasks()}
    connector = aiohttp.TCPConnector(limit=SUBMITTERS)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            async with http.post(base_url + path, json={"key": KEY, **body}) as response:
                answer: dict[str, Any] = await response.json()
                return answer

        async def wait(job_id: int) -> dict[str, Any]:
            while True:
                await asyncio.sleep(60.0)  # past the end of the measurement
                answer = await post(f"/api/v3/dreambooth/fetch/{job_id}", {})
                if answer.get("status") != "processing":
                    return answer

        waiters: list[asyncio.Task[dict[str, Any]]] = []
        indices = iter(range(count))

        async def submitter() -> None:
            for i in indices:
                body = {"model_id": "midjourney", "prompt": f"pending job {i}", "seed": i}
                answer = await post("/api/v3/dreambooth", body)
                waiters.append(asyncio.create_task(wait(answer["id"])))

        async def submit_all() -> None:
            async with asyncio.TaskGroup() as tg:
                for _ in range(SUBMITTERS):
                    tg.create_task(submitter())

        await post("/api/v3/dreambooth", {"model_id": "midjourney", "prompt": "warm"})
        tasks_open = _tasks()
        tracemalloc.start()
        before = _traced()
        await submit_all()
        await asyncio.sleep(0.1)  # every waiter reaches its first sleep
        after = _traced()
        figures["tasks_with_jobs_pending"] = _tasks()
        tracemalloc.stop()
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    figures["tasks_added"] = figures["tasks_with_jobs_pending"] - tasks_open
    figures["bytes_per_pending_job"] = (after - before) / count
    figures["traced_growth_mib"] = (after - before) / 2**20
    return figures


async def run(quick: bool = False) -> dict[str, Any]:
    # Ten thousand is the claim; the quick run keeps it and is short enough.
    count = JOBS
    async with running_emulator(*PENDING_OPTIONS) as emulator:
        mine = await ours(emulator.base_url, count)
        stats = await admin_get(emulator.base_url, "stats")
    async with running_emulator(*PENDING_OPTIONS) as emulator:
        baseline = await one_task_per_job(emulator.base_url, count)
    return {
        "quick": quick,
        "jobs": count,
        "job_seconds": JOB_SECONDS,
        "poller": mine,
        "one_task_per_job": baseline,
        "emulator_accepted": stats["submissions_accepted"],
        "emulator_fetches": stats["fetches"],
    }


def render(results: dict[str, Any]) -> str:
    mine, base = results["poller"], results["one_task_per_job"]
    storm = mine["storm"]
    lines = [
        table(
            f"\n{results['jobs']:,} pending jobs (each {results['job_seconds']:.0f} s on the "
            f"emulator): tasks and traced memory they add",
            ["waiting with", "tasks added", "bytes/job", "MiB", "x one task per job (bytes)"],
            [
                [
                    "the client's poller",
                    mine["tasks_added"],
                    mine["bytes_per_pending_job"],
                    mine["traced_growth_mib"],
                    mine["bytes_per_pending_job"] / base["bytes_per_pending_job"],
                ],
                [
                    "one task per job (baseline)",
                    base["tasks_added"],
                    base["bytes_per_pending_job"],
                    base["traced_growth_mib"],
                    1.0,
                ],
            ],
        ),
        f"  poller: tasks before the client {mine['tasks_before_client']}, client open "
        f"{mine['tasks_client_open']}, {mine['pending']:,} jobs pending "
        f"{mine['tasks_with_jobs_pending']}; fetches while pending {mine['fetches_while_pending']}",
        "  bytes/job include the caller's Job handle and request (poller), the job id and its "
        "waiter task (baseline)",
        f"  fetch storm: {storm['fetches']:,} jobs due at once, fetched in "
        f"{storm['seconds']:.1f} s; most tasks above the start: "
        f"{mine['storm_library_tasks_added']} of the client (bound: poller + "
        f"fetch_concurrency = {mine['storm_bound']}), {mine['storm_tasks_added']} counting "
        f"aiohttp's transient body-writer tasks",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="the same 10,000 jobs")
    args = parser.parse_args()
    results = asyncio.run(run(quick=args.quick))
    print(render(results))
    path = write_results("memory", {"benchmark": "memory", **results})
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
