"""The ``dreambooth-async`` command: ``generate``, ``demo``, ``emulator`` and ``merge``.

``generate PROMPTS --model-id M --out DIR`` turns a prompts file into a folder of images with a
``metadata.jsonl`` in the Hugging Face imagefolder convention, through a resumable batch: run the
same command again after a crash (or Ctrl-C) and it picks up where it stopped, without paying for
an image twice. ``demo`` does the same with a bundled prompts file against the embedded emulator.
``emulator`` serves the emulator.

Exit codes (the table is ``_exit.EXIT_CODES``, printed by ``generate --help``): 0 every prompt
done; 1 some failed or are ambiguous; 2 a usage or input error (nothing was submitted); 3 stopped
by a budget; 4 stopped by the service (a refused key, no credits, a base URL that is not the API
root or cannot be reached); 130 interrupted (run the command again to resume).

The package: ``parser`` assembles the subcommands; ``options`` holds generate's options;
``prompts`` reads prompts files into requests; ``output`` owns the output folder (its lock, the
run record, ``metadata.jsonl``); ``service`` picks the service and key; ``generate``, ``demo``
and ``emulator`` run their commands; ``summary`` says what a run did.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import TextIO

from .._errors import DreamboothError
from .._manifest import ManifestError
from .common import EXIT_BUDGET as EXIT_BUDGET
from .common import EXIT_INTERRUPTED as EXIT_INTERRUPTED
from .common import EXIT_OK as EXIT_OK
from .common import EXIT_PARTIAL as EXIT_PARTIAL
from .common import EXIT_SERVICE as EXIT_SERVICE
from .common import EXIT_USAGE as EXIT_USAGE
from .common import LOCK_NAME as LOCK_NAME
from .common import MANIFEST_NAME as MANIFEST_NAME
from .common import MAX_LINE_BYTES as MAX_LINE_BYTES
from .common import METADATA_NAME as METADATA_NAME
from .common import RUN_NAME as RUN_NAME
from .common import InputError as InputError
from .common import emulator_missing as emulator_missing
from .dataset.gallery import add_gallery_parser as add_gallery_parser
from .options import REQUEST_FIELDS as REQUEST_FIELDS
from .output import MetadataWriter as MetadataWriter
from .output import OutputLock as OutputLock
from .output import RunRecord as RunRecord
from .output import check_output_folder as check_output_folder
from .output import manifest_name as manifest_name
from .output import run_options as run_options
from .parser import build_parser
from .prompts import PromptSource as PromptSource

__all__ = ["build_parser", "main"]


def _configure_logging(verbosity: int) -> None:
    if verbosity <= 0:
        return
    logging.basicConfig(
        level=logging.DEBUG if verbosity > 1 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    # One line in the command line's own voice: the source line a Python warning shows is
    # the library's, which means nothing to someone running a command.
    print(f"dreambooth-async: warning: {message}", file=file or sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: parse ``argv`` and run the command; returns the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    # Only the emulator subcommand needs its options described (and the emulator imported).
    parser = build_parser(emulator_options="emulator" in arguments)
    args, unknown = parser.parse_known_args(arguments)
    if unknown and not (args.command == "emulator" and emulator_missing() is not None):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    # Without Pillow the emulator's options are unknown: its command says what to install
    # (exit 2) rather than argparse calling them unrecognized.
    _configure_logging(args.verbose + getattr(args, "emulator_verbose", 0))
    func: Callable[[argparse.Namespace], int] = args.func
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _run(func, args)


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return func(args)
    except InputError as exc:
        print(f"dreambooth-async: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ManifestError as exc:
        print(f"dreambooth-async: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except asyncio.CancelledError:
        print("\nstopped: run the same command again to resume", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except DreamboothError as exc:
        print(f"dreambooth-async: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_PARTIAL
