"""``python -m dreambooth_async.emulator`` in a process of its own."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from _emulator_fixtures import KEY, post

from dreambooth_async.emulator import EmulatorConfig, build_arg_parser, config_from_args

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


async def test_module_prints_its_url_and_key_and_serves_until_terminated() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dreambooth_async.emulator",
        "--port",
        "0",
        "--time-scale",
        "0.01",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        # The timeouts only turn a hang into a failure; reading ends on the printed lines.
        first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        second = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert first.startswith("base_url: http://127.0.0.1:")
        assert second == f"key: {KEY}"
        base_url = first.removeprefix("base_url: ")
        async with aiohttp.ClientSession() as http:
            status, load, _ = await post(http, f"{base_url}/api/v3/system_load", {"key": KEY})
        assert status == 200
        assert load == {"queue_num": 0, "queue_time": 0.0, "status": "ok"}
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, stderr.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


def test_arguments_make_the_configuration() -> None:
    args = build_arg_parser().parse_args(
        [
            "--port=0",
            "--key=a",
            "--key=b",
            "--queue-limit=1000000",
            "--time-scale=0.0001",
            "--spam-filter=off",
            "--http-errors",
            "--cold-models=sd-1.5",
            "--fault-5xx=0.1",
            "--fault-seed=3",
        ]
    )
    config = config_from_args(args)
    assert config.keys == ("a", "b")
    assert (config.queue_limit, config.time_scale, config.port) == (1_000_000, 0.0001, 0)
    assert (config.spam_filter, config.http_errors) == (False, True)
    assert config.cold_models == ("sd-1.5",)
    assert (config.faults.rate_5xx, config.faults.seed) == (0.1, 3)
    defaults = config_from_args(build_arg_parser().parse_args([]))
    assert defaults == EmulatorConfig(port=7860)
