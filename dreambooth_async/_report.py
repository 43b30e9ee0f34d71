"""The accounting of one ``generate`` run: what it sent, made, reused and spent, in the summary
and in a JSON report beside the manifest (``dreambooth-report.json``).

Keys appear by position only (``#1``, ``#2``...); the file goes through the client's redactor
before it is written, like the manifest.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._models import WalletBalance

__all__ = ["REPORT_FORMAT", "accounting_lines", "build_report", "report_path", "write_report"]

REPORT_FORMAT = "dreambooth-async-report"
REPORT_VERSION = 1

#: The run's counters the report carries, as the batch names them.
_RUN_COUNTS = (
    "items",
    "done",
    "skipped",
    "failed",
    "ambiguous",
    "unsent",
    "submissions",
    "accepted",
    "images",
    "cache_hits",
    "attached",
    "recovered",
    "rejected_queue_full",
    "rejected_other",
    "retried",
)


def report_path(manifest: Path) -> Path:
    """The report beside ``manifest``: ``dreambooth-manifest[.shard-I-of-N].jsonl`` gives
    ``dreambooth-report[.shard-I-of-N].json``; any other name ``<stem>.report.json``."""
    name = manifest.name
    if name.startswith("dreambooth-manifest") and name.endswith(".jsonl"):
        return manifest.with_name("dreambooth-report" + name[len("dreambooth-manifest") : -1])
    return manifest.with_name(manifest.stem + ".report.json")


def _amount(balance: WalletBalance | None) -> float | None:
    return None if balance is None else balance.balance


def _spent(before: WalletBalance | None, after: WalletBalance | None) -> float | None:
    if before is None or after is None:
        return None
    return round(before.balance - after.balance, 6)


def _total(values: Sequence[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return round(sum(known), 6) if known else None


def build_report(
    *,
    stats: Mapping[str, int],
    key_stats: Sequence[Mapping[str, Any]],
    before: Sequence[WalletBalance | None],
    after: Sequence[WalletBalance | None],
    elapsed: float,
    stopped: str | None = None,
    budget: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report of a run, as JSON-ready data."""
    keys = []
    for index, counts in enumerate(key_stats):
        old = before[index] if index < len(before) else None
        new = after[index] if index < len(after) else None
        keys.append(
            {
                **counts,
                "balance_before": _amount(old),
                "balance_after": _amount(new),
                "spent": _spent(old, new),
            }
        )
    currencies = {b.currency for b in (*before, *after) if b is not None and b.currency}
    return {
        "report": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_seconds": round(elapsed, 3),
        **{name: int(stats.get(name, 0)) for name in _RUN_COUNTS},
        "stopped": stopped,
        "budget": dict(budget or {}),
        "balance_before": _total([_amount(b) for b in before]),
        "balance_after": _total([_amount(b) for b in after]),
        "spent": _total([key["spent"] for key in keys]),
        "currency": currencies.pop() if len(currencies) == 1 else None,
        "keys": keys,
    }


def write_report(path: Path, report: Mapping[str, Any], redact: Callable[[str], str]) -> None:
    """Write ``report`` at ``path`` whole (a temporary file moved into place)."""
    text = redact(json.dumps(report, indent=2, ensure_ascii=False)) + "\n"
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _money(value: float, currency: str | None) -> str:
    return f"{value:.2f}" + (f" {currency}" if currency else "")


def accounting_lines(report: Mapping[str, Any]) -> list[str]:
    """The summary's lines about what the run sent and spent."""
    lines = [
        f"submissions {report['submissions']} (accepted {report['accepted']}, images "
        f"{report['images']}), cache hits {report['cache_hits']}, rejected (queue full) "
        f"{report['rejected_queue_full']}, retried {report['retried']}, unsent "
        f"{report['unsent']}"
    ]
    budget = {name: value for name, value in report["budget"].items() if value is not None}
    if report["unsent"] and budget and report["stopped"] is None:
        flags = ", ".join(f"--{name.replace('_', '-')} {value:g}" for name, value in budget.items())
        lines.append(
            f"budget reached ({flags}): the items not sent stay pending; run again with a "
            "larger budget to continue"
        )
    keys = report["keys"]
    if len(keys) > 1:
        for key in keys:
            retired = f", retired ({key['retired']})" if key.get("retired") else ""
            spent = (
                f", spent {_money(key['spent'], report['currency'])}"
                if key.get("spent") is not None
                else ""
            )
            lines.append(
                f"  key {key['key']}: submissions {key['submissions']} (accepted "
                f"{key['accepted']}, images {key['images']}), rejected (queue full) "
                f"{key['rejected_queue_full']}, failed {key['failed']}, ambiguous "
                f"{key['ambiguous']}{spent}{retired}"
            )
    before, after = report["balance_before"], report["balance_after"]
    if before is not None and after is not None:
        currency = report["currency"]
        lines.append(
            f"balance {_money(before, currency)} -> {_money(after, currency)} "
            f"(spent {_money(report['spent'] or 0.0, currency)})"
        )
    return lines
