"""``generate --webhook-listen``: answers lost to dropped connections are recovered.

The emulator (in this process, so its books survive) accepts some submissions and then drops
the connection; the command's webhook receiver learns those jobs from the service's calls.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig, FaultConfig

pytestmark = pytest.mark.anyio

SCALE = 0.01


async def test_generate_recovers_lost_answers_from_webhooks(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a quiet harbour at dusk, study {i}\n" for i in range(20)))
    out = tmp_path / "out"
    config = EmulatorConfig(
        time_scale=SCALE,
        cost=CostModel(base=10.0, per_step=0.0, per_sample=0.0, per_megapixel=0.0, noise=0.0),
        workers=8,
        queue_limit=50,
        sync_window=0.0,
        faults=FaultConfig(seed=5, rate_drop_after=0.3),
    )
    async with Emulator(config) as emu:
        command = [
            sys.executable, "-m", "dreambooth_async.cli", "generate", str(prompts),
            "--model-id", "midjourney", "--out", str(out), "--base-url", emu.base_url,
            "--api-key", emu.key, "--poll-scale", str(SCALE), "--no-progress",
            "--webhook-listen", "127.0.0.1:0", "--recover-seconds", "5", "--concurrency", "8",
        ]  # fmt: skip
        done = await anyio.run_process(command, check=False)
        assert done.returncode == 0, done.stderr.decode()
        lost = emu.stats.faults["drop_after"]
        assert lost > 0  # some answers were lost after their job was accepted
        assert emu.stats.duplicate_submissions() == {}
        assert len(list(out.glob("*.png"))) == 20
