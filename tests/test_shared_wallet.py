"""Two shards on one key and one wallet (issue 21): ``generate --shard 1/2 --max-spend`` and
``generate --shard 2/2`` as two processes against one emulator. Each reports its own spend
(their sum is what the account was charged), the budget of one stops it at its own images
while the other carries on to its end, and each shows the wallet's drop as the account's."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from _cli_commands import generate_command
from anyio.abc import Process

import dreambooth_async as dba
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

SECRET = "sk-shared-wallet-3f60a9d1e2"
SCALE = 0.02
PRICE = 0.01
PROMPTS = 40


def _state(pid: int) -> str:
    # The third field of /proc/<pid>/stat: R, S, T (stopped), Z, ...
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def _until(check: Callable[[], bool]) -> None:
    """Wait (polling; bounded only against a hang) until ``check()`` is true."""
    with anyio.fail_after(60):
        while True:
            if check():
                return
            await anyio.sleep(0.005)


def _accepted_in(manifest: Path) -> int:
    if not manifest.exists():
        return 0
    states = dba.read_manifest(manifest).values()
    return sum(1 for state in states if state.status in ("submitted", "done"))


async def test_two_shards_on_one_wallet_each_report_and_budget_their_own(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a lantern on a pier, study {i}\n" for i in range(PROMPTS)))
    outs = [tmp_path / "shard-1", tmp_path / "shard-2"]
    manifest_1 = outs[0] / "dreambooth-manifest.shard-1-of-2.jsonl"
    config = EmulatorConfig(
        keys=(SECRET,),
        queue_limit=10,
        workers=10,
        time_scale=SCALE,
        # 10 service seconds (a fifth of a second here): both shards have jobs queued at once.
        cost=CostModel(base=10, per_step=0, per_sample=0, per_megapixel=0, noise=0),
        wallet=50.0,
        price_per_image=PRICE,
    )
    async with Emulator(config) as emu:

        def command(index: int, *extra: str) -> list[str]:
            return generate_command(
                prompts, outs[index - 1], emu.base_url, SECRET, "--shard", f"{index}/2",
                *extra, poll_scale=SCALE,
            )  # fmt: skip

        # Shard 1, with a budget of five images (issue 23: 0.05 at 0.01 stopped at four),
        # starts alone; once its first job was accepted (and the price measured) it is frozen,
        # shard 2 runs meanwhile and is charged inside shard 1's run, then shard 1 goes on.
        first = await anyio.open_process(
            command(1, "--max-spend", "0.05"), stderr=subprocess.STDOUT
        )
        await _until(lambda: _accepted_in(manifest_1) >= 1 or first.returncode is not None)
        assert first.returncode is None, "shard 1 ended before it could be frozen"
        first.send_signal(signal.SIGSTOP)
        await _until(lambda: _state(first.pid) == "T")
        charged_alone = emu.stats.submissions_accepted

        second = await anyio.open_process(command(2), stderr=subprocess.STDOUT)
        await _until(lambda: emu.stats.submissions_accepted >= charged_alone + 3)
        first.send_signal(signal.SIGCONT)

        outputs: dict[int, tuple[int, str]] = {}

        async def collect(index: int, process: Process) -> None:
            assert process.stdout is not None
            text = b"".join([chunk async for chunk in process.stdout]).decode()
            outputs[index] = (await process.wait(), text)

        async with anyio.create_task_group() as group:
            group.start_soon(collect, 1, first)
            group.start_soon(collect, 2, second)
        await first.aclose()
        await second.aclose()
        account = sum(counts.spent for counts in emu.stats.per_key)
        assert emu.stats.duplicate_submissions() == {}

    reports = [json.loads((out / f"dreambooth-report.shard-{i}-of-2.json").read_text())
               for i, out in enumerate(outs, start=1)]  # fmt: skip
    one, two = reports
    code_2, text_2 = outputs[2]
    text_1 = outputs[1][1]

    # Shard 1 stopped at its own budget: five images, 0.05, the rest pending.
    assert one["images"] == 5 and one["accepted"] == 5
    assert one["spent"] == pytest.approx(0.05) and one["price_per_image"] == pytest.approx(PRICE)
    assert one["price_source"] == "measured" and one["unsent"] > 0
    assert "budget reached (--max-spend 0.05)" in text_1, text_1
    # The account dropped by more during shard 1's run than shard 1 spent: shard 2's images,
    # shown as the account's, not counted as shard 1's.
    assert one["wallet_drop"] > one["spent"] + PRICE / 2
    assert "spent 0.05 USD: this run's 5 images at 0.01 USD (measured from the wallet)" in text_1

    # Shard 2 carried on to its end, unbudgeted, and counts only its own images.
    assert code_2 == 0, text_2
    assert two["unsent"] == 0 and two["failed"] == 0 and two["done"] == two["items"]
    assert two["spent"] == pytest.approx(PRICE * two["images"])

    # Each one's spend is its own: together, what the account was charged.
    assert one["spent"] + two["spent"] == pytest.approx(account, abs=PRICE)
    assert one["images"] + two["images"] == emu.stats.submissions_accepted
