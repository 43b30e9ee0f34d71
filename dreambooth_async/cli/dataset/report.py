"""The accounting of one ``generate`` run: what it sent, made, reused and spent, in the summary
and in a JSON report beside the manifest (``dreambooth-report.json``).

``spent`` is the run's own: its accepted images at the price of one (see :mod:`._spend`).
The wallets' drop over the run is reported beside it as ``wallet_drop``: the account's
spending, which includes whatever other clients on the same keys spent meanwhile.

Keys appear by position only (``#1``, ``#2``...); the file goes through the client's redactor
before it is written, like the manifest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..._models import WalletBalance
from ..._spend import money
from .atomic import write_atomically

__all__ = ["REPORT_FORMAT", "accounting_lines", "build_report", "report_path", "write_report"]

REPORT_FORMAT = "dreambooth-async-report"
REPORT_VERSION = 2  # 2: spent is the run's own; wallet_drop the account's

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


def _drop(before: WalletBalance | None, after: WalletBalance | None) -> float | None:
    if before is None or after is None:
        return None
    return round(before.balance - after.balance, 9)


def _cost(images: int, price: float | None) -> float | None:
    if images == 0:
        return 0.0  # nothing accepted costs nothing, whatever the price
    return None if price is None else round(float(money(price) * images), 9)


def _total(values: Sequence[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return round(sum(known), 9) if known else None


def build_report(
    *,
    stats: Mapping[str, int],
    key_stats: Sequence[Mapping[str, Any]],
    before: Sequence[WalletBalance | None],
    after: Sequence[WalletBalance | None],
    elapsed: float,
    stopped: str | None = None,
    budget: Mapping[str, Any] | None = None,
    spend: Mapping[str, Any] | None = None,
    prompts: int | None = None,
) -> dict[str, Any]:
    """The report of a run, as JSON-ready data. ``spend``: the run's own (``BatchRun.spend``);
    ``before`` and ``after``: the wallets, for the account's drop beside it; ``prompts``: how
    many the run was given (the gallery counts those a stop left unread as not started)."""
    price = spend.get("price_per_image") if spend is not None else None
    keys = []
    for index, counts in enumerate(key_stats):
        old = before[index] if index < len(before) else None
        new = after[index] if index < len(after) else None
        keys.append(
            {
                **counts,
                "balance_before": _amount(old),
                "balance_after": _amount(new),
                "spent": _cost(int(counts.get("images", 0)), price),
                "wallet_drop": _drop(old, new),
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
        "prompts": prompts,
        "balance_before": _total([_amount(b) for b in before]),
        "balance_after": _total([_amount(b) for b in after]),
        "spent": _cost(int(stats.get("images", 0)), price),
        "price_per_image": price,
        "price_source": spend.get("price_source") if spend is not None else None,
        "wallet_drop": _total([key["wallet_drop"] for key in keys]),
        "currency": currencies.pop() if len(currencies) == 1 else None,
        "keys": keys,
    }


def write_report(path: Path, report: Mapping[str, Any], redact: Callable[[str], str]) -> None:
    """Write ``report`` at ``path`` whole (a temporary file moved into place)."""
    write_atomically(path, redact(json.dumps(report, indent=2, ensure_ascii=False)) + "\n")


def _money(value: float, currency: str | None) -> str:
    # Cents, or as many places as a price per image needs (0.0025), never a float's tail.
    text = f"{value:.9f}".rstrip("0")
    whole, _, places = text.partition(".")
    return f"{whole}.{places.ljust(2, '0')}" + (f" {currency}" if currency else "")


def accounting_lines(report: Mapping[str, Any], *, unlimited_wallet: bool = False) -> list[str]:
    """The summary's lines about what the run sent and spent; ``unlimited_wallet``: the
    wallets have no limit (the embedded emulator's), so their balance is not shown."""
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
            if key.get("wallet_drop") is not None:
                spent += f" (its wallet dropped {_money(key['wallet_drop'], report['currency'])})"
            lines.append(
                f"  key {key['key']}: submissions {key['submissions']} (accepted "
                f"{key['accepted']}, images {key['images']}), rejected (queue full) "
                f"{key['rejected_queue_full']}, failed {key['failed']}, ambiguous "
                f"{key['ambiguous']}{spent}{retired}"
            )
    currency = report["currency"]
    price = report.get("price_per_image")
    if price is not None:
        how = "given" if report.get("price_source") == "given" else "measured from the wallet"
        lines.append(
            f"spent {_money(report['spent'], currency)}: this run's {report['images']} images "
            f"at {_money(price, currency)} ({how})"
        )
    elif report["images"]:
        lines.append(
            "spent: not known (the price per image could not be measured from the wallet; "
            "give --price-per-image)"
        )
    before, after = report["balance_before"], report["balance_after"]
    if unlimited_wallet:
        lines.append("account balance: unlimited (the embedded emulator's wallet)")
    elif before is not None and after is not None:
        lines.append(
            f"account balance {_money(before, currency)} -> {_money(after, currency)} "
            f"(the account's drop {_money(report['wallet_drop'] or 0.0, currency)}: this run's "
            "spending and that of anything else on the same keys)"
        )
    return lines
