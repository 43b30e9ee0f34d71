"""The progress reporter (fed synthetic events with a fake clock) and the retried event."""

from __future__ import annotations

import io

import pytest

import dreambooth_async as dba
from dreambooth_async._progress import ProgressReporter, format_duration
from dreambooth_async.emulator import DEFAULT_KEY, CostModel, Emulator, EmulatorConfig, FaultConfig


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ev(kind: str, index: int, clock: Clock, **fields: object) -> dba.BatchEvent:
    return dba.BatchEvent(kind=kind, index=index, time=clock.now, **fields)  # type: ignore[arg-type]


def test_estimate_uses_the_service_etas_before_anything_finished() -> None:
    clock = Clock()
    out = io.StringIO()
    progress = ProgressReporter(10, stream=out, bar=False, interval=0, clock=clock)
    for i in range(2):
        progress(ev("submitted", i, clock, concurrency=2))
        progress(ev("queued", i, clock, eta=10.0, concurrency=2))
    # Two jobs of 10 s on 2 slots, 8 more waiting: 10 s + 4 rounds of 10 s.
    assert progress.estimate() == pytest.approx(50.0)
    clock.now += 4
    assert progress.estimate() == pytest.approx(46.0)
    assert "slots 2" in out.getvalue() and "~" in out.getvalue()


def test_estimate_switches_to_observed_durations_and_counts_outcomes() -> None:
    clock = Clock()
    out = io.StringIO()
    progress = ProgressReporter(4, stream=out, bar=False, interval=0, clock=clock)
    progress(ev("skipped", 0, clock))
    progress(ev("submitted", 1, clock, concurrency=1))
    progress(ev("queued", 1, clock, eta=2.0))
    clock.now += 5  # the job took 5 s, not the 2 its ETA promised
    progress(ev("done", 1, clock))
    assert progress.job_duration() == pytest.approx(5.0)
    progress(ev("submitted", 2, clock, concurrency=1))
    progress(ev("failed", 2, clock))
    assert progress.estimate() == pytest.approx(5.0)  # one left, one slot, 5 s a job
    progress(ev("submitted", 3, clock, concurrency=1))
    progress(ev("ambiguous", 3, clock))
    progress.close()
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("[4/4] done 2 (1 earlier) | failed 1 | ambiguous 1")
    assert progress.rate() == pytest.approx(3 / 5)


def test_unknown_total_and_nothing_to_go_on() -> None:
    progress = ProgressReporter(None, stream=io.StringIO(), bar=False)
    assert progress.estimate() is None
    assert "~? left" in progress.status_line()


def test_tqdm_bar_when_asked() -> None:
    clock = Clock()
    out = io.StringIO()
    progress = ProgressReporter(2, stream=out, bar=True, clock=clock)
    progress(ev("submitted", 0, clock, concurrency=1))
    progress(ev("done", 0, clock))
    progress(ev("failed", 1, clock))
    progress.close()
    text = out.getvalue()
    assert "2/2" in text and "failed=1" in text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "?"), (0.42, "0.4s"), (12.4, "12s"), (185, "3m05s"), (3725, "1h02m")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.anyio
async def test_transport_retries_are_reported_per_item() -> None:
    events: list[dba.BatchEvent] = []
    config = EmulatorConfig(
        time_scale=0.01,
        workers=8,
        queue_limit=8,
        cost=CostModel(base=3, per_step=0, per_sample=0, per_megapixel=0, noise=0),
        faults=FaultConfig(rate_5xx=0.5, seed=11),
    )
    async with Emulator(config) as emu:
        client = dba.DreamboothClient(
            DEFAULT_KEY,
            base_url=emu.base_url,
            poll=dba.PollPolicy().scaled(0.01),
            retry=dba.RetryPolicy(max_retries=8, backoff_base=0.01, backoff_cap=0.05),
        )
        async with client:
            items = await client.gather(
                [dba.Text2Img(model_id="midjourney", prompt=f"p{i}", seed=i) for i in range(12)],
                on_event=events.append,
            )
    retried = [e for e in events if e.kind == "retried"]
    assert retried, "a 503 before acceptance is retried by the transport"
    assert all(e.key == items[e.index].key for e in retried)
    # A 502 may have landed: those items are ambiguous; everything else is done.
    for item in items:
        assert item.ok or (item.ambiguous and isinstance(item.error, dba.AmbiguousSubmission))
    assert emu.stats.duplicate_submissions() == {}
