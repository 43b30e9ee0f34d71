"""Shared pieces of the chaos, kill/restart and hostile-input suites.

Everything talks real HTTP to servers on 127.0.0.1; nothing is mocked. The emulator keeps its
own books (every accepted job by fingerprint, every injected fault by kind), and the checks here
hold the client's account of a batch (its manifest, its output folder) against them.

Figures: the slow forms write what they measured to ``benchmarks/results/chaos.json`` (one
section per test, merged, so that each slow test can be run alone); every form prints them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import dreambooth_async as dba
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig, FaultConfig

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "chaos.json"

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- the fault mix ----------------------------------------------------------------------------


def chaos_faults(seed: int, *, output_404_for: float = 40.0) -> FaultConfig:
    """The issue's mix: 10% 5xx with HTML bodies, 5% dropped connections (half before the body
    was read, half after the request was processed), 5% 429 bursts, 5% failed generations, and
    10% of jobs whose output links 404 for a while after they succeed."""
    return FaultConfig(
        seed=seed,
        rate_5xx=0.10,
        rate_drop_before=0.025,
        rate_drop_after=0.025,
        rate_429=0.05,
        retry_after_429=2.0,
        rate_failed=0.05,
        rate_output_404=0.10,
        output_404_for=output_404_for,
    )


def chaos_config(
    seed: int, *, time_scale: float, keys: tuple[str, ...] | None = None, **overrides: Any
) -> EmulatorConfig:
    """An emulator under the chaos mix, with 5% dropped and 5% duplicated webhooks."""
    settings: dict[str, Any] = {
        "time_scale": time_scale,
        "queue_limit": 8,
        "workers": 8,
        # About 8 service seconds a job, spread by 30%.
        "cost": CostModel(base=6.0, per_step=0.1, per_sample=1.0, per_megapixel=0.0, noise=0.3),
        "webhook_drop_rate": 0.05,
        "webhook_duplicate_rate": 0.05,
        "faults": chaos_faults(seed),
        "seed": seed,
    }
    if keys is not None:
        settings["keys"] = keys
    settings.update(overrides)
    return EmulatorConfig(**settings)


# --- what the service's books say -------------------------------------------------------------


def paid_twice(emu: Emulator) -> dict[tuple[str, str, int | None], int]:
    """Fingerprints the service ran more than once where an earlier run had *not* failed.

    A generation the service itself failed is retried on a rerun (that is what the user asked
    for); every other repeat of an accepted submission is a double payment.
    """
    by_fingerprint: dict[tuple[str, str, int | None], list[Any]] = collections.defaultdict(list)
    for job_id in sorted(emu.jobs):
        job = emu.jobs[job_id]
        p = job.params
        by_fingerprint[(p.model_id, p.prompt, p.seed)].append(job)
    doubles: dict[tuple[str, str, int | None], int] = {}
    for fingerprint, jobs in by_fingerprint.items():
        earlier = jobs[:-1]
        not_failed = [job for job in earlier if not job.failed]
        if not_failed:
            doubles[fingerprint] = len(jobs)
    return doubles


def resubmitted_after_failure(emu: Emulator) -> int:
    """Accepted submissions that repeat a fingerprint whose earlier job the service failed."""
    return sum(n - 1 for n in emu.stats.accepted_by_fingerprint.values() if n > 1)


def fault_figures(emu: Emulator) -> dict[str, int]:
    """Injected faults by kind, webhook misbehaviour included."""
    stats = emu.stats
    # One counter holds both levels: request faults (5xx, drops, 429) and job faults.
    faults = {
        ("job_" if kind in ("failed", "stuck", "output_404") else "request_") + kind: n
        for kind, n in sorted(stats.faults.items())
    }
    faults["webhook_dropped"] = stats.webhooks_dropped
    faults["webhook_duplicated"] = stats.webhooks_duplicated
    return faults


# --- what the client's books say --------------------------------------------------------------

_TYPED = {
    name
    for name in dir(dba)
    if isinstance(getattr(dba, name), type) and issubclass(getattr(dba, name), dba.DreamboothError)
}


def is_typed_error(name: str | None) -> bool:
    """True when ``name`` is one of the library's own error classes."""
    return name in _TYPED


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in IMAGE_SUFFIXES)


def leftovers(folder: Path) -> list[Path]:
    """Half-written things: ``.part`` files anywhere, anything left in ``.partial``."""
    found = [p for p in folder.rglob("*") if p.name.endswith(".part")]
    staging = folder / ".partial"
    if staging.exists():
        found += list(staging.rglob("*"))
    return found


