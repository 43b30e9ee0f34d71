"""Start-up: the package's import time, and the command line's time to its first request.

1. **Import time.** A fresh interpreter runs ``import dreambooth_async``; beside it, in the same
   run and interleaved, ``import aiohttp`` (the baseline: the one dependency no asyncio HTTP
   client of this service can avoid) and an empty interpreter. Each is timed twice: the wall
   time of the whole process, and what ``python -X importtime`` reports for the top-level
   module (cumulative, so a package's dependencies are included). Median of several runs.

2. **Time to first request.** An emulator runs in a process of its own; the clock starts when
   ``dreambooth-async generate`` (the installed console script) is launched against it with a
   one-line prompts file, and stops when the emulator accepted the submission: the job's
   ``created_at`` from the emulator's admin route. Both are ``time.monotonic()`` readings of the
   same machine, which on Linux is one system-wide clock. The baseline is the shortest
   reasonable program doing the same: a ``python -c`` that imports aiohttp and POSTs one
   text2img request. Also reported: the command's whole run (one image generated, downloaded
   and recorded).

Bytecode caches are written by a first, unmeasured run of each program (this machine sets
``PYTHONDONTWRITEBYTECODE``, which the measured processes do not inherit), so the figures are
those of an installed package, not of compiling it.

    python -m benchmarks.bench_startup [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._harness import INSTANT_OPTIONS, admin_get, running_emulator, table, write_results

KEY = "emulator-key"

IMPORTS: dict[str, str] = {
    "python (no import)": "pass",
    "import aiohttp": "import aiohttp",
    "import dreambooth_async": "import dreambooth_async",
}

RAW_CLIENT = """
import asyncio, sys
import aiohttp

async def main() -> None:
    body = {"key": sys.argv[2], "model_id": "midjourney", "prompt": sys.argv[3],
            "width": "512", "height": "512", "samples": "1", "num_inference_steps": "30"}
    async with aiohttp.ClientSession() as http:
        async with http.post(sys.argv[1] + "/api/v3/dreambooth", json=body) as response:
            print((await response.json())["id"])

asyncio.run(main())
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Let the warm-up runs write bytecode caches, as an installed package has them.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


async def _run(*argv: str, cwd: str | None = None) -> tuple[float, float, bytes, bytes]:
    """Run a process to its end: (monotonic launch time, wall seconds, stdout, stderr)."""
    launched = time.monotonic()
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
        cwd=cwd,
    )
    out, err = await process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{argv[:4]} exited with {process.returncode}: {err.decode()[-2000:]}")
    return launched, wall, out, err


def _cumulative_us(importtime: str, module: str) -> float | None:
    """The cumulative microseconds ``-X importtime`` reports for ``module`` (None if absent)."""
    for line in importtime.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].strip() == module:
            return float(parts[1])
    return None


async def import_times(runs: int) -> dict[str, Any]:
    for statement in IMPORTS.values():  # warm-up: bytecode caches, page cache
        await _run(sys.executable, "-c", statement)
    walls: dict[str, list[float]] = {name: [] for name in IMPORTS}
    reported: dict[str, list[float]] = {name: [] for name in IMPORTS}
    for _ in range(runs):
        # Interleaved, so that a busy moment of the machine hurts every program alike.
        for name, statement in IMPORTS.items():
            # The wall time without -X importtime, whose own reporting slows the import.
            _, wall, _, _ = await _run(sys.executable, "-c", statement)
            walls[name].append(wall)
            if statement == "pass":
                continue
            _, _, _, err = await _run(sys.executable, "-X", "importtime", "-c", statement)
            us = _cumulative_us(err.decode(), statement.removeprefix("import ").strip())
            if us is not None:
                reported[name].append(us / 1e6)
    rows: dict[str, Any] = {}
    bare = statistics.median(walls["python (no import)"])
    for name in IMPORTS:
        wall = statistics.median(walls[name])
        rows[name] = {
            "process_seconds": wall,
            "over_bare_interpreter_seconds": wall - bare,
            "importtime_seconds": statistics.median(reported[name]) if reported[name] else None,
        }
    base = rows["import aiohttp"]
    for row in rows.values():
        row["x_aiohttp"] = (
            row["importtime_seconds"] / base["importtime_seconds"]
            if row["importtime_seconds"] is not None and base["importtime_seconds"]
            else None
        )
    return {"runs": runs, "programs": rows}


