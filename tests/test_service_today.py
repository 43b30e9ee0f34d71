"""Issue 11's six findings, replayed against the emulator playing ModelsLab's service as its
current docs show it (docs/protocol.md): the id-less "processing" fetch answer, reruns after a
failure with a job id, base64 outputs, 402/403, the seed of queued jobs on v3/v4, and today's
defaults.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from _cli_commands import generate_command
from PIL import Image

import dreambooth_async as dba
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig

pytestmark = pytest.mark.anyio

SCALE = 0.02
SECRET = "sk-today-0c9e7b5a3f1d"
# Every job is queued for a while (a base above the sync window), so fetch is exercised.
SLOW = CostModel(base=6.0, per_step=0.0, per_sample=0.0, per_megapixel=0.0, noise=0.0)
POLL = dba.PollPolicy().scaled(SCALE)


def _config(**overrides: Any) -> EmulatorConfig:
    options: dict[str, Any] = {
        "time_scale": SCALE,
        "keys": (SECRET,),
        "cost": SLOW,
        "queue_limit": 10,
        "workers": 4,
        "spam_filter": False,
    }
    options.update(overrides)
    return EmulatorConfig(**options)


@asynccontextmanager
async def service(
    api_version: dba.ApiVersion = "v6", **overrides: Any
) -> AsyncIterator[tuple[Emulator, dba.DreamboothClient]]:
    async with Emulator(_config(**overrides)) as emu:
        client = dba.DreamboothClient(
            SECRET, base_url=emu.base_url, api_version=api_version, poll=POLL
        )
        async with client:
            yield emu, client


def request(n: int = 0, **fields: Any) -> dba.Text2Img:
    return dba.Text2Img(model_id="midjourney", prompt=f"a lighthouse, study {n}", **fields)


def png(color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, format="PNG")
    return buffer.getvalue()


# --- 1. the documented "processing" answer of fetch -------------------------------------------


@pytest.mark.parametrize("api_version", ["v6", "v7"])
async def test_a_job_completes_through_id_less_processing_answers(
    api_version: dba.ApiVersion,
) -> None:
    async with service(api_version, idless_processing_rate=1.0) as (emu, client):
        job = await client.submit(request(seed=3))
        answer = await client.fetch(job.id)
        assert isinstance(answer, dba.Processing)
        assert answer.id == job.id and answer.eta is None
        with anyio.fail_after(30):
            result = await job
        assert result.status == "success" and result.id == job.id and result.output
        assert emu.stats.idless_processing >= 1
        assert emu.stats.submissions_accepted == 1


# --- 2. a rerun fetches what was accepted -----------------------------------------------------


async def test_a_rerun_attaches_to_failed_items_that_have_a_job_id(tmp_path: Path) -> None:
    manifest_path = tmp_path / "manifest.jsonl"
    requests = [request(n, seed=n) for n in range(3)]
    async with service(idless_processing_rate=1.0) as (emu, client):
        # What the first version left behind: each job accepted, then given up on the id-less
        # answer with an APIError, its id kept in the manifest.
        manifest = dba.Manifest.open(manifest_path)
        for item in requests:
            job = await client.submit(item)
            key = dba.request_key(item)
            manifest.submitted(key, job.id, fetch_url=None, eta=None)
            manifest.failed(
                key,
                dba.APIError("the service answered 'processing' without a job id"),
                job_id=job.id,
            )
        manifest.close()
        assert emu.stats.submissions_accepted == 3
        with anyio.fail_after(60):
            items = await client.gather(requests, manifest=manifest_path)
        assert [item.status for item in items] == ["done"] * 3
        assert emu.stats.submissions_received == 3  # nothing was sent again
        assert emu.stats.duplicate_submissions() == {}


async def test_a_job_the_service_said_failed_is_submitted_again_on_rerun(
    tmp_path: Path,
) -> None:
    manifest_path = tmp_path / "manifest.jsonl"
    item = request(seed=1)
    async with service() as (emu, client):
        manifest = dba.Manifest.open(manifest_path)
        key = dba.request_key(item)
        manifest.submitted(key, "old-job", fetch_url=None, eta=None)
        manifest.failed(key, dba.GenerationFailed("Failed, Try Again"), job_id="old-job")
        manifest.close()
        with anyio.fail_after(60):
            [done] = await client.gather([item], manifest=manifest_path)
        assert done.ok
        assert emu.stats.submissions_accepted == 1


def _generate(prompts: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return generate_command(prompts, out, base_url, SECRET, *extra, poll_scale=SCALE)


async def _run(command: list[str]) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    with anyio.fail_after(90):
        done = await anyio.run_process(command, check=False, env=env)
    return done.returncode, (done.stdout + done.stderr).decode()


@pytest.mark.parametrize("api_version", ["v3", "v6"])
async def test_generate_completes_and_a_rerun_pays_nothing(
    tmp_path: Path, api_version: str
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red kite\na blue boat\na green hill\n")
    out = tmp_path / "out"
    async with Emulator(_config(idless_processing_rate=1.0)) as emu:
        command = _generate(prompts, out, emu.base_url, "--api-version", api_version)
        code, text = await _run([*command, "--random-seeds"])
        assert code == 0, text
        assert emu.stats.submissions_accepted == 3
        rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
        assert len(rows) == 3
        # What ran, from the service's meta (the v3 fetch answer has none of its own).
        for row in rows:
            assert isinstance(row["seed"], int)
            assert (row["width"], row["height"]) == (512, 512)
            assert isinstance(row["steps"], int) and isinstance(row["guidance_scale"], float)
        code, text = await _run([*command, "--random-seeds"])
        assert code == 0, text
        assert emu.stats.submissions_received == 3
        assert len((out / "metadata.jsonl").read_text().splitlines()) == 3
    assert SECRET not in text


# --- 3. base64 outputs ------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["data_url", "bare", "link"])
async def test_a_base64_output_is_saved_as_an_image(tmp_path: Path, style: str) -> None:
    async with service(base64_output=style) as (_emu, client):
        with anyio.fail_after(30):
            result = await client.generate(
                dba.Img2Img(model_id="midjourney", prompt="repaint", init_image=png(), seed=5)
            )
        paths = await result.save(tmp_path / "saved")
        assert len(paths) == 1 and paths[0].suffix == ".png"
        with Image.open(paths[0]) as image:
            image.load()
            assert image.size[0] > 0
        if style == "link":
            assert result.inline_images == ()
        else:
            [data] = result.inline_images
            assert data == paths[0].read_bytes()


def test_text_that_only_looks_like_base64_is_no_image() -> None:
    result = dba.GenerationResult(id="1", status="success", output=("aGVsbG8gd29ybGQ=",))
    assert result.inline_images == ()


# --- 4. 402 and 403 ---------------------------------------------------------------------------


@pytest.mark.parametrize("http_errors", [True, False])
async def test_insufficient_credits_stops_the_batch_and_leaves_the_rest_pending(
    tmp_path: Path, http_errors: bool
) -> None:
    manifest_path = tmp_path / "manifest.jsonl"
    requests = [request(n, seed=n) for n in range(6)]
    async with service(wallet=0.02, price_per_image=0.01, http_errors=http_errors) as (
        emu,
        client,
    ):
        done: list[dba.BatchItem] = []
        with anyio.fail_after(60), pytest.raises(dba.InsufficientCredits) as caught:
            async with client.map(requests, 1, manifest=manifest_path) as run:
                async for item in run:
                    done.append(item)
        assert isinstance(caught.value, dba.APIError)
        assert emu.stats.submissions_accepted == 2
        assert emu.stats.rejected_credits == 1  # the first refusal stopped the batch
        assert [item.status for item in done] == ["done", "done"]
        states = dba.read_manifest(manifest_path)
        left = [state for state in states.values() if state.status != "done"]
        assert left and all(state.job_id is None for state in left)
        assert all(state.status in ("pending", "not_landed") for state in left)


@pytest.mark.parametrize("http_errors", [True, False])
async def test_a_feature_not_on_the_plan_is_permission_denied(http_errors: bool) -> None:
    async with service(premium_models=("midjourney",), http_errors=http_errors) as (emu, client):
        with pytest.raises(dba.PermissionDenied) as caught:
            await client.generate(request())
        assert not isinstance(caught.value, dba.AuthenticationError)
        assert emu.stats.submissions_accepted == 0


@pytest.mark.parametrize("http_errors", [True, False])
async def test_only_an_invalid_key_is_an_authentication_error(http_errors: bool) -> None:
    async with Emulator(_config(http_errors=http_errors)) as emu:
        client = dba.DreamboothClient("sk-wrong", base_url=emu.base_url, poll=POLL)
        async with client:
            with pytest.raises(dba.AuthenticationError):
                await client.generate(request())


async def test_the_cli_stops_on_insufficient_credits_and_continues_after_a_top_up(
    tmp_path: Path,
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a sailing ship, plate {n}\n" for n in range(5)))
    out = tmp_path / "out"
    # The same account before and after topping up: the same emulator cannot be refilled, so
    # the second run meets a fresh one, which knows none of the first run's jobs. All five
    # are done after it, and it paid only for the ones the first run could not.
    async with Emulator(_config(wallet=0.02, price_per_image=0.01, http_errors=True)) as poor:
        code, text = await _run(_generate(prompts, out, poor.base_url, "--concurrency", "1"))
        assert code == 4, text  # stopped by the service
        assert "InsufficientCredits" in text and "run the same command again" in text
        assert poor.stats.submissions_accepted == 2
    async with Emulator(_config()) as topped_up:
        code, text = await _run(_generate(prompts, out, topped_up.base_url))
        assert code == 0, text
        assert topped_up.stats.submissions_accepted == 3
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 5


# --- 5. the seed of queued jobs on v3 and v4 --------------------------------------------------


@pytest.mark.parametrize("api_version", ["v3", "v4", "v6", "v7"])
async def test_a_queued_job_keeps_its_seed(api_version: dba.ApiVersion) -> None:
    async with service(api_version) as (_emu, client):
        with anyio.fail_after(30):
            result = await client.generate(request(seed=None))
        assert isinstance(result.seed, int)
        assert result.meta.get("W") is not None


# --- 6. today's defaults, and the account ----------------------------------------------------


def test_the_defaults_are_modelslab_v6(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DREAMBOOTH_BASE_URL", raising=False)
    client = dba.DreamboothClient("k")
    assert client.base_url == "https://modelslab.com" == dba.DEFAULT_BASE_URL
    assert client.api_version == "v6"


def test_the_environment_names_the_key_and_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DREAMBOOTH_API_KEY", raising=False)
    monkeypatch.setenv("MODELSLAB_API_KEY", "sk-from-modelslab-env")
    monkeypatch.setenv("DREAMBOOTH_BASE_URL", "http://127.0.0.1:9")
    client = dba.DreamboothClient()
    assert client.base_url == "http://127.0.0.1:9"
    assert "sk-from-modelslab-env" not in repr(client)
    monkeypatch.delenv("MODELSLAB_API_KEY")
    with pytest.raises(dba.RequestValidationError, match="MODELSLAB_API_KEY"):
        dba.DreamboothClient()


async def test_request_count_and_wallet_balance() -> None:
    async with service(wallet=5.0, price_per_image=0.5) as (_emu, client):
        assert await client.request_count() == 0
        balance = await client.wallet_balance()
        assert balance.balance == 5.0 and balance.currency == "USD"
        job = await client.submit(request(seed=1))
        assert await client.request_count() == 1
        assert (await client.wallet_balance()).balance == 4.5
        with anyio.fail_after(30):
            await job
        assert await client.request_count() == 0
