"""A user's script, type-checked with ``mypy --strict`` by tests/test_user_meets.py and run
against the emulator: every public call of the client, as a user writes it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import dreambooth_async as dba


async def main(base_url: str, key: str) -> None:
    async with dba.DreamboothClient(
        key,
        base_url=base_url,
        api_version="v6",
        timeout=dba.Timeouts(request=30.0),
        retry=dba.RetryPolicy(max_retries=2),
        poll=dba.PollPolicy(),
        headers={"X-Example": "typed"},
        trust_env=False,
    ) as client:
        request = dba.Text2Img(
            model_id="midjourney",
            prompt="a cat on a bench",
            width=512,
            height=512,
            steps=20,
            scheduler=dba.Scheduler.LCMScheduler,
            seed=7,
        )
        result: dba.GenerationResult = await client.generate(request, timeout=60)
        seed: int | None = result.seed
        assert seed == 7
        job: dba.Job = await client.submit(request)
        waited: dba.GenerationResult = await job.wait(timeout=60)
        assert waited.output
        again: dba.GenerationResult = await client.wait_for(job.id, timeout=60)
        assert again.id == job.id
        answer = await client.fetch(job.id)
        assert isinstance(answer, dba.GenerationResult | dba.Processing)
        shortcut = await client.text2img(model_id="midjourney", prompt="a dog", seed=1)
        assert shortcut.output
        with tempfile.TemporaryDirectory() as folder:
            paths: list[Path] = await result.save(folder)
            more: list[Path] = await client.download(shortcut, Path(folder) / "more")
            assert paths and more
        items: list[dba.BatchItem] = await client.gather(
            [request, dba.Text2Img(model_id="midjourney", prompt="a fox", seed=2)],
            concurrency=None,
            fail_fast=False,
        )
        assert all(item.ok for item in items)
        async with client.map([request], max_concurrency=4) as run:
            async for item in run:
                error: BaseException | None = item.error
                assert error is None, error
        pending: int = await client.request_count()
        balance: dba.WalletBalance = await client.wallet_balance()
        assert pending >= 0 and balance.balance >= 0
        load: dba.SystemLoad = await client.system_load()
        models: list[dba.ModelInfo] = await client.model_list()
        assert load.status and models
        try:
            await client.fetch("no-such-job")
        except dba.JobNotFound as missing:
            assert missing.job_id == "no-such-job"
        except dba.APIError:
            pass
