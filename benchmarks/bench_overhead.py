"""Client overhead: calls per second of ``generate()`` next to hand-written HTTP clients.

The emulator runs in a process of its own and answers every v6 text2img submission with
"success" at once (``INSTANT_OPTIONS``: no queue limit, no spam filter, jobs of zero cost, a
sync window wider than any job), so a call is one HTTP round trip and what differs between the
contenders is the client side. Each contender makes the same number of calls, with distinct
prompts, from the same number of concurrent workers (32), through the same driver:

- ``raw aiohttp``: ``session.post(url, json=body)`` and ``await response.json()``, the body
  written out by hand with the same fields this library sends: the floor;
- ``httpx.AsyncClient``: the same POST through httpx;
- ``official SDK``: ``modelslab_py``'s async path, ``Community.async_text_to_image``, its
  ``client.base_url`` pointed at the emulator's ``/api/`` (it appends ``v6/images/text2img``);
- ``dreambooth_async``: ``await client.generate(Text2Img(...))`` with ``api_version="v6"``:
  request validation, the wire converter, the transport's retry wrapper, the answer parser and
  the job handle, all included.

The contenders take turns in many short rounds against one emulator, in an order that rotates,
so that a noisy neighbour hurts them alike. Reported: calls per second (median round), its ratio
to raw aiohttp (the median over rounds of the ratio within each round; the goal for this library
is at least 0.8x), the client process's CPU time per call, which is the overhead itself,
undiluted by the emulator's share of the time, likewise as a ratio, and how busy the emulator
was (its process's CPU time over the round's wall time: it is one single-threaded process, so
near 1.0 it, not the client, would set the pace).

    python -m benchmarks.bench_overhead [--quick] [--profile] [--canned]

``--profile`` also runs ``generate()`` under cProfile and prints where its time goes.

``--canned`` times only the client's own work instead: the same ``generate()`` calls with the
transport's HTTP exchange (``Transport._post_once``) answering a fixed success body at once, no
network, no emulator; ``time.process_time`` per call, the best of 7 rounds of 5,000 calls after
2,000 warm-up calls. Its spread is far narrower than the network rounds', so it shows what a
change to the call path saves. Run from this file's path with ``PYTHONPATH`` at another
checkout to time that checkout's code (``_post_once`` is replaced by name).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import importlib
import io
import json
import pstats
import statistics
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from multidict import CIMultiDict

import dreambooth_async as dba
from benchmarks._harness import INSTANT_OPTIONS, running_emulator, table, write_results

KEY = "emulator-key"
CONCURRENCY = 32
V6_TEXT2IMG = "/api/v6/images/text2img"

#: One call: make request number ``i`` and say whether it came back as a success.
Call = Callable[[int], Awaitable[bool]]
#: A contender: given the emulator's base URL and a prompt tag, set up its client and yield the
#: call (setup and teardown are outside the timed part).
Contender = Callable[[str, str], contextlib.AbstractAsyncContextManager[Call]]


def wire_body(tag: str, i: int) -> dict[str, Any]:
    """The body the hand-written clients send: what ``to_wire`` makes of our request."""
    return {
        "key": KEY,
        "model_id": "midjourney",
        "prompt": f"{tag} prompt {i}",
        "negative_prompt": None,
        "width": "512",
        "height": "512",
        "samples": "1",
        "num_inference_steps": "30",
        "seed": i,
    }


@contextlib.asynccontextmanager
async def raw_aiohttp(base_url: str, tag: str) -> AsyncIterator[Call]:
    url = base_url + V6_TEXT2IMG
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def call(i: int) -> bool:
            async with http.post(url, json=wire_body(tag, i)) as response:
                answer = await response.json()
            return bool(answer.get("status") == "success")

        yield call


@contextlib.asynccontextmanager
async def with_httpx(base_url: str, tag: str) -> AsyncIterator[Call]:
    import httpx

    url = base_url + V6_TEXT2IMG
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:

        async def call(i: int) -> bool:
            response = await http.post(url, json=wire_body(tag, i))
            return bool(response.json().get("status") == "success")

        yield call


def sdk_unavailable() -> str | None:
    """Why the official SDK cannot be run here, or None when it can."""
    try:
        importlib.import_module("modelslab_py.core.apis.community")
    except ImportError as exc:
        # modelslab-py 0.2.3 imports `requests` at the top of its client module without
        # declaring it as a dependency: `pip install modelslab-py` alone cannot import.
        return f"modelslab_py cannot be imported: {exc}"
    return None


@contextlib.asynccontextmanager
async def official_sdk(base_url: str, tag: str) -> AsyncIterator[Call]:
    # The SDK ships no type information.
    from modelslab_py.core.apis.community import Community  # type: ignore[import-untyped]
    from modelslab_py.core.client import Client  # type: ignore[import-untyped]
    from modelslab_py.schemas.community import Text2Image  # type: ignore[import-untyped]

    client = Client(api_key=KEY)
    # The SDK builds every URL as client.base_url + "v6/images/...": a plain attribute, so the
    # emulator's root plus "/api/" gives exactly the v6 paths.
    client.base_url = base_url + "/api/"
    api = Community(client=client)

    async def call(i: int) -> bool:
        # The SDK's schema carries numbers as numbers; the emulator accepts both forms.
        schema = Text2Image(
            model_id="midjourney",
            prompt=f"{tag} prompt {i}",
            width=512,
            height=512,
            samples=1,
            num_inference_steps=30,
            seed=i,
        )
        answer = await api.async_text_to_image(schema)
        return bool(answer.get("status") == "success")

    try:
        with warnings.catch_warnings():
            # It calls pydantic's deprecated .dict() on every request: the warning machinery
            # still runs (part of its cost), but the message is not printed 10,000 times.
            warnings.simplefilter("ignore", DeprecationWarning)
            yield call
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def ours(base_url: str, tag: str) -> AsyncIterator[Call]:
    async with dba.DreamboothClient(
        KEY, base_url=base_url, api_version="v6", max_concurrency=CONCURRENCY
    ) as client:

        async def call(i: int) -> bool:
            request = dba.Text2Img(model_id="midjourney", prompt=f"{tag} prompt {i}", seed=i)
            result = await client.generate(request)
            return result.status == "success"

        yield call


async def drive(call: Call, count: int, concurrency: int) -> tuple[float, float, int]:
    """``count`` calls from ``concurrency`` workers: (wall seconds, CPU seconds, failures)."""
    indices = iter(range(count))
    failures = 0

    async def worker() -> None:
        nonlocal failures
        # One shared iterator: each worker takes the next index as soon as it is free.
        for i in indices:
            if not await call(i):
                failures += 1

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - wall, time.process_time() - cpu, failures


def contenders() -> tuple[dict[str, Contender], dict[str, str]]:
    """The contenders that can run here, and a reason for each that cannot."""
    runnable: dict[str, Contender] = {"raw aiohttp": raw_aiohttp}
    skipped: dict[str, str] = {}
    try:
        importlib.import_module("httpx")
    except ImportError:
        skipped["httpx.AsyncClient"] = "httpx is not installed"
    else:
        runnable["httpx.AsyncClient"] = with_httpx
    reason = sdk_unavailable()
    if reason is None:
        runnable["official SDK (modelslab-py, async)"] = official_sdk
    else:
        skipped["official SDK (modelslab-py, async)"] = reason
    runnable["dreambooth_async generate()"] = ours
    return runnable, skipped


async def run(quick: bool = False) -> dict[str, Any]:
    # Many short rounds rather than a few long ones: the machine's load drifts (other work
    # shares it), and a ratio taken within one round compares contenders under the same load.
    # httpx takes about ten times as long as the others per call: it sets the duration.
    calls = 500 if quick else 2_000
    rounds = 7 if quick else 15
    warmup = 200
    runnable, skipped = contenders()
    # Per contender and round: wall seconds, client CPU seconds, emulator CPU seconds, failures.
    samples: dict[str, list[tuple[float, float, float, int]]] = {name: [] for name in runnable}
    async with running_emulator(*INSTANT_OPTIONS) as emulator:
        for n in range(rounds):
            names = list(runnable)
            # Rotate the order each round, so no contender always follows the same one.
            names = names[n % len(names) :] + names[: n % len(names)]
            for name in names:
                async with runnable[name](emulator.base_url, f"r{n} {name}") as call:
                    await drive(call, warmup, CONCURRENCY)  # connections, caches, imports
                    server_before = emulator.cpu_seconds() or 0.0
                    wall, cpu, failures = await drive(call, calls, CONCURRENCY)
                    server = (emulator.cpu_seconds() or 0.0) - server_before
                samples[name].append((wall, cpu, server, failures))
    rows: dict[str, Any] = {}
    for name, runs in samples.items():
        rates = [calls / wall for wall, _, _, _ in runs]
        rows[name] = {
            "calls_per_second": statistics.median(rates),
            "calls_per_second_rounds": rates,
            "client_cpu_us_per_call": statistics.median(cpu / calls * 1e6 for _, cpu, _, _ in runs),
            # The share of a core the emulator used while serving this contender: well under
            # 1.0 means the emulator was not what held the contender back.
            "emulator_cpu_cores": statistics.median(server / wall for wall, _, server, _ in runs),
            "failures": sum(f for _, _, _, f in runs),
        }
    floor = samples["raw aiohttp"]
    for name, row in rows.items():
        # The median over rounds of the ratio to raw aiohttp in the same round.
        pairs = list(zip(samples[name], floor, strict=True))
        row["x_raw_aiohttp"] = statistics.median(f[0] / s[0] for s, f in pairs)
        row["cpu_x_raw_aiohttp"] = statistics.median(s[1] / f[1] for s, f in pairs)
    return {
        "quick": quick,
        "calls_per_round": calls,
        "rounds": rounds,
        "concurrency": CONCURRENCY,
        "emulator_options": list(INSTANT_OPTIONS),
        # The most the emulator was kept busy serving any contender (cores).
        "emulator_cpu_cores": max(row["emulator_cpu_cores"] for row in rows.values()),
        "contenders": rows,
        "skipped": skipped,
        "goal": "dreambooth_async generate() >= 0.8x raw aiohttp calls per second",
    }


def render(results: dict[str, Any]) -> str:
    rows = [
        [
            name,
            r["calls_per_second"],
            r["x_raw_aiohttp"],
            r["client_cpu_us_per_call"],
            r["cpu_x_raw_aiohttp"],
            r["emulator_cpu_cores"],
            r["failures"],
        ]
        for name, r in results["contenders"].items()
    ]
    rows += [
        [name, "skipped", reason, "", "", "", ""] for name, reason in results["skipped"].items()
    ]
    text = table(
        f"\nClient overhead: {results['calls_per_round']} v6 text2img calls x "
        f"{results['rounds']} rounds at concurrency {results['concurrency']}, instant emulator "
        "(calls/s: median round; ratios: median of the ratios within each round)",
        [
            "client",
            "calls/s",
            "x raw aiohttp",
            "client CPU us/call",
            "CPU x raw",
            "emulator cores",
            "failures",
        ],
        rows,
    )
    for name, r in results["contenders"].items():
        spread = ", ".join(f"{rate:.0f}" for rate in r["calls_per_second_rounds"])
        text += f"\n  {name} rounds: {spread}"
    return text


async def profile_ours(calls: int) -> str:
    """cProfile of ``generate()`` calls (this process only): the top of the cumulative list."""
    async with (
        running_emulator(*INSTANT_OPTIONS) as emulator,
        ours(emulator.base_url, "profile") as call,
    ):
        await drive(call, 200, CONCURRENCY)
        profiler = cProfile.Profile()
        profiler.enable()
        await drive(call, calls, CONCURRENCY)
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    return out.getvalue()


#: The instant emulator's answer to a v6 text2img submission, as ``--canned`` replays it.
CANNED_ANSWER = json.dumps(
    {
        "status": "success",
        "generationTime": 0.0,
        "id": 1000001,
        "output": ["http://127.0.0.1:1/generations/x-0.png"],
        "proxy_links": ["http://127.0.0.1:1/generations/x-0.png"],
        "nsfw_content_detected": False,
        "webhook_status": "",
        "tip": "",
        "meta": {
            "H": 512,
            "W": 512,
            "file_prefix": "x",
            "guidance_scale": 7.5,
            "model_id": "midjourney",
            "n_samples": 1,
            "negative_prompt": "blurry",
            "prompt": "p",
            "scheduler": "UniPCMultistepScheduler",
            "seed": 1,
            "steps": 20,
        },
    }
).encode()


async def canned(calls: int = 5_000, rounds: int = 7, warmup: int = 2_000) -> dict[str, Any]:
    """CPU per ``generate()`` with the HTTP exchange answered at once (see the docstring)."""
    headers = CIMultiDict({"Content-Type": "application/json; charset=utf-8"})

    async def answer(*_: Any) -> tuple[int, Any, bytes]:
        return 200, headers, CANNED_ANSWER

    transport = importlib.import_module("dreambooth_async._transport").Transport
    real = transport._post_once
    transport._post_once = answer
    try:
        async with dba.DreamboothClient(
            KEY, base_url="http://127.0.0.1:1", api_version="v6", max_concurrency=CONCURRENCY
        ) as client:

            async def run(count: int, tag: str) -> float:
                started = time.process_time()
                for i in range(count):
                    request = dba.Text2Img(model_id="midjourney", prompt=f"{tag} {i}", seed=i)
                    await client.generate(request)
                return (time.process_time() - started) / count * 1e6

            await run(warmup, "warm-up")
            per_call = [await run(calls, f"round {n}") for n in range(rounds)]
    finally:
        transport._post_once = real
    return {"calls": calls, "rounds": rounds, "best_us": min(per_call), "rounds_us": per_call}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    parser.add_argument("--profile", action="store_true", help="also profile generate()")
    parser.add_argument(
        "--canned",
        action="store_true",
        help="only the client's CPU per generate(), the HTTP exchange answered at once",
    )
    args = parser.parse_args()
    if args.canned:
        found = asyncio.run(canned())
        spread = ", ".join(f"{us:.1f}" for us in found["rounds_us"])
        print(
            f"generate() with the HTTP exchange canned ({dba.__file__}): best "
            f"{found['best_us']:.1f} us per call of {found['rounds']} x {found['calls']} "
            f"({spread})"
        )
        return
    results = asyncio.run(run(quick=args.quick))
    print(render(results))
    path = write_results("overhead", {"benchmark": "overhead", **results})
    print(f"\nwritten to {path}")
    if args.profile:
        print(asyncio.run(profile_ours(3_000)))


if __name__ == "__main__":
    main()
