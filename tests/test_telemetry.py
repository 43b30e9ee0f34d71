"""OpenTelemetry spans and metrics, read back through the SDK's in-memory exporter and reader,
against the emulator: the span tree of one generation, one span per batch item, metrics that
match the emulator's own record of the jobs, events for retries, "queue full" and webhooks,
and never the key (nor a prompt unless asked for)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from _emulator_fixtures import POLL_SCALE, poller_config

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

import dreambooth_async as dba
from dreambooth_async.emulator import DEFAULT_KEY, Emulator, FaultConfig

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
#: A key that could not turn up by accident in any attribute.
KEY = "sk-telemetry-test-7f3a9c1e5b"


@attrs.frozen
class Otel:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    options: dba.TelemetryOptions

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


@pytest.fixture
def otel() -> Iterator[Otel]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    options = dba.TelemetryOptions(tracer_provider=tracer_provider, meter_provider=meter_provider)
    yield Otel(exporter, reader, options)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def emulator(**overrides: Any) -> Emulator:
    return Emulator(poller_config(keys=(KEY,), **overrides))


def client_for(emu: Emulator, otel: Otel, **options: Any) -> dba.DreamboothClient:
    options.setdefault("poll", dba.PollPolicy().scaled(POLL_SCALE))
    return dba.DreamboothClient(KEY, base_url=emu.base_url, telemetry=otel.options, **options)


def request(i: int = 0) -> dba.Text2Img:
    return dba.Text2Img(model_id="midjourney", prompt=f"a secret garden {i}", seed=i)


def by_operation(spans: Sequence[ReadableSpan], operation: str) -> list[ReadableSpan]:
    return [
        span for span in spans if (span.attributes or {}).get("dreambooth.operation") == operation
    ]


def everything_reported(otel: Otel) -> list[str]:
    """Every attribute value and name on every span, event, resource and metric point."""
    texts: list[str] = []
    for span in otel.finished():
        texts += [
            span.name,
            repr(dict(span.attributes or {})),
            repr(dict(span.resource.attributes)),
        ]
        for event in span.events:
            texts += [event.name, repr(dict(event.attributes or {}))]
    data = otel.metrics.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                texts += [metric.name, metric.description or ""]
                texts += [repr(dict(point.attributes or {})) for point in metric.data.data_points]
    return texts


def total(points: Sequence[Any]) -> float:
    return sum(
        point.sum if isinstance(point, HistogramDataPoint) else point.value for point in points
    )


async def test_one_generate_is_a_span_tree_of_submission_and_fetches(otel: Otel) -> None:
    async with emulator() as emu, client_for(emu, otel) as client:
        result = await client.generate(request())
        record = emu.jobs[int(result.id)]
        base_url = emu.base_url
        port = int(base_url.rsplit(":", 1)[1])
    spans = otel.finished()
    (generation,) = [span for span in spans if span.name == "dreambooth generate"]
    attributes = dict(generation.attributes or {})
    assert generation.parent is None
    assert attributes["dreambooth.job.id"] == result.id
    assert attributes["dreambooth.model_id"] == "midjourney"
    assert attributes["dreambooth.api_version"] == "v6"
    assert attributes["dreambooth.outcome"] == "success"
    assert attributes["dreambooth.resolved_by"] == "poll"
    (submission,) = by_operation(spans, "submit")
    fetches = by_operation(spans, "fetch")
    # The job was queued at first: it cost fetches, each one a child of the generation, made
    # from the poller's own task.
    assert len(fetches) == len(record.fetched_at) >= 1
    assert attributes["dreambooth.job.fetches"] == len(fetches)
    for child in (submission, *fetches):
        assert child.kind is SpanKind.CLIENT
        assert child.name == "POST"
        assert child.parent is not None
        assert child.parent.span_id == generation.context.span_id
        assert child.context.trace_id == generation.context.trace_id
        http = dict(child.attributes or {})
        assert http["http.request.method"] == "POST"
        assert http["http.response.status_code"] == 200
        assert http["server.address"] == "127.0.0.1"
        assert http["server.port"] == port
        assert str(http["url.full"]).startswith(base_url + "/api/v6/images/")
    assert all(fetch.start_time >= submission.end_time for fetch in fetches)  # type: ignore[operator]
    texts = everything_reported(otel)
    assert not [text for text in texts if KEY in text]
    assert not [text for text in texts if "secret garden" in text]  # prompts only when asked


async def test_a_batch_of_20_has_a_span_per_item_and_metrics_match_the_emulator(
    otel: Otel,
) -> None:
    async with emulator() as emu, client_for(emu, otel) as client:
        items = await client.gather([request(i) for i in range(20)])
        assert [item.status for item in items] == ["done"] * 20
        pending = otel.points("dreambooth.client.jobs.pending")
        slots = otel.points("dreambooth.client.slots.in_use")
    spans = otel.finished()
    item_spans = [span for span in spans if span.name == "dreambooth batch item"]
    assert len(item_spans) == 20
    by_index = {dict(span.attributes or {})["dreambooth.batch.index"]: span for span in item_spans}
    assert sorted(by_index) == list(range(20))
    records = []
    for item in items:
        attributes = dict(by_index[item.index].attributes or {})
        assert attributes["dreambooth.job.id"] == item.job_id
        assert attributes["dreambooth.outcome"] == "success"
        record = emu.jobs[int(str(item.job_id))]
        records.append(record)
        # Its span counts the fetches the emulator answered for its job.
        assert attributes["dreambooth.job.fetches"] == len(record.fetched_at)
        children = [
            span
            for span in spans
            if span.parent is not None
            and span.parent.span_id == by_index[item.index].context.span_id
        ]
        assert len(by_operation(children, "fetch")) == len(record.fetched_at)
        assert len(by_operation(children, "submit")) >= 1
    # Fetches per job: as many jobs, and as many fetches, as the emulator saw.
    fetch_points = otel.points("dreambooth.client.job.fetches")
    assert sum(point.count for point in fetch_points) == 20
    assert total(fetch_points) == sum(len(record.fetched_at) for record in records)
    # Job durations: from acceptance to the result, so each is at least the job's time on the
    # service (acceptance to finish, in the emulator's record) less a round trip, and no later
    # than the last fetch the emulator answered for it.
    durations = otel.points("dreambooth.client.job.duration")
    assert sum(point.count for point in durations) == 20
    service = [record.scheduled_finish - record.created_at for record in records]
    observed = [record.fetched_at[-1] - record.created_at for record in records]
    assert min(point.min for point in durations) >= min(service) - 0.05
    assert max(point.max for point in durations) <= max(observed) + 0.05
    assert sum(service) - 0.05 * 20 <= total(durations) <= sum(observed) + 0.05 * 20
    # Every job and slot was given back.
    assert total(pending) == 0 and total(slots) == 0
    assert not [text for text in everything_reported(otel) if KEY in text]


async def test_pending_jobs_and_slots_while_a_job_runs(otel: Otel) -> None:
    async with emulator() as emu, client_for(emu, otel) as client:
        job = await client.submit(request())
        assert total(otel.points("dreambooth.client.jobs.pending")) == 1
        assert total(otel.points("dreambooth.client.slots.in_use")) == 1
        await job
        assert total(otel.points("dreambooth.client.jobs.pending")) == 0
        assert total(otel.points("dreambooth.client.slots.in_use")) == 0
    # A bare submit() has a span of its own, which ends with the job.
    (span,) = [span for span in otel.finished() if span.name == "dreambooth submit"]
    assert dict(span.attributes or {})["dreambooth.outcome"] == "success"


async def test_retries_and_queue_full_answers_are_events_and_counts(otel: Otel) -> None:
    # 429s of a rate limit (not the queue) on submissions and fetches, and a queue of two,
    # whose refusals come as HTTP 429 too (http_errors; else they are 200s with an error body).
    faults = FaultConfig(seed=3, rate_429=0.3, retry_after_429=0.1)
    retry = dba.RetryPolicy(max_retries=20, backoff_base=0.001, backoff_cap=0.01)
    async with (
        emulator(queue_limit=2, faults=faults, http_errors=True) as emu,
        client_for(emu, otel, retry=retry) as client,
    ):
        results = await asyncio.gather(*(client.generate(request(i)) for i in range(6)))
        assert len(results) == 6
        stats = emu.stats
    spans = otel.finished()
    generations = [span for span in spans if span.name == "dreambooth generate"]
    events = [event for span in generations for event in span.events]
    queue_full = [event for event in events if event.name == "dreambooth.queue_full"]
    retries = [event for event in events if event.name == "dreambooth.retry"]
    assert len(queue_full) == stats.rejected_queue_full > 0
    assert stats.faults["429"] > 0
    # Every refusal was retried, on the span of the generation it belonged to (fetches too).
    assert len(retries) == stats.rejected_queue_full + stats.faults["429"]
    assert total(otel.points("dreambooth.client.queue_full")) == stats.rejected_queue_full
    assert total(otel.points("dreambooth.client.retries")) == len(retries)
    # Each refused attempt is a span of its own, with its status code.
    refused = [span for span in spans if dict(span.attributes or {}).get("error.type") == "429"]
    assert len(refused) == stats.rejected_queue_full + stats.faults["429"]
    assert all(span.status.status_code is StatusCode.ERROR for span in refused)
    assert all(dict(span.attributes or {})["http.response.status_code"] == 429 for span in refused)


async def test_a_webhook_resolution_is_an_event_of_the_job(otel: Otel) -> None:
    receiver = dba.WebhookReceiver()
    policy = dba.PollPolicy(webhook_slowdown=100.0).scaled(POLL_SCALE)
    async with emulator() as emu, client_for(emu, otel, webhooks=receiver, poll=policy) as client:
        result = await client.generate(request())
    (generation,) = [span for span in otel.finished() if span.name == "dreambooth generate"]
    names = [event.name for event in generation.events]
    assert names.index("dreambooth.webhook.received") < names.index("dreambooth.webhook.resolved")
    assert dict(generation.attributes or {})["dreambooth.resolved_by"] == "webhook"
    (point,) = otel.points("dreambooth.client.job.duration")
    assert dict(point.attributes)["dreambooth.resolved_by"] == "webhook"
    assert result.id == dict(generation.attributes or {})["dreambooth.job.id"]
    # The webhook URL (its token) is nowhere in the telemetry.
    webhook = emu.jobs[int(result.id)].params.webhook
    assert webhook is not None
    assert not [text for text in everything_reported(otel) if webhook.rsplit("/", 1)[1] in text]


async def test_prompts_only_when_asked_for(otel: Otel) -> None:
    options = attrs.evolve(otel.options, record_prompts=True)
    async with emulator() as emu, client_for(emu, attrs.evolve(otel, options=options)) as client:
        await client.generate(request(5))
    (generation,) = [span for span in otel.finished() if span.name == "dreambooth generate"]
    assert dict(generation.attributes or {})["dreambooth.request.prompt"] == "a secret garden 5"


async def test_metrics_without_a_tracer_provider(otel: Otel) -> None:
    # No tracer set up anywhere (the API's placeholder): no span is made, the measures still are.
    options = attrs.evolve(otel.options, tracer_provider=None)
    async with emulator() as emu, client_for(emu, attrs.evolve(otel, options=options)) as client:
        items = await client.gather([request(i) for i in range(3)])
        assert all(item.ok for item in items)
        fetched = sum(len(emu.jobs[int(str(item.job_id))].fetched_at) for item in items)
    assert otel.finished() == []
    points = otel.points("dreambooth.client.job.fetches")
    assert sum(point.count for point in points) == 3 and total(points) == fetched
    assert {dict(point.attributes)["dreambooth.model_id"] for point in points} == {"midjourney"}
    assert total(otel.points("dreambooth.client.jobs.pending")) == 0


async def test_telemetry_false_reports_nothing(otel: Otel) -> None:
    async with (
        emulator() as emu,
        dba.DreamboothClient(
            KEY,
            base_url=emu.base_url,
            poll=dba.PollPolicy().scaled(POLL_SCALE),
            telemetry=attrs.evolve(otel.options, enabled=False),
        ) as client,
    ):
        await client.generate(request())
    assert otel.finished() == []


# --- the global providers, and no opentelemetry at all ----------------------------------------

GLOBAL_PROVIDERS = """
import asyncio, json
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import dreambooth_async as dba
from dreambooth_async.emulator import CostModel, EmulatorConfig, serve

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

