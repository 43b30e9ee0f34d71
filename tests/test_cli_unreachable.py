"""``generate`` against a service that is not there: the batch gives up after a few connection
failures (not one item at a time for minutes), says which URL it cannot reach, prints the
summary, exits 4 (stopped by the service), and leaves every item for a rerun, which then
completes them."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from _cli_commands import generate_command

import dreambooth_async as dba
from dreambooth_async import cli
from dreambooth_async._batch import UNREACHABLE_AFTER
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig

pytestmark = pytest.mark.anyio

SECRET = "sk-unreachable-4d8f2a6c0e"
PROMPTS = 60
SCALE = 0.005


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nothing else takes it) and never
    listening, so every connect gets a reset at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _command(prompts: Path, out: Path, base_url: str) -> list[str]:
    return generate_command(prompts, out, base_url, SECRET, poll_scale=SCALE, progress=True)


async def test_an_unreachable_service_stops_the_batch_fast_and_a_rerun_completes_it(
    tmp_path: Path, closed_port: int
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(PROMPTS)))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    base_url = f"http://127.0.0.1:{closed_port}"

    # Generous for a loaded machine; a batch that fails item by item takes minutes.
    with anyio.fail_after(30):
        first = await anyio.run_process(_command(prompts, out, base_url), check=False, env=env)
    stdout, stderr = first.stdout.decode(), first.stderr.decode()
    assert first.returncode == cli.EXIT_SERVICE, (stdout, stderr)
    assert f"cannot reach {base_url}" in stdout, stdout
    assert "check --base-url" in stdout  # what to do about it
    # Said as it is, without aiohttp's connection key ("ssl:default" for an http URL).
    assert "connection refused" in stdout and "ssl:default" not in stdout + stderr
    # It gave up after a few submissions, not after failing all sixty one by one: the key is
    # never answered, so one submission at a time went.
    sent = re.search(r"submissions (\d+)", stdout)
    assert sent is not None and int(sent.group(1)) == UNREACHABLE_AFTER, stdout
    assert "done 0," in stdout and "ambiguous 0," in stdout  # the summary
    assert "run the same command again" in stdout
    assert "last error:" in stderr  # the progress said what was failing
    assert "Traceback" not in stderr
    assert SECRET not in stdout + stderr
    # Nothing in the manifest stands in the way of a rerun: no item ambiguous (those are not
    # sent again) and none done.
    states = dba.read_manifest(out / cli.MANIFEST_NAME)
    assert not [s for s in states.values() if s.status in ("ambiguous", "done", "submitted")]

    config = EmulatorConfig(
        keys=(SECRET,),
        time_scale=SCALE,
        workers=16,
        queue_limit=16,
        cost=CostModel(base=2, per_step=0, per_sample=0, per_megapixel=0, noise=0),
    )
    async with Emulator(config) as emu:
        with anyio.fail_after(60):
            second = await anyio.run_process(
                [*_command(prompts, out, emu.base_url), "--no-progress"], check=False, env=env
            )
        assert second.returncode == 0, second.stdout.decode() + second.stderr.decode()
        assert emu.stats.submissions_accepted == PROMPTS
        assert emu.stats.duplicate_submissions() == {}
    assert f"done {PROMPTS}, failed 0, ambiguous 0" in second.stdout.decode()
