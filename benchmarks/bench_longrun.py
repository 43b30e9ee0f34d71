"""Memory over a long run: the peak of ``dreambooth-async generate`` at 5,000, 20,000 and
100,000 images, against an emulator in a process of its own, with the same settings each time.

Each run is the whole command line in a fresh process (``python -m benchmarks.bench_longrun
--child``, which runs ``dreambooth_async.cli.main`` and reports its own peak resident memory):
a prompts file of N distinct prompts, ``--out`` a new folder, 16 at a time, images of 64x64,
no progress bar;
the emulator answers every job at once (its instant settings), so each item is submitted,
downloaded and written as against the service, as fast as the client goes. What a run keeps
per item once it is done and written is what grows with N; the claim is that it is a few
bytes, so the peak is bounded by the concurrency, not the length: each peak is given beside
the 5,000-image one.

    python -m benchmarks.bench_longrun [--quick]   # --quick: 2,000, 5,000 and 20,000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._harness import INSTANT_OPTIONS, running_emulator, table, write_results

COUNTS = (5_000, 20_000, 100_000)
QUICK_COUNTS = (2_000, 5_000, 20_000)
BASELINE = 5_000
KEY = "emulator-key"
#: Jobs that cost nothing, answered at once: what is left is the client's own work per item
#: (submit, download, write the image, the manifest and metadata lines), the most items an
#: hour, so the longest runs are the shortest to measure.
OPTIONS = INSTANT_OPTIONS
ROOT = Path(__file__).resolve().parent.parent


def child(argv: list[str]) -> dict[str, Any]:
    from dreambooth_async import cli

    started = time.perf_counter()
    code = cli.main(argv)
    return {
        "exit": code,
        "seconds": time.perf_counter() - started,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


async def one_run(count: int, base: Path) -> dict[str, Any]:
    prompts = base / f"prompts-{count}.txt"
    with prompts.open("w", encoding="utf-8") as handle:
        for i in range(count):
            handle.write(f"a watercolour study of a lighthouse, variation {i}\n")
    out = base / f"out-{count}"
    async with running_emulator(*OPTIONS) as emulator:
        argv = [
            "generate",
            str(prompts),
            "--model-id",
            "midjourney",
            "--out",
            str(out),
            "--base-url",
            emulator.base_url,
            "--api-key",
            KEY,
            "--concurrency",
            "16",
            "--width",
            "64",
            "--height",
            "64",
            "--no-progress",
            "-q",
        ]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.bench_longrun",
            "--child",
            json.dumps(argv),
            cwd=ROOT,
            env=dict(os.environ),
            stdout=asyncio.subprocess.PIPE,
        )
        stdout, _ = await process.communicate()
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    images = sum(1 for _ in (out / "metadata.jsonl").open("rb"))
    result.update(images=images, prompts=count)
    result["gallery_first_page_kib"] = (out / "index.html").stat().st_size / 1024
    for path in sorted(out.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    prompts.unlink()
    return result


async def run(quick: bool) -> dict[str, Any]:
    counts = QUICK_COUNTS if quick else COUNTS
    rows: dict[str, Any] = {}
    # In memory where there is a tmpfs: the manifest's fsyncs then cost nothing, so the run is
    # as short as the client makes it; the files are not the process's memory.
    where = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="bench-longrun-", dir=where) as tmp:
        for count in counts:
            rows[str(count)] = await one_run(count, Path(tmp))
            r = rows[str(count)]
            print(
                f"{count:>7,} images: peak {r['peak_mib']:.1f} MiB, {r['seconds']:.0f} s, "
                f"exit {r['exit']}",
                flush=True,
            )
    base = rows[str(BASELINE)]["peak_mib"]
    for r in rows.values():
        r["x_5000"] = r["peak_mib"] / base
    return {"quick": quick, "baseline_images": BASELINE, "runs": rows}


def render(results: dict[str, Any]) -> str:
    return table(
        "\ngenerate against an emulator process: peak RSS of the command line",
        ["images", "seconds", "peak MiB", "x 5,000", "first gallery page KiB", "exit"],
        [
            [
                f"{r['images']:,}",
                r["seconds"],
                r["peak_mib"],
                f"{r['x_5000']:.3f}x",
                r["gallery_first_page_kib"],
                r["exit"],
            ]
            for r in results["runs"].values()
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2,000, 5,000 and 20,000 images")
    parser.add_argument("--child", metavar="ARGV", help="internal: run the CLI with ARGV (JSON)")
    args = parser.parse_args()
    if args.child:
        figures = child(json.loads(args.child))
        sys.stdout.flush()
        print(json.dumps(figures))
        return
    results = asyncio.run(run(args.quick))
    print(render(results))
    path = write_results("longrun", {"benchmark": "longrun", **results})
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