async def main():
    cost = CostModel(base=10, per_step=0, per_sample=0, per_megapixel=0, noise=0)
    config = EmulatorConfig(time_scale=0.01, sync_window=0, cost=cost)
    async with serve(config) as base_url:
        async with dba.DreamboothClient("emulator-key", base_url=base_url,
                                        poll=dba.PollPolicy().scaled(0.01)) as client:
            await client.generate(dba.Text2Img(model_id="midjourney", prompt="a cat"))

asyncio.run(main())
spans = exporter.get_finished_spans()
names = {s.context.span_id: s.name for s in spans}
data = reader.get_metrics_data()
print(json.dumps({
    "tree": sorted([s.name, names.get(s.parent.span_id) if s.parent else None] for s in spans),
    "metrics": sorted({m.name for r in data.resource_metrics for sm in r.scope_metrics
                       for m in sm.metrics}),
}))
"""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_globally_configured_providers_get_the_spans_and_metrics() -> None:
    done = await anyio.to_thread.run_sync(run_python, GLOBAL_PROVIDERS)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    tree = report["tree"]
    assert ["dreambooth generate", None] in tree
    children = [parent for name, parent in tree if name == "POST"]
    assert len(children) >= 2 and set(children) == {"dreambooth generate"}
    assert {
        "dreambooth.client.jobs.pending",
        "dreambooth.client.slots.in_use",
        "dreambooth.client.job.duration",
        "dreambooth.client.job.fetches",
    } <= set(report["metrics"])


METER_PROVIDER_SET_UP_LATE = """
import asyncio, json
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
import dreambooth_async as dba
from dreambooth_async.emulator import CostModel, EmulatorConfig, serve

