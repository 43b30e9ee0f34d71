"""The spend budget (``map(..., max_spend=)``, ``generate --max-spend``) against the emulator's
wallets over real HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

import dreambooth_async as dba
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig

pytestmark = pytest.mark.anyio

SCALE = 0.01
K1 = "sk-spend-first-0123456789"
K2 = "sk-spend-second-9876543210"


@contextlib.asynccontextmanager
async def emulator(**config: Any) -> AsyncIterator[Emulator]:
    config.setdefault("keys", (K1, K2))
    config.setdefault("time_scale", SCALE)
    config.setdefault("cost", CostModel(base=5, per_step=0, per_sample=0, per_megapixel=0, noise=0))
    config.setdefault("workers", 16)
    config.setdefault("queue_limit", 5)
    config.setdefault("wallet", 100.0)
    config.setdefault("price_per_image", 1.0)
    async with Emulator(EmulatorConfig(**config)) as emu:
        yield emu


def client(emu: Emulator, keys: list[str]) -> dba.DreamboothClient:
    return dba.DreamboothClient(keys, base_url=emu.base_url, poll=dba.PollPolicy().scaled(SCALE))


def prompts(n: int) -> list[dba.Text2Img]:
    return [dba.Text2Img(model_id="midjourney", prompt=f"prompt {i}", seed=i) for i in range(n)]


def spent(emu: Emulator) -> float:
    return sum(counts.spent for counts in emu.stats.per_key)


@pytest.mark.parametrize("keys", [[K1], [K1, K2]], ids=["one key", "two keys"])
async def test_a_spend_budget_stops_quietly_and_a_rerun_continues(
    tmp_path: Path, keys: list[str]
) -> None:
    manifest = tmp_path / "run.jsonl"
    requests = prompts(50)
    async with emulator() as emu, client(emu, keys) as dbc:
        async with dbc.map(requests, manifest=manifest, max_spend=10) as run:
            first = [item async for item in run]  # no error: a budget is not a failure
        # Alone on the wallet, the measured price is exact: the budget buys ten images.
        assert spent(emu) == 10
        assert all(item.ok for item in first) and len(first) == spent(emu)
        assert run.stats["unsent"] == 50 - len(first)
        measured = run.spend
        assert measured is not None
        # Measured on the 1st and 2nd accepted submissions, then each time the count doubled.
        brackets = measured.pop("brackets")
        assert 3 <= brackets <= 4
        assert measured == {
            "spent": 10.0,
            "images": 10,
            "price_per_image": 1.0,
            "price_source": "measured",
        }
        # Read sparingly: every key at the start, then twice per bracket.
        guard = run._engine.spend
        assert guard is not None and guard.readings == len(keys) + 2 * brackets
        pending = [s for s in dba.read_manifest(manifest).values() if s.status == "pending"]
        assert len(pending) == 50 - len(first)

        async with dbc.map(requests, manifest=manifest, max_spend=10) as run:
            second = [item async for item in run]
        assert spent(emu) == 20  # ten more: the budget is the run's
        assert sum(1 for item in second if not item.resumed) == spent(emu) - len(first)
        assert emu.stats.duplicate_requests() == {}


async def test_samples_count_in_the_measured_price() -> None:
    requests = [
        dba.Text2Img(model_id="midjourney", prompt=f"p {i}", seed=i, samples=4) for i in range(30)
    ]
    async with emulator() as emu, client(emu, [K1]) as dbc:
        items = await dbc.gather(requests, max_spend=30)
        assert spent(emu) <= 30 and len(items) == spent(emu) / 4


async def test_without_a_readable_balance_nothing_is_sent() -> None:
    posts: list[str] = []

    async def nothing_here(request: web.Request) -> web.Response:
        posts.append(request.path)
        return web.json_response({"status": "error", "message": "Not found"}, status=404)

    app = web.Application()
    app.router.add_post("/{tail:.*}", nothing_here)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with dba.DreamboothClient(K1, base_url=url) as dbc:
            with pytest.raises(dba.DreamboothError, match="max_spend"):
                await dbc.gather(prompts(3), max_spend=1.0)
    finally:
        await runner.cleanup()
    assert posts and all(path == "/api/wallet_balance" for path in posts)


async def test_max_spend_is_checked() -> None:
    async with emulator() as emu, client(emu, [K1]) as dbc:
        for wrong in (0, -1.0, True):
            with pytest.raises(ValueError, match="max_spend"):
                dbc.map(prompts(1), max_spend=wrong)


async def test_generate_max_spend(tmp_path: Path) -> None:
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("".join(f"prompt number {i}\n" for i in range(30)))
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "dreambooth_async.cli",
        "generate",
        str(prompts_file),
        "--model-id",
        "midjourney",
        "--out",
        str(out),
        "--poll-scale",
        str(SCALE),
        "--no-progress",
        "--api-key",
        K1,
        "--max-spend",
        "5",
    ]
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    async with emulator() as emu:
        command += ["--base-url", emu.base_url]
        with anyio.fail_after(90):
            done = await anyio.run_process(command, check=False, env=env)
        text = (done.stdout + done.stderr).decode()
        assert done.returncode == 3, text  # stopped by the budget: not every prompt is done
        assert spent(emu) == 5  # the run's images at the measured price: to the last one
        report = json.loads((out / "dreambooth-report.json").read_text())
        assert report["budget"]["max_spend"] == 5.0
        # The prompts file is read no further than the budget: at least one item unsent.
        assert report["spent"] == spent(emu) and report["unsent"] >= 1
        assert "budget reached (--max-spend 5)" in text
        with anyio.fail_after(90):
            done = await anyio.run_process(command, check=False, env=env)
        assert done.returncode == 3  # the same budget again: ten of thirty prompts done
        assert spent(emu) == 10
    assert K1 not in text
