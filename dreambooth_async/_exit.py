"""The exit codes of the ``dreambooth-async`` command line, one table for every command, the
``--help`` text and the tests (a scheduler decides what to do with a shard from them).

A module of its own, below everything, because ``merge`` and ``gallery`` live below the
``cli`` package and use the same codes.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

__all__ = [
    "EXIT_BUDGET",
    "EXIT_CODES",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_SERVICE",
    "EXIT_USAGE",
    "exit_codes_help",
]

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_BUDGET = 3
EXIT_SERVICE = 4
EXIT_INTERRUPTED = 130

#: What each code of ``generate`` means, in the words ``--help`` prints.
EXIT_CODES: Mapping[int, str] = {
    EXIT_OK: "every prompt is done (images and metadata written)",
    EXIT_PARTIAL: "some items failed or are ambiguous (a rerun retries the failed ones; "
    "ambiguous ones only with --resubmit-ambiguous), or the outputs could not be uploaded",
    EXIT_USAGE: "a usage or input error, an output folder that cannot be written, or options "
    "that differ from those the folder's images were made with: nothing was sent",
    EXIT_BUDGET: "stopped by the budget (--max-images, --max-spend): the prompts not sent stay "
    "pending; a rerun with a larger budget continues",
    EXIT_SERVICE: "stopped by the service: the key was refused, the wallet is empty, the base "
    "URL answers 404 (not the API root) or cannot be reached; fix that, then rerun",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C, SIGTERM): run the same command again to resume",
}


_PRECEDENCE = (
    "when several apply, the first of 4, 1, 3 wins: a shard stopped by its budget that has "
    "failed items exits 1"
)


def exit_codes_help() -> str:
    """The exit codes as the epilog of ``generate --help`` (and ``demo --help``) print them."""
    lines = ["exit codes:"]
    for code, meaning in EXIT_CODES.items():
        lines += textwrap.wrap(
            meaning, width=88, initial_indent=f"  {code:<5}", subsequent_indent=" " * 7
        )
    lines += textwrap.wrap(_PRECEDENCE, width=88, initial_indent="  ", subsequent_indent="  ")
    return "\n".join(lines)
