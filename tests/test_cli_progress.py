"""The progress display of ``generate`` (the ProgressReporter, fed batch events on a fake
clock): one time-left figure, a rate of this run's items only, and what is failing while
nothing succeeds."""

from __future__ import annotations

import io
import re

import pytest

import dreambooth_async as dba
from dreambooth_async._progress import ProgressReporter

SECRET = "sk-progress-9b2e4f6a1c"


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def ev(kind: str, index: int, clock: Clock, **fields: object) -> dba.BatchEvent:
    return dba.BatchEvent(kind=kind, index=index, time=clock.now, **fields)  # type: ignore[arg-type]


def _resumed_run(progress: ProgressReporter, clock: Clock) -> None:
    """200 items done earlier (skipped), 10 submitted earlier that finish at once (attached),
    then 4 of this run's own over 20 seconds."""
    for i in range(200):
        progress(ev("skipped", i, clock))
    for i in range(200, 210):
        progress(ev("attached", i, clock, concurrency=4))
        progress(ev("done", i, clock))
    for i in range(210, 214):
        progress(ev("submitted", i, clock, concurrency=4))
    clock.now += 20
    for i in range(210, 214):
        progress(ev("done", i, clock))


def test_a_resumed_run_counts_only_its_own_items_in_the_rate() -> None:
    clock = Clock()
    out = io.StringIO()
    progress = ProgressReporter(300, stream=out, bar=False, interval=0, clock=clock)
    _resumed_run(progress, clock)
    assert progress.rate() == pytest.approx(4 / 20)
    assert progress.done == 214 and progress.skipped == 200
    # The attached jobs' zero-second "durations" do not make the estimate optimistic.
    assert progress.job_duration() == pytest.approx(20.0)
    progress.close()
    last = out.getvalue().splitlines()[-1]
    assert "0.20/s" in last, last


def test_the_bar_shows_one_time_left_figure_and_this_runs_rate() -> None:
    pytest.importorskip("tqdm")
    clock = Clock()
    out = io.StringIO()
    progress = ProgressReporter(300, stream=out, bar=True, clock=clock)
    _resumed_run(progress, clock)
    progress.close()
    final = out.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    # tqdm's own "[elapsed<remaining, N item/s]" counts the 200 skipped items in the first
    # instant: neither its remaining time nor its rate is shown, only ours.
    assert final.count("left") == 1, final
    assert not re.search(r"\d\d:\d\d<", final), final
    rates = [float(r) for r in re.findall(r"(\d+(?:\.\d+)?) ?items?/s", final)]
    assert rates == [pytest.approx(0.2)], final
    assert "214/300" in final


def test_while_nothing_succeeds_the_line_says_what_fails() -> None:
    clock = Clock()
    out = io.StringIO()
    progress = ProgressReporter(
        5,
        stream=out,
        bar=False,
        interval=0,
        clock=clock,
        redact=lambda text: text.replace(SECRET, "***"),
    )
    progress(ev("submitted", 0, clock, concurrency=2))
    progress(
        ev(
            "retried",
            1,
            clock,
            detail=f"attempt 1: cannot connect to 127.0.0.1:9\n(key {SECRET})",
        )
    )
    line = progress.status_line()
    assert "last error: attempt 1: cannot connect to 127.0.0.1:9 (key ***)" in line
    progress(ev("failed", 1, clock, detail="TransportError: connection refused " + "x" * 300))
    line = progress.status_line()
    assert "last error: TransportError: connection refused" in line
    assert len(line) < 250 and line.endswith("...")
    # A success: the batch is working again, the error is old news.
    progress(ev("done", 0, clock))
    assert "last error" not in progress.status_line()
    progress(ev("ambiguous", 2, clock, detail="the answer was lost"))
    progress.close()
    text = out.getvalue()
    assert "last error: the answer was lost" in text.splitlines()[-1]
    assert SECRET not in text


def test_the_bar_says_what_fails_too() -> None:
    pytest.importorskip("tqdm")
    clock = Clock()
    out = io.StringIO()
    progress = ProgressReporter(3, stream=out, bar=True, clock=clock)
    progress(ev("submitted", 0, clock, concurrency=1))
    progress(ev("retried", 0, clock, detail="attempt 2: cannot connect to 127.0.0.1:9"))
    assert "last error: attempt 2: cannot connect" in out.getvalue()
    progress(ev("failed", 0, clock, detail="TransportError: cannot connect to 127.0.0.1:9"))
    progress.close()
    final = out.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert "last error: TransportError: cannot connect" in final
