"""The cost of OpenTelemetry tracing: ``generate()`` with telemetry off, on without an SDK, and
on with an SDK recording every span and metric, beside raw aiohttp, in one run.

The emulator and the driver are those of :mod:`benchmarks.bench_overhead` (imported, not
copied): an instant emulator in a process of its own, so a call is one HTTP round trip, and the
same number of calls from 32 concurrent workers for each contender:

- ``raw aiohttp``: the hand-written POST of the overhead benchmark, the floor;
- ``telemetry off``: ``DreamboothClient(telemetry=False)``: the no-op hooks only; and the same
  once more (``telemetry off, again``), whose distance to the first is this run's noise;
- ``API, no SDK``: ``telemetry=True`` (the default) with ``opentelemetry-api`` installed and no
  SDK configured: the API's own no-op spans and instruments, what most installs pay;
- ``SDK, tracing on``: an SDK ``TracerProvider`` (a ``BatchSpanProcessor`` into an exporter that
  drops the spans, so no I/O is measured) and a ``MeterProvider`` with a reader, given through
  ``TelemetryOptions``: two spans per call (the generation and its HTTP exchange) and the job
  metrics, all recorded. The processor's export thread is in the process, so its CPU counts.

Rounds rotate the order, as in the overhead benchmark. Reported per contender: calls per
second (median round) and its ratio to raw aiohttp within each round (median), the client
process's CPU time per call and its ratio to raw aiohttp's, and the CPU each telemetry mode
adds to ``telemetry off`` per call (median of the differences within each round).

On a shared machine the rounds' CPU figures wander by tens of microseconds, more than the
no-SDK hooks cost. So the hooks are also timed alone, in process and without the network: the
telemetry calls one ``generate()`` makes, for a job answered at once and for a queued job
fetched twice, repeated many times in each mode (best of several repeats).

    python -m benchmarks.bench_telemetry [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import dreambooth_async as dba
from benchmarks._harness import INSTANT_OPTIONS, running_emulator, table, write_results
from benchmarks.bench_overhead import CONCURRENCY, KEY, Call, Contender, drive, raw_aiohttp


def _client(base_url: str, telemetry: bool | dba.TelemetryOptions) -> dba.DreamboothClient:
    return dba.DreamboothClient(
        KEY,
        base_url=base_url,
        api_version="v6",
        max_concurrency=CONCURRENCY,
        telemetry=telemetry,
    )


def _calls(client: dba.DreamboothClient, tag: str) -> Call:
    async def call(i: int) -> bool:
        request = dba.Text2Img(model_id="midjourney", prompt=f"{tag} prompt {i}", seed=i)
        result = await client.generate(request)
        return result.status == "success"

    return call


@contextlib.asynccontextmanager
async def telemetry_off(base_url: str, tag: str) -> AsyncIterator[Call]:
    async with _client(base_url, False) as client:
        yield _calls(client, tag)


@contextlib.asynccontextmanager
async def api_only(base_url: str, tag: str) -> AsyncIterator[Call]:
    # The global providers: nothing in this process sets them, so they are the API's no-ops.
    async with _client(base_url, True) as client:
        yield _calls(client, tag)


@contextlib.asynccontextmanager
async def sdk_on(base_url: str, tag: str) -> AsyncIterator[Call]:
    options, shutdown = _sdk_options()
    try:
        async with _client(base_url, options) as client:
            yield _calls(client, tag)
    finally:
        shutdown()


def _sdk_options() -> tuple[dba.TelemetryOptions, Any]:
    """Options with an SDK recording everything (spans dropped at export), and a function
    that shuts the providers down."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Dropping(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Dropping()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])

    def shutdown() -> None:
        tracer_provider.shutdown()
        meter_provider.shutdown()

    options = dba.TelemetryOptions(tracer_provider=tracer_provider, meter_provider=meter_provider)
    return options, shutdown


def hooks_alone(repeats: int = 5, count: int = 20_000) -> dict[str, dict[str, float]]:
    """Microseconds of CPU per call for the telemetry calls of one ``generate()``, without the
    network: best of ``repeats`` runs of ``count`` calls, per mode and kind of job."""
    from dreambooth_async._otel import telemetry_for
    from dreambooth_async._telemetry import NO_TELEMETRY, Telemetry

    url = "http://127.0.0.1:7860"
    submit_url = url + "/api/v6/images/text2img"
    fetch_url = url + "/api/v6/images/fetch/123"
    request = dba.Text2Img(model_id="midjourney", prompt="a lighthouse")

    def answered_at_once(telemetry: Telemetry) -> None:
        trace = telemetry.generation("generate", request)
        with trace.active():
            exchange = telemetry.http("submit", submit_url, 0, str)
            exchange.answered(200)
            exchange.end()
            trace.job("123")
            telemetry.job_answered(trace, 0.5)
        trace.finish("success")

    def queued(telemetry: Telemetry) -> None:
        trace = telemetry.generation("generate", request)
        with trace.active():
            exchange = telemetry.http("submit", submit_url, 0, str)
            exchange.answered(200)
            exchange.end()
            trace.job("123")
            telemetry.job_started(trace, submitted=True)
        for _ in range(2):  # the poller's fetches, each under the job's trace
            with trace.active():
                exchange = telemetry.http("fetch", fetch_url, 0, str)
                exchange.answered(200)
                exchange.end()
        telemetry.job_ended(
            trace,
            outcome="success",
            error=None,
            duration=5.0,
            fetches=2,
            resolved_by="poll",
            submitted=True,
        )
        trace.finish("success")

    modes: dict[str, tuple[Telemetry, Any]] = {"telemetry off": (NO_TELEMETRY, None)}
    if importlib.util.find_spec("opentelemetry") is not None:
        api = telemetry_for(dba.TelemetryOptions(), api_version="v6", base_url=url)
        modes["API, no SDK"] = (api, None)
    if importlib.util.find_spec("opentelemetry.sdk") is not None:
        options, shutdown = _sdk_options()
        sdk = telemetry_for(options, api_version="v6", base_url=url)
        modes["SDK, tracing on"] = (sdk, shutdown)
    figures: dict[str, dict[str, float]] = {}
    for name, (telemetry, shutdown) in modes.items():
        row: dict[str, float] = {}
        for kind, one in (("answered at once", answered_at_once), ("queued, 2 fetches", queued)):
            best = float("inf")
            for _ in range(repeats):
                start = time.process_time()
                for _ in range(count):
                    one(telemetry)
                best = min(best, (time.process_time() - start) / count * 1e6)
            row[kind] = best
        figures[name] = row
        if shutdown is not None:
            shutdown()
    return figures


