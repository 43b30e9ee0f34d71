"""``emulator``: serve the emulator of the service, its options those of
``python -m dreambooth_async.emulator``; a configuration error names the options at fault."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Mapping
from typing import Any

from .common import EMULATOR_EXTRA, EXIT_OK, EXIT_PARTIAL, InputError, emulator_missing

__all__ = ["add_emulator_options", "run_emulator"]


def add_emulator_options(parser: argparse.ArgumentParser) -> bool:
    """The emulator's options on ``parser`` (the subcommand's); False when the emulator cannot
    be imported (Pillow missing), which the command says when it is used."""
    try:
        from ..emulator import build_arg_parser
    except ImportError:
        return False
    build_arg_parser(parser)
    return True


def run_emulator(args: argparse.Namespace) -> int:
    problem = emulator_missing()
    if problem is not None:
        raise InputError(
            f"the emulator needs Pillow: {EMULATOR_EXTRA} (or [cli], which has it too) ({problem})"
        )
    from ..emulator import config_from_args, run

    try:
        config = config_from_args(args)
    except (ValueError, TypeError) as exc:
        raise InputError(f"emulator: {_in_flag_names(str(exc), _emulator_flags())}") from None
    try:
        asyncio.run(run(config))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


class _OptionRecorder(argparse.ArgumentParser):
    """A parser that keeps the actions added to it (argparse keeps its own list private)."""

    def __init__(self) -> None:
        super().__init__(add_help=False)
        self.recorded: list[argparse.Action] = []

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.recorded.append(action)
        return action


def _emulator_flags() -> dict[str, str]:
    """Configuration field name -> the emulator option that sets it."""
    from ..emulator import build_arg_parser

    # The emulator's options, added to a parser that remembers them: only an error needs this.
    recorder = _OptionRecorder()
    build_arg_parser(recorder)
    by_dest = {
        action.dest: max(action.option_strings, key=len)
        for action in recorder.recorded
        if action.option_strings and action.dest != "help"
    }
    flags = dict(by_dest)
    # config_from_args's nesting: cost_base -> CostModel.base, fault_5xx -> FaultConfig.rate_5xx;
    # list-valued options are plural in the configuration (--key -> keys).
    for dest, flag in by_dest.items():
        if dest.startswith("cost_"):
            flags[dest.removeprefix("cost_")] = flag
        elif dest.startswith("fault_") and dest != "fault_seed":
            flags["rate_" + dest.removeprefix("fault_")] = flag
    return flags


def _in_flag_names(message: str, flags: Mapping[str, str]) -> str:
    """An emulator configuration error in the words of its command line: ``'queue_limit'
    must be >= 1`` becomes ``--queue-limit must be >= 1``."""
    for name in sorted(flags, key=len, reverse=True):
        message = re.sub(rf"(?<![\w-])'?{re.escape(name)}'?(?![\w-])", flags[name], message)
    return message
