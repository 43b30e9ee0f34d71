"""What every command of the ``dreambooth-async`` command line shares: exit codes, the names
of the files ``generate`` writes, and the error that means "the input cannot be used"."""

from __future__ import annotations

from .._exit import (
    EXIT_BUDGET,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_SERVICE,
    EXIT_USAGE,
)
from .._prompts import MAX_LINE_BYTES
from .._settings import MANIFEST_NAME, METADATA_NAME

__all__ = [
    "CLI_EXTRA",
    "DEMO_TIME_SCALE",
    "EMULATOR_EXTRA",
    "EXIT_BUDGET",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_SERVICE",
    "EXIT_USAGE",
    "LOCK_NAME",
    "MANIFEST_NAME",
    "MAX_LINE_BYTES",
    "METADATA_NAME",
    "RUN_NAME",
    "InputError",
    "emulator_missing",
    "require_emulator",
]

LOCK_NAME = ".dreambooth.lock"
#: The options that shaped the folder's requests, so a rerun with other ones does not mix sets.
RUN_NAME = "dreambooth-run.json"
#: What to install for the embedded emulator (Pillow draws its images).
CLI_EXTRA = "pip install 'dreambooth-async[cli]'"
EMULATOR_EXTRA = "pip install 'dreambooth-async[emulator]'"
DEMO_TIME_SCALE = 0.02


class InputError(Exception):
    """A prompts file (or an option) that cannot be used; the message names the line."""


def emulator_missing() -> str | None:
    """Why the emulator cannot be imported (Pillow is missing), or None when it can."""
    try:
        from .. import emulator  # noqa: F401 - imported to see that it can be
    except ImportError as exc:
        return str(exc)
    return None


def require_emulator(what: str, extra: str) -> None:
    problem = emulator_missing()
    if problem is not None:
        raise InputError(
            f"{what} needs the embedded emulator, which needs Pillow: {extra} ({problem})"
        )