reader = InMemoryMetricReader()

async def main():
    cost = CostModel(base=10, per_step=0, per_sample=0, per_megapixel=0, noise=0)
    config = EmulatorConfig(time_scale=0.01, sync_window=0, cost=cost)
    async with serve(config) as base_url:
        async with dba.DreamboothClient("emulator-key", base_url=base_url,
                                        poll=dba.PollPolicy().scaled(0.01)) as client:
            job = await client.submit(dba.Text2Img(model_id="midjourney", prompt="early"))
            # The SDK arrives while a job that started without it is pending.
            metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
            await job
            await client.generate(dba.Text2Img(model_id="midjourney", prompt="late"))

asyncio.run(main())
points = {}
for r in reader.get_metrics_data().resource_metrics:
    for sm in r.scope_metrics:
        for m in sm.metrics:
            for p in m.data.data_points:
                value = getattr(p, "value", None)
                points[m.name] = points.get(m.name, 0) + (p.count if value is None else value)
print(json.dumps(points))
"""


async def test_a_meter_provider_set_up_after_the_client_counts_from_then_on() -> None:
    # Until an SDK is set up the client makes no measurements (they would be dropped); a job
    # that started before it must not be taken off the pending count it was never put on.
    done = await anyio.to_thread.run_sync(run_python, METER_PROVIDER_SET_UP_LATE)
    assert done.returncode == 0, done.stderr
    points = json.loads(done.stdout)
    assert points["dreambooth.client.jobs.pending"] == 0
    assert points["dreambooth.client.slots.in_use"] == 0
    # Both jobs ended under the SDK, so both are measured.
    assert points["dreambooth.client.job.fetches"] == 2


TRACER_PROVIDER_SET_UP_LATE = """
import asyncio, json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import dreambooth_async as dba
from dreambooth_async.emulator import CostModel, EmulatorConfig, serve