def _command() -> list[str]:
    """The installed console script next to this interpreter, else the module."""
    script = Path(sys.executable).with_name("dreambooth-async")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "dreambooth_async.cli"]


def _submitted_job_id(manifest: Path) -> str:
    for line in manifest.read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "submitted":
            return str(record["job_id"])
    raise RuntimeError(f"no submission recorded in {manifest}")


async def first_request(runs: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    results: dict[str, list[float]] = {"ours": [], "ours_total": [], "raw": []}
    try:
        async with running_emulator(*INSTANT_OPTIONS) as emulator:
            url = emulator.base_url

            async def ours(n: int) -> tuple[float, float]:
                prompts = folder / f"prompts-{n}.txt"
                prompts.write_text(f"startup benchmark prompt {n}\n")
                out = folder / f"out-{n}"
                launched, wall, _, _ = await _run(
                    *_command(),
                    "generate",
                    str(prompts),
                    "--model-id",
                    "midjourney",
                    "--out",
                    str(out),
                    "--base-url",
                    url,
                    "--api-key",
                    KEY,
                    "--poll-scale",
                    "0.0001",
                    "--no-progress",
                    "--quiet",
                )
                job_id = _submitted_job_id(out / "dreambooth-manifest.jsonl")
                job = await admin_get(url, f"jobs/{job_id}")
                return job["created_at"] - launched, wall

            async def raw(n: int) -> float:
                launched, _, out, _ = await _run(
                    sys.executable, "-c", RAW_CLIENT, url, KEY, f"startup raw prompt {n}"
                )
                job = await admin_get(url, f"jobs/{out.decode().strip()}")
                return float(job["created_at"] - launched)

            await ours(-1)  # warm-up: bytecode caches
            await raw(-1)
            for n in range(runs):
                first, total = await ours(n)
                results["ours"].append(first)
                results["ours_total"].append(total)
                results["raw"].append(await raw(n))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ours_s = statistics.median(results["ours"])
    raw_s = statistics.median(results["raw"])
    return {
        "runs": runs,
        "command": " ".join(Path(part).name for part in _command()) + " generate",
        "cli_first_request_seconds": ours_s,
        "cli_whole_run_seconds": statistics.median(results["ours_total"]),
        "raw_aiohttp_first_request_seconds": raw_s,
        "x_raw_aiohttp": ours_s / raw_s,
        "samples": results,
    }


async def run(quick: bool = False) -> dict[str, Any]:
    runs = 5 if quick else 15
    return {
        "quick": quick,
        "imports": await import_times(runs),
        "first_request": await first_request(3 if quick else 9),
    }


def render(results: dict[str, Any]) -> str:
    imports = results["imports"]
    parts = [
        table(
            f"\nImport time (median of {imports['runs']} fresh interpreters)",
            ["program", "process s", "over bare python s", "-X importtime s", "x aiohttp"],
            [
                [
                    name,
                    r["process_seconds"],
                    r["over_bare_interpreter_seconds"],
                    "" if r["importtime_seconds"] is None else r["importtime_seconds"],
                    "" if r["x_aiohttp"] is None else r["x_aiohttp"],
                ]
                for name, r in imports["programs"].items()
            ],
        )
    ]
    first = results["first_request"]
    parts.append(
        table(
            f"\nTime to first request (launch to the emulator accepting it; median of "
            f"{first['runs']})",
            ["program", "seconds", "x raw aiohttp"],
            [
                [first["command"], first["cli_first_request_seconds"], first["x_raw_aiohttp"]],
                [
                    "python -c (aiohttp, one POST)",
                    first["raw_aiohttp_first_request_seconds"],
                    1.0,
                ],
                [f"{first['command']}: whole run, 1 image", first["cli_whole_run_seconds"], ""],
            ],
        )
    )
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    args = parser.parse_args()
    results = asyncio.run(run(quick=args.quick))
    print(render(results))
    path = write_results("startup", {"benchmark": "startup", **results})
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
