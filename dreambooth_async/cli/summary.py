"""What ``generate`` says at the end: items done, failed and ambiguous, what the run sent and
spent, what went wrong (by line of the prompts file) and what to do about it."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import attrs

from .._batch import BatchItem
from .._client import DreamboothClient
from .._progress import format_duration
from .common import EXIT_BUDGET, EXIT_OK, EXIT_PARTIAL, EXIT_SERVICE, METADATA_NAME
from .output import RowSink
from .prompts import PromptSource

__all__ = ["Summary", "exit_code", "print_summary", "tally"]


@attrs.define
class Summary:
    done: int = 0
    resumed: int = 0
    failed: int = 0
    ambiguous: int = 0
    images: int = 0
    new_rows: int = 0
    problems: list[str] = attrs.field(factory=list)
    #: Why the service stopped the batch (a bad key, no credits, no service), if it did.
    stopped: str | None = None
    #: A budget (max_images, max_spend) kept prompts from being sent.
    budget_reached: bool = False
    #: What to do about it before running the command again.
    remedy: str = "fix the cause"
    #: What the run sent and spent (see ``cli.dataset.report``).
    accounting: list[str] = attrs.field(factory=list)
    #: What the output holds, for the last lines.
    outputs: str = f"images and {METADATA_NAME}"
    rows_word: str = "metadata rows"


def _describe(item: BatchItem, source: PromptSource) -> str:
    line = source.line_of(item.index)
    where = f"line {line}" if line is not None else f"item {item.index}"
    error = item.error
    name = type(error).__name__ if error is not None else "?"
    return f"{where} (key {item.key}): {item.status}: {name}: {error}"


def tally(
    item: BatchItem,
    summary: Summary,
    metadata: RowSink,
    source: PromptSource,
    client: DreamboothClient,
) -> None:
    if item.ok:
        summary.done += 1
        summary.resumed += item.resumed
        summary.images += len(item.files)
        summary.new_rows += metadata.add(item)
    else:
        if item.status == "ambiguous":
            summary.ambiguous += 1
        else:
            summary.failed += 1
        # The service may echo the key in an error: never print it.
        summary.problems.append(client.redact(_describe(item, source)))


def exit_code(summary: Summary, *, upload_failed: bool = False) -> int:
    """The exit code of a run (the table in ``_exit``): a service stop first, then failed or
    ambiguous items (and outputs not uploaded), then a budget stop."""
    if summary.stopped is not None:
        return EXIT_SERVICE
    if summary.failed or summary.ambiguous or upload_failed:
        return EXIT_PARTIAL
    if summary.budget_reached:
        return EXIT_BUDGET
    return EXIT_OK


def print_summary(
    summary: Summary, out: Path | str, manifest: Path, elapsed: float, stdout: TextIO
) -> None:
    earlier = f" ({summary.resumed} from an earlier run)" if summary.resumed else ""
    print(
        f"done {summary.done}{earlier}, failed {summary.failed}, ambiguous {summary.ambiguous}, "
        f"images {summary.images} ({summary.new_rows} new {summary.rows_word}), "
        f"time {format_duration(elapsed)}",
        file=stdout,
    )
    for line in summary.accounting:
        print(line, file=stdout)
    print(f"{summary.outputs} in {out}", file=stdout)
    for problem in summary.problems[:20]:
        print(f"  {problem}", file=stdout)
    if len(summary.problems) > 20:
        print(f"  ... and {len(summary.problems) - 20} more (see {manifest})", file=stdout)
    if summary.stopped is not None:
        print(
            f"stopped submitting: {summary.stopped}; the items not sent stay pending: "
            f"{summary.remedy}, then run the same command again",
            file=stdout,
        )
    if summary.failed:
        print("run the same command again to retry the failed items", file=stdout)
    if summary.ambiguous:
        print(
            "ambiguous items may have been accepted (and billed) already; they are not sent "
            "again unless you add --resubmit-ambiguous",
            file=stdout,
        )
    stdout.flush()