def contenders() -> tuple[dict[str, Contender], dict[str, str]]:
    """The contenders that can run here, and a reason for each that cannot."""
    runnable: dict[str, Contender] = {
        "raw aiohttp": raw_aiohttp,
        "telemetry off": telemetry_off,
        # The same again: how far two identical contenders drift apart in this run (noise).
        "telemetry off, again": telemetry_off,
    }
    skipped: dict[str, str] = {}
    try:
        importlib.import_module("opentelemetry.trace")
    except ImportError:
        skipped["API, no SDK"] = "opentelemetry-api is not installed"
    else:
        runnable["API, no SDK"] = api_only
    try:
        importlib.import_module("opentelemetry.sdk.trace")
    except ImportError:
        skipped["SDK, tracing on"] = "opentelemetry-sdk is not installed"
    else:
        runnable["SDK, tracing on"] = sdk_on
    return runnable, skipped


async def run(quick: bool = False) -> dict[str, Any]:
    calls = 500 if quick else 2_000
    rounds = 5 if quick else 11
    warmup = 200
    runnable, skipped = contenders()
    # Per contender and round: wall seconds, client CPU seconds, failures.
    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in runnable}
    async with running_emulator(*INSTANT_OPTIONS) as emulator:
        for n in range(rounds):
            names = list(runnable)
            names = names[n % len(names) :] + names[: n % len(names)]
            for name in names:
                async with runnable[name](emulator.base_url, f"t{n} {name}") as call:
                    await drive(call, warmup, CONCURRENCY)
                    wall, cpu, failures = await drive(call, calls, CONCURRENCY)
                samples[name].append((wall, cpu, failures))
    floor = samples["raw aiohttp"]
    off = samples["telemetry off"]
    rows: dict[str, Any] = {}
    for name, runs in samples.items():
        row: dict[str, Any] = {
            "calls_per_second": statistics.median(calls / wall for wall, _, _ in runs),
            "client_cpu_us_per_call": statistics.median(cpu / calls * 1e6 for _, cpu, _ in runs),
            "failures": sum(f for _, _, f in runs),
            "x_raw_aiohttp": statistics.median(
                f[0] / s[0] for s, f in zip(runs, floor, strict=True)
            ),
            "cpu_x_raw_aiohttp": statistics.median(
                s[1] / f[1] for s, f in zip(runs, floor, strict=True)
            ),
        }
        if name != "raw aiohttp":
            row["cpu_us_over_off"] = statistics.median(
                (s[1] - o[1]) / calls * 1e6 for s, o in zip(runs, off, strict=True)
            )
            row["cpu_x_off"] = statistics.median(
                s[1] / o[1] for s, o in zip(runs, off, strict=True)
            )
        rows[name] = row
    return {
        "quick": quick,
        "hooks_alone_us_per_call": hooks_alone(repeats=3 if quick else 5),
        "calls_per_round": calls,
        "rounds": rounds,
        "concurrency": CONCURRENCY,
        "emulator_options": list(INSTANT_OPTIONS),
        "contenders": rows,
        "skipped": skipped,
    }


def render_hooks(results: dict[str, Any]) -> str:
    hooks = results["hooks_alone_us_per_call"]
    kinds = list(next(iter(hooks.values())))
    return table(
        "\nThe telemetry calls of one generate() alone, in process, no network "
        "(CPU us per call, best of several runs)",
        ["mode", *kinds],
        [[name, *(row[kind] for kind in kinds)] for name, row in hooks.items()],
    )


def render(results: dict[str, Any]) -> str:
    rows = [
        [
            name,
            r["calls_per_second"],
            r["x_raw_aiohttp"],
            r["client_cpu_us_per_call"],
            r["cpu_x_raw_aiohttp"],
            r.get("cpu_us_over_off", ""),
            r.get("cpu_x_off", ""),
            r["failures"],
        ]
        for name, r in results["contenders"].items()
    ]
    rows += [
        [name, "skipped", reason, "", "", "", "", ""] for name, reason in results["skipped"].items()
    ]
    return table(
        f"\nTelemetry cost: {results['calls_per_round']} v6 text2img generate() calls x "
        f"{results['rounds']} rounds at concurrency {results['concurrency']}, instant emulator "
        "(medians over rounds of the ratios within each round)",
        [
            "contender",
            "calls/s",
            "x raw aiohttp",
            "client CPU us/call",
            "CPU x raw",
            "CPU us over off",
            "CPU x off",
            "failures",
        ],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    args = parser.parse_args()
    results = asyncio.run(run(quick=args.quick))
    print(render(results))
    print(render_hooks(results))
    path = write_results("telemetry", {"benchmark": "telemetry", **results})
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
