"""Run every benchmark, then print and write one summary of them all.

    python -m benchmarks [--quick] [--only NAME ...]

Each benchmark runs as ``python -m benchmarks.bench_NAME`` in a process of its own (which starts
its own emulator processes), so that one benchmark's memory, tasks and imports cannot colour the
next one's figures, and a failure in one does not stop the rest. Each prints its tables and writes
``benchmarks/results/NAME.json``; this runner then reads those files and prints, and writes to
``benchmarks/results/summary.json``, every headline figure beside its baseline from the same run
and the ratio between them, with the machine the run happened on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._harness import RESULTS, machine, table, write_results

ROOT = Path(__file__).resolve().parent.parent

#: In the order they run: the emulator's capacity first, as the ceiling for the rest.
NAMES = (
    "emulator",
    "overhead",
    "telemetry",
    "batch",
    "poll",
    "keys",
    "shared",
    "memory",
    "startup",
    "planning",
    "longrun",
)

#: (figure, value, unit, baseline, baseline value, ratio): ratio = value / baseline value.
Row = tuple[str, float | int | None, str, str, float | int | None, float | None]


def _ratio(value: float | int | None, base: float | int | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return float(value) / float(base)


def _row(
    figure: str,
    value: float | int | None,
    unit: str,
    baseline: str = "",
    base: float | int | None = None,
    ratio: float | None = None,
) -> Row:
    """A summary line; ``ratio`` defaults to value / base (a benchmark may know better)."""
    return (figure, value, unit, baseline, base, _ratio(value, base) if ratio is None else ratio)


def _emulator(data: dict[str, Any]) -> list[Row]:
    return [
        _row(
            f"capacity: submit+fetch requests/s, aiohttp at c={data['concurrency']}",
            data["requests_per_second"],
            "req/s",
        ),
        _row("emulator CPU while at capacity", data["emulator_cpu_share"], "cores"),
    ]


def _overhead(data: dict[str, Any]) -> list[Row]:
    rows = data["contenders"]
    floor = rows["raw aiohttp"]
    # The benchmark's own ratios: the median of the ratios within each round, steadier on a
    # shared machine than the ratio of the medians.
    out = [
        _row(
            f"{name}: calls/s at c={data['concurrency']}",
            r["calls_per_second"],
            "calls/s",
            "raw aiohttp",
            floor["calls_per_second"],
            r["x_raw_aiohttp"],
        )
        for name, r in rows.items()
        if name != "raw aiohttp"
    ]
    ours = rows.get("dreambooth_async generate()")
    if ours is not None:
        out.append(
            _row(
                "dreambooth_async generate(): client CPU per call",
                ours["client_cpu_us_per_call"],
                "us",
                "raw aiohttp",
                floor["client_cpu_us_per_call"],
                ours["cpu_x_raw_aiohttp"],
            )
        )
    out.append(
        _row(
            "emulator CPU, busiest contender (one single-threaded process)",
            data["emulator_cpu_cores"],
            "cores",
        )
    )
    out += [
        (f"{name}: skipped", None, reason, "", None, None)
        for name, reason in data["skipped"].items()
    ]
    return out


def _telemetry(data: dict[str, Any]) -> list[Row]:
    rows = data["contenders"]
    floor = rows["raw aiohttp"]
    off = rows["telemetry off"]
    out = [
        _row(
            f"generate(), {name}: client CPU per call",
            r["client_cpu_us_per_call"],
            "us",
            "telemetry off",
            off["client_cpu_us_per_call"],
            r["cpu_x_off"],
        )
        for name, r in rows.items()
        if name not in ("raw aiohttp", "telemetry off")
    ]
    out.append(
        _row(
            "generate(), telemetry off: client CPU per call",
            off["client_cpu_us_per_call"],
            "us",
            "raw aiohttp",
            floor["client_cpu_us_per_call"],
            off["cpu_x_raw_aiohttp"],
        )
    )
    for name, figures in data["hooks_alone_us_per_call"].items():
        out += [
            _row(f"telemetry hooks alone, {name}, {kind}", value, "us")
            for kind, value in figures.items()
        ]
    return out


def _batch(data: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for span in data["makespan"].values():
        length = f"{span['job_service_seconds']:g} s jobs" + (
            "" if span["time_scale"] == 1 else f" (scaled {span['time_scale']:g})"
        )
        for name, r in span["strategies"].items():
            out.append(
                _row(
                    f"makespan, {name}, {span['jobs']} x {length}, hidden limit "
                    f"{span['queue_limit']}",
                    r["seconds"],
                    "s",
                    "ideal",
                    span["ideal_seconds"],
                )
            )
        for name, r in span["strategies"].items():
            out.append(
                _row(f"rejected submissions, {name}, {length}", 100 * r["rejected_share"], "%")
            )
    memory = data.get("memory")
    if memory is None:
        return out
    for count, r in memory["runs"].items():
        out.append(
            _row(
                f"long batch of {int(count):,} from a generator: most tasks alive",
                r["max_tasks_alive"],
                "tasks",
                "max_concurrency",
                memory["max_concurrency"],
            )
        )
        out.append(
            _row(
                f"long batch of {int(count):,}: peak traced memory growth",
                r["peak_memory_growth_mib"],
                "MiB",
            )
        )
    return out


def _poll(data: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for length in data["lengths"].values():
        label = f"{length['job_service_seconds']:g} s jobs" + (
            "" if length["time_scale"] == 1 else f" (scaled {length['time_scale']:g})"
        )
        fixed = length["baselines"]["fixed 10% of the job"]
        for regime, rows in length["regimes"].items():
            ours = rows["dreambooth_async poller"]
            out.append(
                _row(
                    f"poll {label}, {regime}: fetches/job",
                    ours["fetch_calls_per_job"],
                    "calls",
                    "fixed 10% of the job",
                    fixed["fetch_calls_per_job"],
                )
            )
            out.append(
                _row(
                    f"poll {label}, {regime}: delay p95 (share of job)",
                    ours["delay_p95"],
                    "",
                    "fixed 10% of the job",
                    fixed["delay_p95"],
                )
            )
    return out


def _memory(data: dict[str, Any]) -> list[Row]:
    mine, base = data["poller"], data["one_task_per_job"]
    jobs = data["jobs"]
    return [
        _row(
            f"{jobs:,} pending jobs: tasks added",
            mine["tasks_added"],
            "tasks",
            "one task per job",
            base["tasks_added"],
        ),
        _row(
            f"{jobs:,} pending jobs: traced memory per job",
            mine["bytes_per_pending_job"],
            "bytes",
            "one task per job",
            base["bytes_per_pending_job"],
        ),
        _row(
            f"{jobs:,} jobs due at once: most client tasks alive (above start)",
            mine["storm_library_tasks_added"],
            "tasks",
            "poller + fetch_concurrency",
            mine["storm_bound"],
        ),
    ]


def _startup(data: dict[str, Any]) -> list[Row]:
    programs = data["imports"]["programs"]
    first = data["first_request"]
    return [
        _row(
            "import dreambooth_async (-X importtime, cumulative)",
            programs["import dreambooth_async"]["importtime_seconds"],
            "s",
            "import aiohttp",
            programs["import aiohttp"]["importtime_seconds"],
        ),
        _row(
            "import dreambooth_async (process, over bare python)",
            programs["import dreambooth_async"]["over_bare_interpreter_seconds"],
            "s",
            "import aiohttp",
            programs["import aiohttp"]["over_bare_interpreter_seconds"],
        ),
        _row(
            f"{first['command']}: launch to first submission accepted",
            first["cli_first_request_seconds"],
            "s",
            "python -c, aiohttp, one POST",
            first["raw_aiohttp_first_request_seconds"],
        ),
    ]


def _planning(data: dict[str, Any]) -> list[Row]:
    rows = []
    for run in data["runs"]:
        count = f"{run['prompts']:,} prompts"
        build = run["build"]["seconds"]
        rows.append(
            _row(f"{count}: dry run", run["dry_run"]["seconds"], "s", "building them", build)
        )
        if "rerun" in run:
            rows.append(
                _row(
                    f"{count}: rerun's plan over the finished manifest",
                    run["rerun"]["seconds"],
                    "s",
                    "dry run",
                    run["dry_run"]["seconds"],
                )
            )
        rows.append(
            _row(
                f"{count}: dry run peak memory",
                run["dry_run"]["peak_mib"],
                "MiB",
                "imports only",
                run["imports"]["peak_mib"],
            )
        )
    return rows


def _longrun(data: dict[str, Any]) -> list[Row]:
    runs = data["runs"]
    base = runs[str(data["baseline_images"])]
    return [
        _row(
            f"generate, {int(count):,} images: peak memory",
            run["peak_mib"],
            "MiB",
            f"{data['baseline_images']:,} images",
            base["peak_mib"],
        )
        for count, run in runs.items()
    ]


def _keys(data: dict[str, Any]) -> list[Row]:
    rows = []
    for run in data["runs"]:
        if run["mode"] != "adaptive":
            continue
        rows.append(
            _row(
                f"{data['jobs']} x {data['job_seconds']} s jobs, {run['keys']} key(s) of "
                f"{data['slots_per_key']} slots: makespan",
                run["seconds"],
                "s",
                "ideal",
                run["ideal_seconds"],
            )
        )
    return rows


def _shared(data: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for i, r in enumerate(data.get("burst", []), 1):
        out.append(
            _row(
                f"burst of {r['calls']} generate() on one client, limit {r['queue_limit']}, "
                f"{r['job_seconds']:g} s jobs (draw {i})",
                r["seconds"],
                "s",
                "ideal",
                r["ideal_seconds"],
            )
        )
        out.append(_row(f"burst: rejected submissions (draw {i})", 100 * r["rejected_share"], "%"))
    for i, r in enumerate(data.get("webapp", []), 1):
        out.append(_row(f"webapp burst: HTTP 429 of {r['calls']} (draw {i})", r["http_429"], ""))
    for name, runs in data.get("shared", {}).items():
        for i, draw in enumerate(runs, 1):
            base = draw["1"]
            for count, r in draw.items():
                out.append(
                    _row(
                        f"{count} process(es) on one key, {r['prompts']} x {name} jobs, "
                        f"limit 7, retry_after 0.2 s: makespan (draw {i})",
                        r["seconds"],
                        "s",
                        "one process",
                        base["seconds"],
                    )
                )
                out.append(
                    _row(
                        f"{count} process(es), {name}: x account ideal / rejected % (draw {i})",
                        r["makespan_over_ideal"],
                        f"x; {100 * r['rejected_share']:.1f}% rejected",
                    )
                )
    return out


SUMMARIES: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "emulator": _emulator,
    "overhead": _overhead,
    "telemetry": _telemetry,
    "batch": _batch,
    "poll": _poll,
    "keys": _keys,
    "shared": _shared,
    "memory": _memory,
    "startup": _startup,
    "planning": _planning,
    "longrun": _longrun,
}


def _run_one(name: str, quick: bool) -> tuple[int, float]:
    command = [sys.executable, "-m", f"benchmarks.bench_{name}"] + (["--quick"] if quick else [])
    print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    # Output goes straight through, so a long benchmark shows its tables as they come.
    returncode = subprocess.run(command, cwd=ROOT, check=False).returncode
    return returncode, time.monotonic() - started


def _fmt(value: float | int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="the short run (a few minutes)")
    parser.add_argument(
        "--only", nargs="+", choices=NAMES, metavar="NAME", help=f"run only these: {NAMES}"
    )
    parser.add_argument(
        "--summarize",
        action="store_true",
        help="run nothing: summarise the results/*.json files already written",
    )
    args = parser.parse_args(argv)
    names = [name for name in NAMES if not args.only or name in args.only]
    started = time.monotonic()
    runs: dict[str, Any] = {}
    rows: list[tuple[str, Row]] = []
    for name in names:
        path = RESULTS / f"{name}.json"
        if args.summarize:
            runs[name] = {"seconds": 0.0, "summarised_from": path.name}
        else:
            returncode, seconds = _run_one(name, args.quick)
            runs[name] = {"returncode": returncode, "seconds": seconds}
            if returncode != 0:
                runs[name]["error"] = f"exited with {returncode}"
                continue
        try:
            data = json.loads(path.read_text())
            rows += [(name, row) for row in SUMMARIES[name](data)]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # A benchmark whose output changed shape still has its own table above.
            runs[name]["error"] = f"cannot summarise {path.name}: {exc!r}"
    total = time.monotonic() - started
    facts = machine()
    kind = (
        "of the results files"
        if args.summarize
        else f"{'quick' if args.quick else 'full'} run, {total:.0f} s"
    )
    print(
        table(
            f"\nSummary ({kind}; "
            f"{facts['cpus']} CPUs, Python {facts['python']}, {facts['platform']})",
            ["benchmark", "figure", "value", "unit", "baseline (same run)", "baseline", "ratio"],
            [
                [name, figure, _fmt(value), unit, baseline, _fmt(base), _fmt(ratio)]
                for name, (figure, value, unit, baseline, base, ratio) in rows
            ],
        )
    )
    for name, info in runs.items():
        status = info.get("error", "ok")
        print(f"  {name}: {status} ({info['seconds']:.0f} s)")
    path = write_results(
        "summary",
        {
            "quick": args.quick,
            "seconds": None if args.summarize else total,
            "benchmarks": runs,
            "figures": [
                {
                    "benchmark": name,
                    "figure": figure,
                    "value": value,
                    "unit": unit,
                    "baseline": baseline,
                    "baseline_value": base,
                    "ratio": ratio,
                }
                for name, (figure, value, unit, baseline, base, ratio) in rows
            ],
        },
    )
    print(f"\nwritten to {path}")
    return 0 if all("error" not in info for info in runs.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