def check_final_states(
    states: Mapping[str, dba.ItemState], keys: Iterable[str]
) -> collections.Counter[str]:
    """Every item ended done, failed with a typed error, or ambiguous (reported, not resent)."""
    counts: collections.Counter[str] = collections.Counter()
    for key in keys:
        state = states.get(key)
        assert state is not None, f"item {key} has no line in the manifest"
        assert state.status in ("done", "failed", "ambiguous"), (key, state)
        if state.status == "failed":
            assert is_typed_error(state.error), (key, state.error, state.message)
            assert state.message, key
        elif state.status == "ambiguous":
            # After a crash mid-POST there is no error object, only the explanation.
            assert state.error is None or is_typed_error(state.error), (key, state.error)
            assert state.message, key
        counts[state.status] += 1
    return counts


def check_files(
    folder: Path, states: Mapping[str, dba.ItemState], samples: Mapping[str, int]
) -> int:
    """No image lost or written twice: the images on disk are exactly the done items' files, as
    many as they asked for, under distinct names, each a whole PNG. Returns how many."""
    expected: list[str] = []
    for key, state in states.items():
        if state.status == "done":
            assert len(state.files) == samples[key], (key, state.files)
            expected += state.files
    assert len(expected) == len(set(expected)), "two items claim the same file"
    on_disk = [p.name for p in image_files(folder)]
    assert sorted(on_disk) == sorted(expected)
    for name in expected:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and data.endswith(b"IEND\xaeB`\x82"), name
    assert leftovers(folder) == []
    return len(expected)


# --- figures ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
    }


def report(section: str, figures: Mapping[str, Any], *, write: bool) -> None:
    """Print ``figures``; with ``write``, merge them into chaos.json under ``section``."""
    text = json.dumps(figures, indent=2, sort_keys=True)
    print(f"\n[{section}]\n{text}")
    if not write:
        return

    def put(existing: dict[str, Any]) -> None:
        existing[section] = {**figures, "recorded_at": _now(), "machine": machine()}

    _update_results(put)


class HostileCounter:
    """Counts the hostile inputs a test tried (every hypothesis example, every fixed case)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, kind: str, n: int = 1) -> None:
        self.counts[kind] += n

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def record_hostile(name: str, counts: Mapping[str, int], *, write: bool) -> None:
    """Print how many hostile inputs ``name`` tried; with ``write``, merge them into the
    ``hostile_inputs`` section of chaos.json (one entry per test, and the total)."""
    total = sum(counts.values())
    print(f"\n[hostile inputs: {name}] {total} tried: {dict(sorted(counts.items()))}")
    if not write:
        return

    def put(existing: dict[str, Any]) -> None:
        section = existing.get("hostile_inputs")
        section = section if isinstance(section, dict) else {}
        tests = section.get("by_test")
        tests = tests if isinstance(tests, dict) else {}
        tests[name] = {"total": total, "by_kind": dict(sorted(counts.items()))}
        section.update(
            by_test=tests,
            total=sum(entry["total"] for entry in tests.values()),
            recorded_at=_now(),
        )
        existing["hostile_inputs"] = section

    _update_results(put)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _update_results(change: Callable[[dict[str, Any]], None]) -> None:
    """Read chaos.json, apply ``change``, write it back whole (atomically)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    try:
        existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    except ValueError:
        existing = {}
    if not isinstance(existing, dict):
        existing = {}
    change(existing)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, RESULTS)


# --- raw HTTP ---------------------------------------------------------------------------------


async def raw_exchange(port: int, request: bytes, *, timeout: float = 5.0) -> int | None:
    """Send ``request`` as raw bytes to 127.0.0.1:``port``; the status code of the answer, or
    None when the server closed the connection (or said nothing within ``timeout``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        try:
            await writer.drain()
        except OSError:
            return None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await reader.readline()
                    status = _status_of(line)
                    if status is None or status >= 200:
                        return status
                    # An interim answer (100 Continue): skip its head, read the real one.
                    while (await reader.readline()).strip():
                        pass
        except (TimeoutError, OSError):
            return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _status_of(line: bytes) -> int | None:
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])


def http_request(
    method: str,
    target: str,
    body: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
    *,
    content_length: bool = True,
) -> bytes:
    """A raw HTTP/1.1 request (``Connection: close``)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("latin-1", "replace") + body
