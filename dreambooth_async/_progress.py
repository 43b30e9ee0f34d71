"""A progress display for batches, fed by batch events: a tqdm bar when tqdm is installed and
the output is a terminal, plain status lines otherwise.

The time-to-finish estimate uses what the service says, not only the rate so far: every queued
job's ETA tells when its slot frees up, and the items not yet submitted will each take about a
job's duration on one of the batch's slots. Early in a batch, before anything has finished, that
is the only estimate there is; later the observed durations take over from the ETAs.

The display shows that one estimate and nothing else of the kind: tqdm's own time-left and
rate, which count every ``update`` (items a resumed run skips arrive by the hundred in the first
second), are left out of the bar. The rate shown counts the items this run submitted and saw
finish. While failures are the latest news (nothing has succeeded since), the last error is
shown too, so a batch that cannot reach the service says why instead of only counting.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable, Sized
from typing import TYPE_CHECKING, Any, TextIO

from ._events import BatchEvent

if TYPE_CHECKING:
    from ._batch import MapOptions

__all__ = ["ProgressReporter", "format_duration"]

#: Longest error text the display shows (the summary at the end has the whole of it).
_ERROR_WIDTH = 100
#: tqdm's layout without its own remaining-time and rate: the postfix carries ours.
_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
_BAR_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}{postfix}]"


def format_duration(seconds: float | None) -> str:
    """``"1h02m"``, ``"3m05s"``, ``"12s"``, ``"0.4s"``; ``"?"`` when unknown."""
    if seconds is None or math.isnan(seconds) or seconds < 0:
        return "?"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class ProgressReporter:
    """Subscribe it to a batch (``on_event=reporter``) to show progress; :meth:`close` at the end.

    :param total: the number of items, when known (the bar then shows a fraction).
    :param stream: where to draw (default ``sys.stderr``).
    :param bar: ``True`` for tqdm, ``False`` for plain lines, ``None`` (default) for tqdm when it
        is installed and ``stream`` is a terminal.
    :param interval: seconds between plain status lines.
    :param redact: applied to error texts before they are shown (events carry the library's
        redacted messages already; a command line passes its client's redactor as well).
    """

    def __init__(
        self,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        bar: bool | None = None,
        interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self.total = total
        self._stream = stream if stream is not None else sys.stderr
        self._interval = interval
        self._clock = clock
        self.started = clock()
        self.done = 0
        self.skipped = 0
        self.failed = 0
        self.ambiguous = 0
        self.rate_limited = 0
        #: Items done that an earlier run had submitted (attached to by id): not this run's work.
        self.attached_done = 0
        self.concurrency: int | None = None
        #: The latest error text, until an item succeeds again.
        self.last_error: str | None = None
        self._redact = redact
        self._attached: set[int] = set()
        self._submitted_at: dict[int, float] = {}
        self._finish_at: dict[int, float | None] = {}  # in-flight items: expected finish
        self._durations: deque[float] = deque(maxlen=64)
        self._first_etas: deque[float] = deque(maxlen=64)
        self._last_line = 0.0
        self._closed = False
        self._bar: Any = None
        if bar is None:
            isatty = getattr(self._stream, "isatty", None)
            bar = bool(isatty and isatty())
        if bar:
            try:
                # tqdm.auto: the text bar in a terminal, a widget in a Jupyter notebook.
                from tqdm.auto import tqdm
            except ImportError:
                bar = False
            else:
                self._bar = tqdm(
                    total=total,
                    unit="item",
                    dynamic_ncols=True,
                    file=self._stream,
                    desc="batch",
                    bar_format=_BAR_FORMAT if total is not None else _BAR_FORMAT_NO_TOTAL,
                )

    # --- the hook -----------------------------------------------------------------------------

    def __call__(self, event: BatchEvent) -> None:
        """Take one batch event."""
        if event.concurrency is not None:
            self.concurrency = event.concurrency
        kind = event.kind
        index = event.index
        if kind == "submitted" or kind == "attached":
            self._submitted_at[index] = event.time
            self._finish_at[index] = None
            if kind == "attached":
                self._attached.add(index)
        elif kind == "queued":
            if event.eta is not None:
                self._finish_at[index] = event.time + event.eta
                if index in self._submitted_at:
                    self._first_etas.append(event.eta + event.time - self._submitted_at[index])
        elif kind == "rate_limited":
            self.rate_limited += 1
        elif kind == "retried" and event.detail:
            self._note_error(event.detail)
            if self._bar is not None:
                # No item ended, so no update() redraws the bar: show the error now.
                self._bar.set_postfix_str(self._postfix())
        if kind in ("done", "failed", "ambiguous", "skipped"):
            started = self._submitted_at.pop(index, None)
            self._finish_at.pop(index, None)
            attached = index in self._attached
            self._attached.discard(index)
            if kind == "done":
                self.done += 1
                self.last_error = None
                if attached:
                    # Submitted (and maybe finished) during an earlier run: its time here says
                    # nothing about this run's pace.
                    self.attached_done += 1
                elif started is not None:
                    self._durations.append(event.time - started)
            elif kind == "skipped":
                self.done += 1
                self.skipped += 1
            elif kind == "failed":
                self.failed += 1
                self._note_error(event.detail or "failed")
            else:
                self.ambiguous += 1
                self._note_error(event.detail or "ambiguous")
            self._advance()
            return
        self._maybe_line()

    def _note_error(self, detail: str) -> None:
        text = self._redact(detail) if self._redact is not None else detail
        text = " ".join(text.split())  # one line, whatever the service put in it
        if len(text) > _ERROR_WIDTH:
            text = text[: _ERROR_WIDTH - 3] + "..."
        self.last_error = text

    # --- figures ------------------------------------------------------------------------------

    @property
    def finished(self) -> int:
        """Items that ended, one way or another."""
        return self.done + self.failed + self.ambiguous

    def rate(self) -> float:
        """Items this run submitted that finished, per second: items an earlier run finished
        (skipped) or submitted (attached to by id) are left out, so a resumed run does not
        report hundreds of items a second."""
        elapsed = self._clock() - self.started
        own = self.finished - self.skipped - self.attached_done
        return own / elapsed if elapsed > 0 else 0.0

    def job_duration(self) -> float | None:
        """Seconds a job takes from submission to result: observed, else the service's ETAs."""
        sample = self._durations or self._first_etas
        return sum(sample) / len(sample) if sample else None

    def estimate(self) -> float | None:
        """Seconds until the batch is finished, or None when there is nothing to go on."""
        now = self._clock()
        duration = self.job_duration()
        in_flight = len(self._finish_at)
        waiting = 0
        if self.total is not None:
            waiting = max(0, self.total - self.finished - in_flight)
        elif in_flight == 0:
            return None
        if duration is None and (waiting or any(v is None for v in self._finish_at.values())):
            return None
        slots = max(1, self.concurrency or in_flight or 1)
        # The work left, in slot-seconds, spread over the slots: each in-flight job until its
        # expected finish, each waiting item one job duration.
        remaining = [
            max(0.0, finish - now) if finish is not None else (duration or 0.0) / 2
            for finish in self._finish_at.values()
        ]
        work = sum(remaining) + waiting * (duration or 0.0)
        longest = max(remaining, default=0.0)
        return max(longest, work / slots)

    def status_line(self) -> str:
        """One line: counts, rate, concurrency and the time-to-finish estimate."""
        of = f"/{self.total}" if self.total is not None else ""
        parts = [f"[{self.finished}{of}] done {self.done}"]
        if self.skipped:
            parts[-1] += f" ({self.skipped} earlier)"
        parts.append(f"failed {self.failed}")
        if self.ambiguous:
            parts.append(f"ambiguous {self.ambiguous}")
        parts.append(f"{self.rate():.2f}/s")
        if self.concurrency is not None:
            parts.append(f"slots {self.concurrency}")
        parts.append(f"~{format_duration(self.estimate())} left")
        if self.last_error is not None:
            parts.append(f"last error: {self.last_error}")
        return " | ".join(parts)

    # --- output -------------------------------------------------------------------------------

    def _advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(self._postfix(), refresh=False)
        else:
            self._maybe_line()

    def _postfix(self) -> str:
        text = f"failed={self.failed}"
        if self.ambiguous:
            text += f" ambiguous={self.ambiguous}"
        if self.concurrency is not None:
            text += f" slots={self.concurrency}"
        text += f" {self.rate():.2f} items/s left≈{format_duration(self.estimate())}"
        if self.last_error is not None:
            text += f" last error: {self.last_error}"
        return text

    def _maybe_line(self) -> None:
        if self._bar is not None or self._closed:
            return
        now = self._clock()
        if now - self._last_line >= self._interval:
            self._last_line = now
            print(self.status_line(), file=self._stream, flush=True)

    def close(self) -> None:
        """Finish the display (a last status line, or close the bar)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.close()
        else:
            print(self.status_line(), file=self._stream, flush=True)


def with_progress(
    progress: bool | ProgressReporter,
    requests: object,
    options: MapOptions,
) -> MapOptions:
    """``options`` of ``client.map`` with a progress display added to its event hooks.

    ``progress=True`` makes a :class:`ProgressReporter` (a bar in a notebook, where stderr is
    no terminal, yet a bar is what suits it best) that the batch closes when it ends; a
    reporter of the caller's own is fed the same events and left for the caller to close.
    """
    options = options.copy()
    if isinstance(progress, ProgressReporter):
        reporter = progress
    else:
        total = len(requests) if isinstance(requests, Sized) else None
        reporter = ProgressReporter(total, bar=True if _in_notebook() else None)
        options["on_finish"] = _chain(options.get("on_finish"), reporter.close)
    hooks = options.get("on_event")
    if hooks is None:
        hooks = ()
    elif callable(hooks):
        hooks = (hooks,)
    options["on_event"] = (*hooks, reporter)
    return options


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython's kernel app is running)."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _chain(first: Callable[[], None] | None, then: Callable[[], None]) -> Callable[[], None]:
    if first is None:
        return then

    def both() -> None:
        try:
            first()
        finally:
            then()

    return both
