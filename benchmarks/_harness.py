"""What every benchmark shares: an emulator subprocess, machine facts, tables, JSON output."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

RESULTS = Path(__file__).parent / "results"


def job_cost(seconds: float, *, noise: float = 0.0) -> tuple[str, ...]:
    """Emulator options for jobs of ``seconds`` of service time whatever their parameters,
    their lengths varying by ``noise`` (a relative standard deviation)."""
    return (
        "--cost-base",
        str(seconds),
        "--cost-per-step",
        "0",
        "--cost-per-sample",
        "0",
        "--cost-per-megapixel",
        "0",
        "--cost-noise",
        str(noise),
    )


#: Options for an emulator that answers every submission with "success" at once: no queue
#: limit worth the name, no spam filter, jobs that cost nothing, and a sync window so wide that
#: nothing is ever "processing". What is left to measure is the HTTP round trip and the client.
INSTANT_OPTIONS: tuple[str, ...] = (
    "--time-scale",
    "0.0001",
    "--sync-window",
    "1000000",
    "--queue-limit",
    "100000000",
    "--workers",
    "64",
    "--spam-filter",
    "off",
    *job_cost(0),
)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


@dataclasses.dataclass(frozen=True)
class RunningEmulator:
    """An emulator subprocess: where it listens, and its pid (for its CPU time)."""

    base_url: str
    pid: int

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.pid)


@contextlib.asynccontextmanager
async def running_emulator(*options: str) -> AsyncIterator[RunningEmulator]:
    """Run ``python -m dreambooth_async.emulator --port 0 OPTIONS``; yield it once it listens."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dreambooth_async.emulator",
        "--port",
        "0",
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        base_url = None
        async with asyncio.timeout(30):
            while base_url is None:
                line = (await process.stdout.readline()).decode()
                if not line:
                    raise RuntimeError("the emulator exited before printing its base URL")
                if line.startswith("base_url:"):
                    base_url = line.split(":", 1)[1].strip()
        yield RunningEmulator(base_url, process.pid)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


@contextlib.asynccontextmanager
async def emulator_process(*options: str) -> AsyncIterator[str]:
    """Run ``python -m dreambooth_async.emulator --port 0 OPTIONS`` and yield its base URL."""
    async with running_emulator(*options) as emulator:
        yield emulator.base_url


async def admin_get(base_url: str, path: str) -> Any:
    """GET one of the emulator's ``/_emulator/`` admin routes (``stats``, ``jobs/ID``)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url}/_emulator/{path}") as response,
    ):
        response.raise_for_status()
        return await response.json()


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare figures across machines."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table."""
    cells = [[str(h) for h in headers]] + [
        [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [title]
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write ``data`` (plus the machine facts) to ``benchmarks/results/NAME.json``."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path
