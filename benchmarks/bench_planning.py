"""Planning at 10,000, 100,000 and 1,000,000 prompts: ``generate --dry-run`` and a rerun's plan
over a finished manifest, beside the cost of building the same requests, in the same run.

For each count, a prompts file of that many distinct prompts (seeds derived, as by default),
then, each in a fresh process of its own so that each has its own peak memory:

- **build**: read the file into requests (``PromptSource.requests()``, what every run does
  before anything else): the baseline;
- **dry run**: ``dreambooth-async generate PROMPTS --dry-run`` into an empty folder, the whole
  command (one pass: each row checked, built, keyed, planned);
- **rerun**: the same dry run where the folder holds the finished manifest of those prompts
  (every item done, four lines each as a batch writes them: pending, submitting, submitted,
  done), so the plan folds the manifest and finds every item done;
- **keys**: ``request_key`` of every request, for the per-request cost of keying.

The dry run and the rerun are measured ``--repeat`` times each (default 3), alternating, and
the fastest of each is reported: on a shared machine a single process's time swings with the
load by more than the difference measured. (The rerun reads the manifest's fold from the
sidecar the batch saved beside it, ``.NAME.fold``, and keys and checks each done item from a
draft of its request, never built: the dry run builds every request it would send.)

Reported: seconds, their ratio to the build, and the process's peak resident memory (the
``imports`` process, which only imports the command line, is the floor it starts from).

    python -m benchmarks.bench_planning [--quick] [--repeat N]   # --quick: 10k and 100k only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._harness import table, write_results

COUNTS = (10_000, 100_000, 1_000_000)
QUICK_COUNTS = (10_000, 100_000)
#: The manifest of a million finished items is ~0.7 GB; the rerun is measured up to this.
RERUN_UP_TO = 1_000_000
MODEL = "midjourney"
ROOT = Path(__file__).resolve().parent.parent


def _prompts(path: Path, count: int) -> None:
    subjects = ("a lighthouse", "a red fox", "two paper cranes", "a blue teapot", "a city")
    places = ("at dawn", "in the rain", "on a basalt cliff", "under neon light", "in winter")
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            handle.write(f"{subjects[i % 5]} {places[(i // 5) % 5]}, study number {i}\n")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _argv(prompts: Path, out: Path) -> list[str]:
    return ["generate", str(prompts), "--model-id", MODEL, "--out", str(out), "--emulator"]


def _source(prompts: Path, out: Path) -> Any:
    from dreambooth_async.cli.options import defaults_from_args
    from dreambooth_async.cli.parser import build_parser
    from dreambooth_async.cli.prompts import PromptSource, detect_format

    args = build_parser(emulator_options=False).parse_args(_argv(prompts, out))
    return PromptSource(
        path=prompts,
        fmt=detect_format(prompts, args.format),
        defaults=defaults_from_args(args),
        kind=args.kind,
        derive_seeds=not args.random_seeds,
    )


def child(mode: str, prompts: Path, out: Path) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    import dreambooth_async.cli as cli  # the floor: what every mode imports

    figures: dict[str, Any] = {"mode": mode}
    if mode == "imports":
        pass
    elif mode == "build":
        source = _source(prompts, out)
        started = time.perf_counter()
        figures["requests"] = sum(1 for _ in source.requests())
        figures["seconds"] = time.perf_counter() - started
    elif mode == "keys":
        from dreambooth_async import request_key

        requests = [r for r in _source(prompts, out).requests() if not isinstance(r, tuple)]
        started = time.perf_counter()
        for request in requests:
            request_key(request)
        figures["seconds"] = time.perf_counter() - started
        figures["us_per_key"] = figures["seconds"] / len(requests) * 1e6
    elif mode in ("dryrun", "rerun"):
        started = time.perf_counter()
        code = cli.main([*_argv(prompts, out), "--dry-run"])
        figures["seconds"] = time.perf_counter() - started
        figures["exit"] = code
    elif mode == "manifest":
        write_finished_manifest(prompts, out)
    else:
        raise SystemExit(f"unknown mode {mode}")
    figures["peak_mib"] = _peak_mib()
    return figures


def write_finished_manifest(prompts: Path, out: Path) -> None:
    """The manifest a finished run of ``prompts`` leaves: four lines an item, as the batch
    writes them (through the manifest's own writer)."""
    from dreambooth_async import Manifest, request_key
    from dreambooth_async.cli.common import MANIFEST_NAME

    out.mkdir(parents=True, exist_ok=True)
    with Manifest.open(out / MANIFEST_NAME, durable=False) as manifest:
        for index, request in enumerate(_source(prompts, out).requests()):
            assert not isinstance(request, tuple)
            key = request_key(request)
            job = str(90_000_000 + index)
            url = f"https://pub.example/generations/{key}-0.png"
            manifest.pending(key, index)
            manifest.submitting(key, 1)
            manifest.submitted(key, job, fetch_url=f"https://api.example/fetch/{job}", eta=2.0)
            manifest.done(key, job_id=job, files=[f"{key}-0.png"], output=[url], seed=request.seed)


def _measure(mode: str, prompts: Path, out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.bench_planning", "--child", mode]
    command += [str(prompts), str(out)]
    done = subprocess.run(
        command, cwd=ROOT, check=True, capture_output=True, text=True, env=dict(os.environ)
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _fastest(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = dict(min(runs, key=lambda r: float(r["seconds"])))
    best["all_seconds"] = [round(float(r["seconds"]), 3) for r in runs]
    best["peak_mib"] = max(float(r["peak_mib"]) for r in runs)
    return best


def one_count(count: int, base: Path, repeat: int = 3) -> dict[str, Any]:
    prompts = base / f"prompts-{count}.txt"
    _prompts(prompts, count)
    fresh = base / f"fresh-{count}"
    finished = base / f"finished-{count}"
    row: dict[str, Any] = {"prompts": count}
    row["imports"] = _measure("imports", prompts, fresh)
    row["build"] = _measure("build", prompts, fresh)
    row["keys"] = _measure("keys", prompts, fresh)
    rerun = count <= RERUN_UP_TO
    if rerun:
        _measure("manifest", prompts, finished)
        row["manifest_mib"] = (finished / "dreambooth-manifest.jsonl").stat().st_size / 2**20
    dry_runs: list[dict[str, Any]] = []
    reruns: list[dict[str, Any]] = []
    for _ in range(repeat):  # alternating: both see the same swings of the load
        dry_runs.append(_measure("dryrun", prompts, fresh))
        if rerun:
            reruns.append(_measure("rerun", prompts, finished))
    row["dry_run"] = _fastest(dry_runs)
    if rerun:
        row["rerun"] = _fastest(reruns)
    build = row["build"]["seconds"]
    row["dry_run_x_build"] = row["dry_run"]["seconds"] / build
    if "rerun" in row:
        row["rerun_x_build"] = row["rerun"]["seconds"] / build
        row["rerun_x_dry_run"] = row["rerun"]["seconds"] / row["dry_run"]["seconds"]
    row["key_x_build_per_request"] = row["keys"]["seconds"] / build
    for name in ("finished", "fresh"):
        for path in sorted((base / f"{name}-{count}").glob("*"), reverse=True):
            path.unlink()
    prompts.unlink()
    return row


def run(quick: bool, repeat: int = 3) -> dict[str, Any]:
    counts = QUICK_COUNTS if quick else COUNTS
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-planning-") as tmp:
        for count in counts:
            rows.append(one_count(count, Path(tmp), repeat))
            print(render_row(rows[-1]), flush=True)
    return {"quick": quick, "repeat": repeat, "counts": list(counts), "runs": rows}


def render_row(r: dict[str, Any]) -> str:
    rerun = r.get("rerun")
    return (
        f"{r['prompts']:>9,} prompts: build {r['build']['seconds']:.2f} s, dry run "
        f"{r['dry_run']['seconds']:.2f} s ({r['dry_run_x_build']:.2f}x), rerun "
        + (f"{rerun['seconds']:.2f} s ({r['rerun_x_build']:.2f}x)" if rerun else "-")
        + f"; peak {r['dry_run']['peak_mib']:.0f} MiB (imports {r['imports']['peak_mib']:.0f})"
    )


def render(results: dict[str, Any]) -> str:
    rows = []
    for r in results["runs"]:
        rerun = r.get("rerun")
        rows.append(
            [
                f"{r['prompts']:,}",
                r["build"]["seconds"],
                r["dry_run"]["seconds"],
                f"{r['dry_run_x_build']:.2f}x",
                rerun["seconds"] if rerun else "-",
                f"{r['rerun_x_build']:.2f}x" if rerun else "-",
                f"{r['rerun_x_dry_run']:.2f}x" if rerun else "-",
                f"{r['keys']['us_per_key']:.1f}",
                f"{r['imports']['peak_mib']:.0f}",
                f"{r['build']['peak_mib']:.0f}",
                f"{r['dry_run']['peak_mib']:.0f}",
                f"{rerun['peak_mib']:.0f}" if rerun else "-",
            ]
        )
    return table(
        "\nplanning: seconds, ratio to building the same requests, peak RSS (MiB)",
        [
            "prompts",
            "build s",
            "dry run s",
            "/build",
            "rerun s",
            "/build",
            "/dry run",
            "us/key",
            "imports MiB",
            "build MiB",
            "dry run MiB",
            "rerun MiB",
        ],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="10,000 and 100,000 prompts only")
    parser.add_argument(
        "--repeat", type=int, default=3, help="dry runs and reruns each, the fastest reported"
    )
    parser.add_argument("--child", nargs=3, metavar=("MODE", "PROMPTS", "OUT"), help="internal")
    args = parser.parse_args()
    if args.child:
        mode, prompts, out = args.child
        figures = child(mode, Path(prompts), Path(out))
        sys.stdout.flush()
        print(json.dumps(figures))
        return
    results = run(args.quick, max(1, args.repeat))
    print(render(results))
    path = write_results("planning", {"benchmark": "planning", **results})
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
