"""Every example in examples/ runs against the emulator: the web app in process, the bulk
script and the notebook as subprocesses, exactly as a user would start them."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

import dreambooth_async as dba
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCALE = 0.01
PNG = b"\x89PNG\r\n\x1a\n"
QUICK = CostModel(base=2, per_step=0.1, per_sample=0, per_megapixel=0, noise=0)


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def run_example(
    script: str, *args: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[bytes]:
    """Run ``examples/<script>`` in a fresh interpreter (warnings are errors there too)."""
    environment = {**os.environ, **env}
    return await anyio.run_process(
        [sys.executable, "-W", "error", str(EXAMPLES / script), *args],
        env=environment,
        cwd=cwd,
        check=False,
    )


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    # A long sync window: the subprocess examples use the default (real-time) poll policy,
    # so the emulator answers at once rather than make them poll on a real-time schedule.
    config = EmulatorConfig(time_scale=SCALE, sync_window=1000, cost=QUICK, spam_filter=False)
    async with Emulator(config) as emu:
        yield emu


# --- the web app ------------------------------------------------------------------------------


async def test_webapp_generates_per_request_with_one_shared_client() -> None:
    webapp = load("webapp")
    config = EmulatorConfig(time_scale=SCALE, sync_window=0, cost=QUICK, queue_limit=10)
    async with Emulator(config) as emu:
        app = webapp.build_app(
            base_url=emu.base_url, api_key=emu.key, poll=dba.PollPolicy().scaled(SCALE)
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()  # runs the lifespan: the client opens here
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            client = app[webapp.CLIENT]
            async with aiohttp.ClientSession() as http:

                async def generate(body: Any) -> tuple[int, Any]:
                    async with http.post(f"{url}/generate", json=body) as response:
                        return response.status, await response.json()

                answers = await asyncio.gather(
                    *(generate({"prompt": f"a lighthouse, take {i}", "seed": i}) for i in range(6))
                )
                assert [status for status, _ in answers] == [200] * 6
                assert len({answer["id"] for _, answer in answers}) == 6
                for _, answer in answers:
                    (image,) = answer["images"]
                    async with http.get(image) as response:
                        assert (await response.read()).startswith(PNG)
                assert emu.stats.submissions_accepted == 6
                assert app[webapp.CLIENT] is client  # one client for every request

                status, answer = await generate({"prompt": "   "})
                assert status == 400 and answer["field"] == "prompt"
                status, answer = await generate({"prompt": "x", "width": 4096})
                assert status == 400 and answer["field"] == "width"
                status, answer = await generate(["not", "an", "object"])
                assert status == 400
                status, answer = await generate({"prompt": "x", "model_id": "no-such-model"})
                assert status == 502 and "Model id not found" in answer["error"]
                assert emu.key not in json.dumps(answer)
        finally:
            await runner.cleanup()  # the lifespan's exit: the client closes here
        with pytest.raises(dba.ClientClosedError):
            await client.generate(dba.Text2Img(model_id="midjourney", prompt="after"))


# --- the bulk dataset script ------------------------------------------------------------------


async def test_bulk_dataset_script_builds_and_resumes(emulator: Emulator, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    lines = [f"a small house number {i}" for i in range(6)]
    prompts.write_text("# a comment\n\n" + "\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "dataset"
    env = {"DREAMBOOTH_API_KEY": emulator.key}
    args = (str(prompts), str(out), "--base-url", emulator.base_url, "--size", "64")

    done = await run_example("bulk_dataset.py", *args, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    assert b"6 of 6 prompts done" in done.stdout
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [row["prompt"] for row in rows] == lines
    for row in rows:
        assert (out / row["file"]).read_bytes().startswith(PNG)
        assert row["job_id"] and row["key"] and row["seed"] is not None
    assert len(list((out / "images").iterdir())) == 6
    accepted = emulator.stats.submissions_accepted
    assert accepted == 6

    again = await run_example("bulk_dataset.py", *args, env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr.decode()
    assert emulator.stats.submissions_accepted == accepted  # nothing paid for twice
    rerun_rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert rerun_rows == rows
    assert emulator.key.encode() not in done.stdout + done.stderr + again.stdout + again.stderr


# --- the notebook -----------------------------------------------------------------------------


async def test_notebook_runs_headless(emulator: Emulator, tmp_path: Path) -> None:
    env = {
        "DREAMBOOTH_API_KEY": emulator.key,
        "DREAMBOOTH_BASE_URL": emulator.base_url,
        "NOTEBOOK_OUT": str(tmp_path / "out"),
    }
    done = await run_example("notebook.py", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    stdout = done.stdout.decode()
    assert "4 of 4 done" in stdout and "5 files in" in stdout
    assert emulator.key not in stdout + done.stderr.decode()
    files = sorted((tmp_path / "out").rglob("*.png"))
    assert len(files) == 5 and all(f.read_bytes().startswith(PNG) for f in files)
