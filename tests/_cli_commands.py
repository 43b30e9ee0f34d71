"""The command line of a `dreambooth-async generate` run, as the CLI tests start it in a process
of its own (python -m, so that no console script needs to be installed)."""

from __future__ import annotations

import sys
from pathlib import Path


def generate_command(
    prompts: Path,
    out: Path | str,
    base_url: str,
    api_key: str | None,
    *extra: str,
    poll_scale: float | None = None,
    progress: bool = False,
    model_id: str = "midjourney",
) -> list[str]:
    """``generate PROMPTS --model-id ... --out OUT --base-url ... --api-key ... [extra]``."""
    command = [
        sys.executable,
        "-m",
        "dreambooth_async.cli",
        "generate",
        str(prompts),
        "--model-id",
        model_id,
        "--out",
        str(out),
        "--base-url",
        base_url,
    ]
    if api_key is not None:  # else from the environment, or --api-key in ``extra``
        command += ["--api-key", api_key]
    if poll_scale is not None:
        command += ["--poll-scale", str(poll_scale)]
    if not progress:
        command.append("--no-progress")
    return [*command, *extra]


def emulator_generate_args(
    prompts: Path, out: Path | str, *extra: str, time_scale: float = 0.005
) -> list[str]:
    """The arguments of ``generate`` against the embedded emulator (for ``cli.main``, in
    process): ``generate PROMPTS --model-id midjourney --out OUT --emulator ... [extra]``."""
    return [
        "generate",
        str(prompts),
        "--model-id",
        "midjourney",
        "--out",
        str(out),
        "--emulator",
        "--emulator-time-scale",
        str(time_scale),
        "--no-progress",
        *extra,
    ]
