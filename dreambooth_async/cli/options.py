"""The options of ``generate``: every request field as an option (the defaults of the rows),
the run's own options, and the argument types they use.

``demo`` builds a ``generate`` run from these too, so they live apart from the parser that
assembles the subcommands.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .._client import (
    API_KEY_ENV,
    API_KEY_ENV_FALLBACK,
    BASE_URL_ENV,
    DEFAULT_API_VERSION,
    DEFAULT_BASE_URL,
)
from .._convert import structure_field, value_type
from .._models import API_VERSIONS, Inpaint, Scheduler, field_limit
from .._prompts import KINDS, REQUEST_FIELDS
from .._settings import TIME_SCALE_HELP
from .._shard import add_shard_argument, shard_manifest_name
from .common import DEMO_TIME_SCALE, MANIFEST_NAME
from .dataset.fsout import STATE_DIR_ENV
from .dataset.layouts import DEFAULT_SAMPLES_PER_SHARD, OUTPUT_FORMATS

__all__ = [
    "KINDS",
    "REQUEST_FIELDS",
    "add_generate_arguments",
    "defaults_from_args",
    "field_help",
    "option_name",
    "positive_float",
    "positive_int",
]

# --- request fields as options and columns ----------------------------------------------------

#: The placeholder shown in --help for an option of each type.
_METAVARS: Mapping[type, str] = {int: "N", float: "X", bool: "yes|no"}


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _option_type(name: str, kind: type) -> Callable[[str], Any]:
    """The argparse type of field ``name``'s option: the field's own conversion."""

    def convert(text: str) -> Any:
        return structure_field(Inpaint, name, text)

    # argparse names the type in its usage error ("invalid int value: 'wide'").
    convert.__name__ = kind.__name__
    return convert


def field_help(name: str) -> str:
    """The ``--help`` text of request field ``name``'s option: what the field accepts and its
    default, as the request classes validate it (``field_limit``)."""
    text = field_limit(Inpaint, name)
    needed_by = [kind for kind, cls in KINDS.items() if name in attrs.fields_dict(cls)]
    if text.endswith("required") and len(needed_by) < len(KINDS):
        text += f" by {' and '.join(sorted(needed_by))} rows"
    if name == "seed":
        derived = "derived from the row (--random-seeds: none)"
        text = text.replace("the service's (not sent)", derived)
    return text


def _add_request_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "request defaults", "every request field, applied to rows that do not set it"
    )
    for name in REQUEST_FIELDS:
        if name == "prompt":
            continue
        flag = option_name(name)
        kind = value_type(Inpaint, name)
        if kind in _METAVARS:
            group.add_argument(
                flag,
                dest=f"field_{name}",
                type=_option_type(name, kind),
                metavar=_METAVARS[kind],
                help=field_help(name),
            )
        elif kind is Scheduler:
            group.add_argument(
                flag,
                dest=f"field_{name}",
                choices=[s.value for s in Scheduler],
                metavar="NAME",
                help=field_help(name),
            )
        else:
            group.add_argument(flag, dest=f"field_{name}", metavar="TEXT", help=field_help(name))
    group.add_argument(
        "--kind",
        choices=sorted(KINDS),
        help="endpoint for every row (default: inpaint if a row has mask_image, img2img if "
        "init_image, else text2img)",
    )


def defaults_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        name: getattr(args, f"field_{name}")
        for name in REQUEST_FIELDS
        if getattr(args, f"field_{name}", None) is not None
    }


# --- argument types ---------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def price(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be an amount above 0, got {text}")
    return value


# --- generate's options -----------------------------------------------------------------------


def add_generate_arguments(gen: argparse.ArgumentParser) -> None:
    """Every argument of ``generate`` (PROMPTS, the run's options, the request defaults)."""
    gen.add_argument(
        "prompts",
        metavar="PROMPTS",
        help="a text file, a prompt a line (blank lines and lines starting with # are "
        "skipped), or .jsonl (an object a line) or .csv (a header with a prompt column)",
    )
    gen.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder, or an fsspec URL (s3://bucket/run/, file://...; needs the "
        "[fsspec] or [s3] extra) whose manifest stays in a local state folder (see --state-dir)",
    )
    gen.add_argument(
        "--state-dir",
        metavar="DIR",
        help="with a URL --out: where its local state folder (manifest, staged images) goes "
        f"(default: ${STATE_DIR_ENV}, else the platform's user state directory, "
        "~/.local/state/dreambooth-async on Linux)",
    )
    gen.add_argument(
        "--output-format",
        choices=OUTPUT_FORMATS,
        default="files",
        help="the dataset layout: files (images and metadata.jsonl, a Hugging Face "
        "imagefolder; images beyond the first shard in numbered subfolders), webdataset "
        "(00000.tar... of KEY.png, KEY.txt, KEY.json, with a .parquet of rows and a "
        "_stats.json per shard) or parquet (images embedded; needs the [parquet] extra) "
        "(default %(default)s)",
    )
    gen.add_argument(
        "--samples-per-shard",
        type=positive_int,
        default=DEFAULT_SAMPLES_PER_SHARD,
        metavar="N",
        help="images per shard: per subfolder (files), tar or Parquet file (default %(default)s)",
    )
    gen.add_argument(
        "--format",
        choices=("auto", "text", "jsonl", "csv"),
        default="auto",
        help="how to read PROMPTS (default: from its extension)",
    )
    gen.add_argument(
        "--concurrency",
        type=positive_int,
        metavar="N",
        help="queue slots to use (default: find the account's limit)",
    )
    gen.add_argument(
        "--max-concurrency",
        type=positive_int,
        default=64,
        metavar="N",
        help="ceiling for the adaptive concurrency (default %(default)s)",
    )
    gen.add_argument(
        "--rate-limit",
        type=positive_float,
        metavar="RPS",
        help="at most this many submissions per second",
    )
    gen.add_argument(
        "--base-url",
        default=None,
        help=f"the service root (default: ${BASE_URL_ENV}, else {DEFAULT_BASE_URL})",
    )
    gen.add_argument(
        "--api-version",
        choices=API_VERSIONS,
        default=DEFAULT_API_VERSION,
        help="v6 (default) and v7 are today's API; v3 and v4 the legacy one of the 2023 pages",
    )
    gen.add_argument(
        "--api-key",
        action="append",
        metavar="KEY",
        help="the account key; repeat it for several accounts, whose queue slots the run "
        "pools (a key refused or out of credit is retired, the others carry on) "
        f"(default: ${API_KEY_ENV}, else ${API_KEY_ENV_FALLBACK}; keys separated by commas)",
    )
    gen.add_argument(
        "--manifest",
        metavar="PATH",
        help=f"batch manifest (default DIR/{MANIFEST_NAME}; with --shard I/N "
        f"DIR/{shard_manifest_name(MANIFEST_NAME, 1, 2).replace('1-of-2', 'I-of-N')})",
    )
    gen.add_argument(
        "--new-manifest",
        action="store_true",
        help="with a URL --out that holds outputs but no manifest (local or its copy there): "
        "start a new one anyway (every prompt is submitted and paid for again)",
    )
    gen.add_argument(
        "--resubmit-ambiguous",
        action="store_true",
        help="send again submissions that may already have been accepted (risks paying twice)",
    )
    gen.add_argument(
        "--webhook-url",
        metavar="URL",
        help="public URL where the service can reach this process's webhook receiver: "
        "deliveries resolve jobs early and name the job of a submission whose answer was lost",
    )
    gen.add_argument(
        "--webhook-listen",
        metavar="HOST:PORT",
        help="where the webhook receiver listens (default 127.0.0.1:0); without --webhook-url "
        "the service must reach this address itself (on by itself with --emulator)",
    )
    gen.add_argument(
        "--recover-seconds",
        type=positive_float,
        metavar="SECONDS",
        help="how long to wait for a webhook to name the job of a submission whose answer "
        "was lost (default: 10x the longest poll interval, 300 s)",
    )
    gen.add_argument(
        "--allow-mixed",
        action="store_true",
        help="add images made with other options (model, size, steps, seeds, API version...) "
        "to a folder that has images already (default: refuse, so two sets do not mix)",
    )
    gen.add_argument(
        "--no-retry-failed",
        action="store_true",
        help="on resume, leave items that failed earlier as failed",
    )
    gen.add_argument(
        "--job-timeout",
        type=positive_float,
        metavar="SECONDS",
        help="give up waiting for a job after this long (it can be resumed)",
    )
    gen.add_argument(
        "--random-seeds",
        action="store_true",
        help="rows without a seed let the service pick one (default: a seed "
        "derived from the row, so reruns reproduce)",
    )
    gen.add_argument(
        "--emulator",
        action="store_true",
        help="serve the batch from the embedded emulator (no key needed)",
    )
    gen.add_argument(
        "--emulator-time-scale",
        type=positive_float,
        default=DEMO_TIME_SCALE,
        metavar="X",
        help=f"the embedded emulator's time scale, {TIME_SCALE_HELP} (default %(default)s)",
    )
    gen.add_argument(
        "--emulator-queue-limit",
        type=positive_int,
        default=5,
        metavar="N",
        help="the embedded emulator's queue slots per key (default %(default)s)",
    )
    gen.add_argument(
        "--emulator-workers",
        type=positive_int,
        default=4,
        metavar="N",
        help="the embedded emulator's simulated GPU workers (default %(default)s)",
    )
    gen.add_argument(
        "--poll-scale",
        type=positive_float,
        metavar="X",
        help=f"the time scale of an emulator at --base-url ({TIME_SCALE_HELP}): polling follows it",
    )
    gen.add_argument("--no-progress", action="store_true", help="no progress display")
    gen.add_argument("-q", "--quiet", action="store_true", help="only the summary")
    gen.add_argument(
        "--cache",
        metavar="PATH",
        help="a result cache (SQLite): seeded requests answered before are not paid again",
    )
    gen.add_argument(
        "--max-images",
        type=positive_int,
        metavar="N",
        help="submit no more once N images are paid for or in flight (reruns continue)",
    )
    gen.add_argument(
        "--max-spend",
        type=positive_float,
        metavar="AMOUNT",
        help="submit no more once this run's own images (at --price-per-image, or at the "
        "price measured from the wallet) cost AMOUNT; other users of the wallet do not count "
        "(reruns continue)",
    )
    gen.add_argument(
        "--price-per-image",
        type=price,
        metavar="AMOUNT",
        help="the price of one image on your plan, for --max-spend and the report (default: "
        "measured from the wallet's drop around a few of the run's own submissions)",
    )
    gen.add_argument(
        "--dry-run",
        action="store_true",
        help="say how many submissions and images the run would make; send nothing",
    )
    add_shard_argument(gen)
    _add_request_options(gen)
