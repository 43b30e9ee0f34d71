"""The batch budget (max_images) against the emulator over real HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import dreambooth_async as dba
from dreambooth_async.emulator import DEFAULT_KEY, CostModel, Emulator, EmulatorConfig

pytestmark = pytest.mark.anyio

SCALE = 0.01


@contextlib.asynccontextmanager
async def env(**config: Any) -> AsyncIterator[tuple[Emulator, dba.DreamboothClient]]:
    config.setdefault("time_scale", SCALE)
    config.setdefault("cost", CostModel(base=5, per_step=0, per_sample=0, per_megapixel=0, noise=0))
    config.setdefault("workers", 8)
    config.setdefault("queue_limit", 5)
    async with (
        Emulator(EmulatorConfig(**config)) as emu,
        dba.DreamboothClient(
            DEFAULT_KEY, base_url=emu.base_url, poll=dba.PollPolicy().scaled(SCALE)
        ) as client,
    ):
        yield emu, client


def prompts(n: int, **fields: Any) -> list[dba.Text2Img]:
    return [
        dba.Text2Img(model_id="midjourney", prompt=f"prompt {i}", seed=i, **fields)
        for i in range(n)
    ]


def images(emu: Emulator) -> int:
    return sum(key.images for key in emu.stats.per_key)


async def test_a_budget_stops_quietly_and_a_rerun_with_more_continues(tmp_path: Path) -> None:
    manifest = tmp_path / "run.jsonl"
    requests = prompts(50)
    async with env(wallet=100.0, price_per_image=0.5) as (emu, client):
        async with client.map(requests, manifest=manifest, max_images=10) as run:
            first = [item async for item in run]  # no error: a budget is not a failure
        assert images(emu) == 10 and emu.stats.submissions_accepted == 10
        assert len(first) == 10 and all(item.ok for item in first)
        assert run.stats["unsent"] == 40
        pending = [s for s in dba.read_manifest(manifest).values() if s.status == "pending"]
        assert len(pending) == 40

        async with client.map(requests, manifest=manifest, max_images=20) as run:
            second = [item async for item in run]
        assert images(emu) == 20  # ten more, not twenty
        assert run.stats["skipped"] == 10 and run.stats["unsent"] == 30
        assert sum(1 for item in second if not item.resumed) == 10
        assert emu.stats.duplicate_requests() == {}
        balance = await client.wallet_balance()
        assert balance.balance == pytest.approx(100.0 - 20 * 0.5)


async def test_samples_count_toward_the_budget() -> None:
    async with env() as (emu, client):
        run = client.map(prompts(10, samples=3), max_images=7)
        items = [item async for item in run]
        assert len(items) == 2 and images(emu) == 6  # a third item would make 9
        assert run.stats["unsent"] == 8


async def test_a_stream_is_read_no_further_than_the_budget() -> None:
    read: list[int] = []

    def stream() -> Iterator[dba.Text2Img]:
        for i in range(1000):
            read.append(i)
            yield dba.Text2Img(model_id="midjourney", prompt=f"p {i}", seed=i)

    async with env() as (emu, client):
        items = await client.gather(stream(), max_images=3)
        assert len(items) == 3 and images(emu) == 3
        assert len(read) == 4  # the fourth showed the budget was spent


async def test_max_images_is_checked() -> None:
    async with env() as (_emu, client):
        with pytest.raises(ValueError, match="max_images"):
            client.map(prompts(1), max_images=-1)


async def test_a_dry_run_plan_counts_what_the_manifest_covers_and_submits_nothing(
    tmp_path: Path,
) -> None:
    from dreambooth_async._batch import plan_run

    manifest = tmp_path / "run.jsonl"
    requests = prompts(50)
    async with env() as (emu, client):
        await client.gather(requests, manifest=manifest, max_images=10)
        accepted = emu.stats.submissions_accepted
        plan = plan_run(
            requests,
            api_version=client.api_version,
            base_url=client.base_url,
            manifest=manifest,
            max_images=20,
        )
        assert emu.stats.submissions_accepted == accepted == 10
    assert plan.to_json() == {
        "items": 50,
        "submissions": 10,
        "images": 10,
        "cached": 0,
        "done": 10,
        "in_flight": 0,
        "over_budget": 30,
    }


def test_cli_dry_run_sends_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dreambooth_async.cli import main

    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("".join(f"a painting number {i}\n" for i in range(7)))
    out = tmp_path / "out"
    code = main(
        [
            "generate",
            str(prompts_file),
            "--out",
            str(out),
            "--emulator",
            "--dry-run",
            "--max-images",
            "5",
            "--model-id",
            "midjourney",
        ]
    )
    assert code == 0
    said = capsys.readouterr().out
    assert "5 submissions, 5 images" in said and "2 over --max-images" in said
    assert not out.exists()
