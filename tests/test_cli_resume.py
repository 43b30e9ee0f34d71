"""Acceptance: ``dreambooth-async generate`` killed with SIGKILL mid-batch, then run again.

The emulator runs in this test's process, so its counters (every accepted submission by
fingerprint) survive the kill and show whether any job was paid for twice.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import anyio
import pytest
from _cli_commands import generate_command
from anyio.abc import Process

import dreambooth_async as dba
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig

pytestmark = pytest.mark.anyio

SECRET = "sk-acceptance-5f1c7a9e0b2d4c6e8a"
PROMPTS = 36
SCALE = 0.01


def _command(prompts: Path, out: Path, base_url: str) -> list[str]:
    return generate_command(prompts, out, base_url, SECRET, poll_scale=SCALE)


def _process_state(pid: int) -> str:
    # The third field of /proc/<pid>/stat: R, S, T (stopped), Z, ...
    text = Path(f"/proc/{pid}/stat").read_text()
    return text.rsplit(")", 1)[1].split()[0]


async def _stop(process: Process) -> None:
    process.send_signal(signal.SIGSTOP)
    with anyio.fail_after(5):
        while True:
            if _process_state(process.pid) == "T":
                return
            await anyio.sleep(0.001)


async def _kill_mid_batch(process: Process, manifest: Path) -> dict[str, dba.ItemState]:
    """SIGKILL the process once the manifest shows done and submitted items, at a moment when
    no submission is on the wire.

    The process is frozen (SIGSTOP) before the manifest is read, so what it says is final: a
    POST is always preceded by a durable "submitting" line, so no open "submitting" means no
    POST in flight. A kill in the middle of a POST would make that item genuinely ambiguous
    (reported, not resent), which is correct behaviour but not what this test is about.
    """
    with anyio.fail_after(40):
        while True:
            await anyio.sleep(0.02)
            if process.returncode is not None:
                pytest.fail("the batch finished before the test could kill it")
            states = dba.read_manifest(manifest) if manifest.exists() else {}
            statuses = [s.status for s in states.values()]
            if statuses.count("done") < 3 or statuses.count("submitted") < 2:
                continue
            await _stop(process)
            states = dba.read_manifest(manifest)
            statuses = [s.status for s in states.values()]
            if "submitting" in statuses or statuses.count("submitted") < 2:
                process.send_signal(signal.SIGCONT)
                continue
            process.kill()
            await process.wait()
            return states


async def test_sigkill_mid_batch_then_rerun_pays_once_and_writes_everything(
    tmp_path: Path,
) -> None:
    prompts = tmp_path / "prompts.txt"
    texts = [
        f"acceptance prompt {i}: a {['red', 'green', 'blue'][i % 3]} thing" for i in range(PROMPTS)
    ]
    prompts.write_text("\n".join(texts) + "\n")
    out = tmp_path / "out"
    manifest = out / "dreambooth-manifest.jsonl"
    config = EmulatorConfig(
        keys=(SECRET,),
        queue_limit=5,
        workers=5,
        time_scale=SCALE,
        cost=CostModel(base=25, per_step=0, per_sample=0, per_megapixel=0, noise=0),
    )
    async with Emulator(config) as emu:
        command = _command(prompts, out, emu.base_url)
        first = await anyio.open_process(command, stdout=None, stderr=None)
        async with first:
            killed_at = await _kill_mid_batch(first, manifest)
        assert first.returncode == -signal.SIGKILL
        done_before = {k for k, s in killed_at.items() if s.status == "done"}
        submitted_before = {k for k, s in killed_at.items() if s.status == "submitted"}
        assert done_before and submitted_before
        assert len(done_before) < PROMPTS

        second = await anyio.run_process(command, check=False)
        stdout = second.stdout.decode()
        stderr = second.stderr.decode()
        assert second.returncode == 0, stdout + stderr
        assert f"({len(done_before)} from an earlier run)" in stdout

        # No accepted submission was sent twice: the service saw each prompt accepted once.
        assert emu.stats.duplicate_submissions() == {}
        assert emu.stats.submissions_accepted == PROMPTS
        counts = emu.stats.accepted_by_fingerprint
        assert sorted(prompt for _model, prompt, _seed in counts) == sorted(texts)
        assert set(counts.values()) == {1}

    # Every prompt has its image on disk, and metadata.jsonl one row per image.
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    names = [row["file_name"] for row in rows]
    assert len(names) == len(set(names)) == PROMPTS
    assert sorted(row["prompt"] for row in rows) == sorted(texts)
    on_disk = sorted(p.name for p in out.iterdir() if p.suffix == ".png")
    assert on_disk == sorted(names)
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    final = dba.read_manifest(manifest)
    assert len(final) == PROMPTS and {s.status for s in final.values()} == {"done"}
    # The jobs that were in flight at the kill were attached to, not submitted again.
    for key in submitted_before:
        assert final[key].job_id == killed_at[key].job_id

    # The key appears nowhere: not in the output folder, not in what the command printed.
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in stdout + stderr
    assert not os.listdir(out / ".partial") if (out / ".partial").exists() else True
