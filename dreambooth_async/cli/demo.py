"""``demo``: the bundled prompts through ``generate`` against the embedded emulator, then
where the images went."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path
from typing import TextIO

from .common import CLI_EXTRA, METADATA_NAME, require_emulator
from .generate import generate
from .options import add_generate_arguments

__all__ = ["demo"]


def _demo_prompts() -> Path:
    # A regular file inside the installed package (wheels are unpacked), so a plain path works.
    return Path(str(resources.files("dreambooth_async").joinpath("data/demo_prompts.txt")))


def demo(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    stdout = stdout or sys.stdout
    require_emulator("demo", CLI_EXTRA)
    # The run is the `generate` command a user would type, parsed by generate's own options.
    parser = argparse.ArgumentParser(prog="dreambooth-async generate")
    add_generate_arguments(parser)
    argv = [
        str(_demo_prompts()),
        "--model-id",
        "midjourney",
        "--out",
        str(args.out),
        "--emulator",
        "--emulator-time-scale",
        str(args.time_scale),
    ]
    if args.no_progress:
        argv.append("--no-progress")
    code = generate(parser.parse_args(argv), stdout)
    out = Path(args.out).resolve()
    images = sum(1 for p in out.iterdir() if p.suffix in (".png", ".jpg"))
    print(
        f"\nthe demo ran {images} prompts against the embedded emulator: the images are in "
        f"{out}, described in {out / METADATA_NAME}.\nrun it again and it resumes (nothing "
        "is generated twice); point `dreambooth-async generate` at your own prompts file and "
        "--base-url to use the real service.",
        file=stdout,
    )
    return code
