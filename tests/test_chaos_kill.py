"""Kill and restart: ``dreambooth-async generate`` SIGKILLed at random moments, run again until the
batch is complete, over several seeds, against an emulator that also injects faults.

Unlike the acceptance test in test_cli_resume.py, the kill here lands wherever the seed says,
in the middle of a POST, a download or a manifest write included. The moments are chosen on the
batch's own progress (a random number of further manifest lines), waited for by polling the
manifest with a deadline, never by sleeping a guessed time. The emulator runs in this test's
process, so its books (every accepted job, every fault) survive every kill.

After the last run, the same invariants as the chaos batch: every item done, failed with a
typed error, or ambiguous (a POST the kill cut off: reported, never resent); no accepted job
paid for twice; the images on disk are exactly the done items' files and ``metadata.jsonl``
has one row per image, none twice; nothing half-written; the key nowhere. A further run of the
complete batch sends nothing.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from _chaos_fixtures import (
    check_files,
    check_final_states,
    fault_figures,
    image_files,
    paid_twice,
    report,
)

import dreambooth_async as dba
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig, FaultConfig

pytestmark = pytest.mark.anyio

SECRET = "sk-chaos-kill-9d3b7f1e5a2c4d6f"
SCALE = 0.01


def write_prompts(path: Path, n: int, seed: int) -> dict[int, dict[str, Any]]:
    """A JSONL prompts file; every fourth row asks for two images. Rows by line number."""
    rows: dict[int, dict[str, Any]] = {}
    lines = []
    for i in range(n):
        row: dict[str, Any] = {"prompt": f"kill {seed}/{i}: a lantern in the rain", "seed": i}
        if i % 4 == 0:
            row["samples"] = 2
        rows[i + 1] = row
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return rows


def command(prompts: Path, out: Path, base_url: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dreambooth_async.cli",
        "generate",
        str(prompts),
        "--model-id",
        "midjourney",
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "10",
        "--out",
        str(out),
        "--base-url",
        base_url,
        "--api-key",
        SECRET,
        "--poll-scale",
        str(SCALE),
        "--no-progress",
    ]


def manifest_lines(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(1 for _ in handle)
    except FileNotFoundError:
        return 0


async def run_once(
    argv: list[str], manifest: Path, kill_after_lines: int | None, logs: Path, number: int
) -> int | None:
    """Run the command; SIGKILL it once the manifest has grown by ``kill_after_lines`` lines
    (None: let it finish). The exit code, or None when it was killed."""
    start_lines = manifest_lines(manifest)
    with (
        (logs / f"run{number}.out").open("wb") as out,
        (logs / f"run{number}.err").open("wb") as err,
    ):
        process = await anyio.open_process(argv, stdout=out, stderr=err)
        async with process:
            with anyio.fail_after(120):
                while process.returncode is None:
                    if (
                        kill_after_lines is not None
                        and manifest_lines(manifest) >= start_lines + kill_after_lines
                    ):
                        process.kill()
                        await process.wait()
                        return None
                    with anyio.move_on_after(0.002):
                        await process.wait()
            return process.returncode


async def kill_and_restart(
    tmp_path: Path, *, seed: int, prompts_n: int, kills: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    prompts = tmp_path / "prompts.jsonl"
    rows = write_prompts(prompts, prompts_n, seed)
    out = tmp_path / "out"
    logs = tmp_path / "logs"
    logs.mkdir()
    manifest = out / "dreambooth-manifest.jsonl"
    config = EmulatorConfig(
        keys=(SECRET,),
        time_scale=SCALE,
        queue_limit=6,
        workers=6,
        cost=CostModel(base=15.0, per_step=0.0, per_sample=2.0, per_megapixel=0.0, noise=0.3),
        # Lighter than the chaos batch: each run is a fresh process paying the CLI's own
        # (unscaled) retry backoff.
        faults=FaultConfig(
            seed=seed,
            rate_5xx=0.04,
            rate_drop_before=0.01,
            rate_drop_after=0.01,
            rate_429=0.03,
            retry_after_429=2.0,
            rate_failed=0.05,
            rate_output_404=0.10,
            output_404_for=30.0,
        ),
        seed=seed,
    )
    killed = 0
    exit_codes: list[int] = []
    async with Emulator(config) as emu:
        argv = command(prompts, out, emu.base_url)
        number = 0
        while True:
            number += 1
            assert number <= kills + 8, "the batch never completed"
            # A random moment: a few to a few dozen manifest lines further on.
            threshold = rng.randint(1, max(2, prompts_n // 2)) if killed < kills else None
            code = await run_once(argv, manifest, threshold, logs, number)
            if code is None:
                killed += 1
                continue
            exit_codes.append(code)
            assert code in (0, 1), (logs / f"run{number}.err").read_text()
            states = dba.read_manifest(manifest)
            # Complete: nothing left that another run would do except retry failed items.
            if code == 0 or all(s.status in ("done", "ambiguous") for s in states.values()):
                break
        last_out = (logs / f"run{number}.out").read_text()

        # One more run of the complete batch: it submits nothing and fetches nothing new.
        received = emu.stats.submissions_received
        accepted = emu.stats.submissions_accepted
        number += 1
        again = await run_once(argv, manifest, None, logs, number)
        assert again == exit_codes[-1]
        assert emu.stats.submissions_received == received
        assert emu.stats.submissions_accepted == accepted

        states = dba.read_manifest(manifest)
        keys = list(states)
        assert len(keys) == prompts_n
        counts = check_final_states(states, keys)
        assert paid_twice(emu) == {}
        samples = {}
        by_prompt = {row["prompt"]: row for row in rows.values()}
        metadata = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
        names = [row["file_name"] for row in metadata]
        assert len(names) == len(set(names)), "a metadata row written twice"
        key_prompt = {row["key"]: row["prompt"] for row in metadata}
        for key, state in states.items():
            if state.status == "done":
                samples[key] = by_prompt[key_prompt[key]].get("samples", 1)
        images = check_files(out, states, samples)
        assert sorted(names) == sorted(p.name for p in image_files(out))
        assert f"images {images}" in last_out or counts["done"] == 0
        # Items the service finished under an id the client knew are on disk.
        left_behind = [
            k
            for k, s in states.items()
            if s.status != "done" and s.job_id and emu.jobs[int(s.job_id)].status == "success"
        ]
        assert left_behind == []
        # The key appears nowhere: not in the output folder, not in anything the runs printed.
        for path in [*out.rglob("*"), *logs.iterdir()]:
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path
        ambiguous = [k for k, s in states.items() if s.status == "ambiguous"]
        cut = [k for k in ambiguous if states[k].error is None]
        accepted = emu.stats.accepted_by_fingerprint

        def fingerprint_of(state: dba.ItemState) -> tuple[str, str, int | None]:
            assert state.index is not None
            row = rows[state.index + 1]
            return ("midjourney", row["prompt"], row["seed"])

        figures = {
            "seed": seed,
            "prompts": prompts_n,
            "kills": killed,
            "runs": number,
            "exit_codes": exit_codes,
            "items_done": counts["done"],
            "items_failed_typed": counts["failed"],
            "items_ambiguous_reported": counts["ambiguous"],
            # A kill between the durable "submitting" line and the answer: no error object.
            "ambiguous_cut_by_a_kill": len(cut),
            "ambiguous_accepted_by_service": sum(
                1 for k in ambiguous if accepted[fingerprint_of(states[k])] > 0
            ),
            "images_written": images,
            "items_lost": 0,
            "duplicate_paid_submissions": len(paid_twice(emu)),
            "jobs_accepted": emu.stats.submissions_accepted,
            "faults_injected": fault_figures(emu),
        }
    return figures


@pytest.mark.parametrize("seed", [1, 2])
async def test_kill_and_restart_quick(tmp_path: Path, seed: int) -> None:
    figures = await kill_and_restart(tmp_path, seed=seed, prompts_n=24, kills=3)
    report(f"kill_restart_quick_seed_{seed}", figures, write=False)


@pytest.mark.slow
async def test_kill_and_restart_many_seeds(tmp_path: Path) -> None:
    seeds = list(range(101, 111))
    per_seed = []
    for seed in seeds:
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        per_seed.append(await kill_and_restart(folder, seed=seed, prompts_n=80, kills=8))
    totals = {
        name: sum(f[name] for f in per_seed)
        for name in (
            "prompts",
            "kills",
            "runs",
            "items_done",
            "items_failed_typed",
            "items_ambiguous_reported",
            "ambiguous_cut_by_a_kill",
            "ambiguous_accepted_by_service",
            "images_written",
            "items_lost",
            "duplicate_paid_submissions",
            "jobs_accepted",
        )
    }
    report("kill_restart", {"seeds": seeds, "totals": totals, "per_seed": per_seed}, write=True)