exporter = InMemorySpanExporter()

async def main():
    # Each job answered in its submission's answer: one POST per generate().
    cost = CostModel(base=10, per_step=0, per_sample=0, per_megapixel=0, noise=0)
    config = EmulatorConfig(time_scale=0.001, sync_window=1_000_000, cost=cost)
    async with serve(config) as base_url:
        async with dba.DreamboothClient("emulator-key", base_url=base_url) as client:
            await client.generate(dba.Text2Img(model_id="midjourney", prompt="early"))
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
            await client.generate(dba.Text2Img(model_id="midjourney", prompt="late"))

asyncio.run(main())
print(json.dumps(sorted(span.name for span in exporter.get_finished_spans())))
"""


async def test_a_tracer_provider_set_up_after_the_client_traces_from_then_on() -> None:
    # Until an SDK is set up the client makes no spans; the client notices one set up later.
    done = await anyio.to_thread.run_sync(run_python, TRACER_PROVIDER_SET_UP_LATE)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["POST", "dreambooth generate"]


WITHOUT_OPENTELEMETRY = """
import asyncio, sys

class HideOpenTelemetry:
    # As if opentelemetry-api were not installed.
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, HideOpenTelemetry())
import dreambooth_async as dba
from dreambooth_async.emulator import CostModel, EmulatorConfig, serve

async def main():
    cost = CostModel(base=10, per_step=0, per_sample=0, per_megapixel=0, noise=0)
    config = EmulatorConfig(time_scale=0.01, sync_window=0, cost=cost)
    async with serve(config) as base_url:
        async with dba.DreamboothClient("emulator-key", base_url=base_url,
                                        poll=dba.PollPolicy().scaled(0.01)) as client:
            result = await client.generate(dba.Text2Img(model_id="midjourney", prompt="a cat"))
            items = await client.gather([dba.Text2Img(model_id="midjourney", prompt=f"cat {i}")
                                         for i in range(3)])
            assert client.poller.fetch_calls >= 1
    return result, items

result, items = asyncio.run(main())
assert result.status == "success" and all(item.ok for item in items)
assert not [name for name in sys.modules if name.startswith("opentelemetry")]
print("ok")
"""


async def test_without_opentelemetry_the_library_imports_and_runs_unchanged() -> None:
    done = await anyio.to_thread.run_sync(run_python, WITHOUT_OPENTELEMETRY)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_default_is_a_no_op_without_opentelemetry() -> None:
    # The selection itself: off when asked, and the no-op when the import fails.
    from dreambooth_async._otel import OtelTelemetry, telemetry_for
    from dreambooth_async._telemetry import NO_TELEMETRY

    off = telemetry_for(dba.TelemetryOptions(enabled=False), api_version="v6", base_url="http://x")
    assert off is NO_TELEMETRY and not off.enabled
    on = telemetry_for(dba.TelemetryOptions(), api_version="v6", base_url="http://x")
    assert isinstance(on, OtelTelemetry) and on.enabled
    assert DEFAULT_KEY not in repr(on)
