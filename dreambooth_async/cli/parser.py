"""The ``dreambooth-async`` argument parser: the subcommands and what runs each one."""

from __future__ import annotations

import argparse
import contextlib
import copy

from .. import __version__
from .._exit import exit_codes_help
from .cache import add_cache_parser
from .common import DEMO_TIME_SCALE, EMULATOR_EXTRA
from .dataset.gallery import add_gallery_parser
from .dataset.merge import add_merge_parser
from .demo import demo
from .emulator import add_emulator_options, run_emulator
from .generate import generate
from .options import add_generate_arguments, positive_float

__all__ = ["build_parser"]


class _AllDefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the default of every option that takes a value, options without a help text of
    their own too; a list default reads as the comma-separated text the option takes."""

    def _format_action(self, action: argparse.Action) -> str:
        if action.option_strings and action.nargs != 0 and action.default is not argparse.SUPPRESS:
            action = copy.copy(action)  # the parser's own action stays as it is
            if isinstance(action.default, tuple | list):
                action.default = ",".join(map(str, action.default)) or "none"
            if not action.help:
                action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0 or (action.help and "default" in action.help):
            return action.help  # a switch, or a help text that names its default already
        return super()._get_help_string(action)


class _EpilogAsWritten(argparse.HelpFormatter):
    """Wraps the description as usual; keeps the lines of a text that has several (the exit
    codes' table) as they are."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line + "\n" for line in text.splitlines()).rstrip("\n")
        return super()._fill_text(text, width, indent)


def build_parser(*, emulator_options: bool = True) -> argparse.ArgumentParser:
    """The ``dreambooth-async`` argument parser (subcommands generate, demo, emulator).

    ``emulator_options=False`` leaves out the ``emulator`` subcommand's options, whose
    description imports the emulator (aiohttp.web, Pillow): other commands start faster.
    """
    parser = argparse.ArgumentParser(
        prog="dreambooth-async",
        description="Bulk image generation with the Dreambooth API: resumable, within the "
        "account's queue limit, never paying twice.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv)")
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="show the version"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser(
        "generate",
        help="a prompts file in, a folder of images and metadata.jsonl out",
        description="Generate an image set from PROMPTS into DIR. Running the same command "
        "again resumes: done items are skipped, accepted ones fetched by id.",
        epilog=exit_codes_help(),
        formatter_class=_EpilogAsWritten,
    )
    add_generate_arguments(gen)
    gen.set_defaults(func=generate)

    demo_command = commands.add_parser(
        "demo",
        help="generate the bundled prompts with the embedded emulator",
        description="Run 24 bundled prompts against the embedded emulator and show where the "
        "images went.",
        epilog=exit_codes_help(),
        formatter_class=_EpilogAsWritten,
    )
    demo_command.add_argument(
        "--out",
        default="dreambooth-demo",
        metavar="DIR",
        help="output folder (default %(default)s)",
    )
    demo_command.add_argument(
        "--time-scale", type=positive_float, default=DEMO_TIME_SCALE, help=argparse.SUPPRESS
    )
    demo_command.add_argument("--no-progress", action="store_true", help="no progress display")
    demo_command.set_defaults(func=demo)

    emulator = commands.add_parser(
        "emulator",
        help="run the emulator of the service",
        description="A local emulator of the Dreambooth API. Durations are service seconds; "
        "--time-scale turns them into real seconds.",
        formatter_class=_AllDefaultsShown,
    )
    if emulator_options:
        if not add_emulator_options(emulator):
            # Pillow missing: the subcommand says what to install when used.
            emulator.description = (
                f"A local emulator of the Dreambooth API. Not available: it needs Pillow "
                f"({EMULATOR_EXTRA})."
            )
        # The emulator's options have their own -v; without them, the subcommand still takes
        # one (argparse refuses an option string that is taken, and adds nothing).
        with contextlib.suppress(argparse.ArgumentError):
            emulator.add_argument(
                "-v",
                "--verbose",
                dest="emulator_verbose",
                action="count",
                default=0,
                help="log every request to stderr (-vv: more)",
            )
    emulator.set_defaults(func=run_emulator)
    add_merge_parser(commands)
    add_cache_parser(commands)
    add_gallery_parser(commands)
    return parser
