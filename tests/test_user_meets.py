"""Issue 13, library side: what a new user meets. Ctrl-C closes the session, nothing is paid
for when the images cannot be written, an unreachable service stops a batch quickly, proxies and
sessions of the user's own, exceptions that print as ``dreambooth_async.X``, and a typed user
script that passes ``mypy --strict``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import attrs
import pytest
from aiohttp import web

import dreambooth_async as dba
from dreambooth_async._batch import UNREACHABLE_AFTER
from dreambooth_async.emulator import Emulator, EmulatorConfig

pytestmark = pytest.mark.anyio

SCALE = 0.02
POLL = dba.PollPolicy().scaled(SCALE)
HERE = Path(__file__).parent


def request(n: int = 0) -> dba.Text2Img:
    return dba.Text2Img(model_id="midjourney", prompt=f"a quiet harbour {n}", seed=n)


# --- Ctrl-C -----------------------------------------------------------------------------------

_INTERRUPTED_SCRIPT = """
import asyncio, gc, os, signal, sys
import dreambooth_async as dba
from dreambooth_async._batch import UNREACHABLE_AFTER
from dreambooth_async.emulator import Emulator, EmulatorConfig

async def main():
    async with Emulator(EmulatorConfig(time_scale=0.05)) as emu:
        async with dba.DreamboothClient(emu.key, base_url=emu.base_url) as client:
            pressed = []
            def interrupt(event):
                if event.kind == "queued" and not pressed:
                    pressed.append(True)
                    os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C does, once
            requests = [dba.Text2Img(model_id="midjourney", prompt=f"p{n}") for n in range(6)]
            async with client.map(requests, on_event=interrupt) as run:
                async for _ in run:
                    pass

try:
    asyncio.run(main())
except KeyboardInterrupt:
    print("interrupted", flush=True)
gc.collect()
"""


async def test_ctrl_c_leaves_no_unclosed_session(tmp_path: Path) -> None:
    script = tmp_path / "interrupted.py"
    script.write_text(_INTERRUPTED_SCRIPT)
    with anyio.fail_after(60):
        done = await anyio.run_process([sys.executable, str(script)], check=False)
    out, err = done.stdout.decode(), done.stderr.decode()
    assert "interrupted" in out, err
    assert "Unclosed" not in err, err


# --- outputs that cannot be written -----------------------------------------------------------


async def test_nothing_is_submitted_when_download_to_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    async with (
        Emulator(EmulatorConfig(time_scale=SCALE)) as emu,
        dba.DreamboothClient(emu.key, base_url=emu.base_url, poll=POLL) as client,
    ):
        with pytest.raises(dba.OutputError) as caught:
            await client.gather([request(n) for n in range(3)], download_to=blocker / "out")
        assert caught.value.path == str(blocker / "out")
        assert emu.stats.submissions_received == 0


async def test_save_creates_missing_parents_and_reports_unwritable_folders(
    tmp_path: Path,
) -> None:
    async with (
        Emulator(EmulatorConfig(time_scale=SCALE)) as emu,
        dba.DreamboothClient(emu.key, base_url=emu.base_url, poll=POLL) as client,
    ):
        with anyio.fail_after(30):
            result = await client.generate(request())
        [path] = await result.save(tmp_path / "new" / "deeper")
        assert path.is_file()
        blocker = tmp_path / "file"
        blocker.write_text("x")
        with pytest.raises(dba.OutputError):
            await result.save(blocker / "sub")


# --- an unreachable service -------------------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens once the socket is closed


async def test_an_unreachable_service_stops_the_batch(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.jsonl"
    client = dba.DreamboothClient(
        "sk-unreachable",
        base_url=f"http://127.0.0.1:{_closed_port()}",
        retry=dba.RetryPolicy(max_retries=1, backoff_base=0.001, backoff_cap=0.002),
    )
    async with client:
        run = client.map([request(n) for n in range(60)], manifest=manifest)
        with anyio.fail_after(60), pytest.raises(dba.TransportError, match="cannot connect"):
            async with run:
                async for _ in run:
                    pass
        # It stopped after a few attempts instead of failing sixty items one by one.
        assert run.stats["submissions"] <= UNREACHABLE_AFTER + run.stats["concurrency"]
    states = dba.read_manifest(manifest)
    assert states and all(state.job_id is None for state in states.values())
    # None landed: each stays pending for the rerun, whatever retry_failed says.
    assert all(state.status in ("pending", "not_landed") for state in states.values())


# --- conventions: proxies, sessions, headers, names -------------------------------------------


@attrs.frozen
class Seen:
    host: str
    headers: dict[str, str]
    body: bytes


@asynccontextmanager
async def recording_server() -> AsyncIterator[tuple[str, list[Seen]]]:
    """A loopback server answering every POST with a success body; it records the requests
    (as a forward proxy would see them: the absolute URL in the request line)."""
    seen: list[Seen] = []

    async def answer(http: web.Request) -> web.Response:
        seen.append(Seen(http.host, dict(http.headers), await http.read()))
        return web.json_response({"status": "success", "id": 1, "output": [], "meta": {}})

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_proxies_from_the_environment_are_used_unless_told_not_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with recording_server() as (proxy, seen):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        # A name only the proxy resolves: without it there is no way through.
        with pytest.warns(UserWarning, match="plain http"):
            client = dba.DreamboothClient("sk-proxied", base_url="http://api.modelslab.invalid")
        async with client:
            await client.generate(request())
        assert len(seen) == 1 and seen[0].host == "api.modelslab.invalid"
        with pytest.warns(UserWarning, match="plain http"):
            direct = dba.DreamboothClient(
                "sk-proxied",
                base_url="http://api.modelslab.invalid",
                trust_env=False,
                retry=dba.RetryPolicy(max_retries=0),
            )
        async with direct:
            with pytest.raises(dba.TransportError):
                await direct.generate(request())
        assert len(seen) == 1


async def test_a_session_of_your_own_and_default_headers() -> None:
    async with recording_server() as (url, seen), aiohttp.ClientSession() as session:
        client = dba.DreamboothClient(
            "sk-own", base_url=url, http_session=session, headers={"X-Team": "render-farm"}
        )
        async with client:
            await client.generate(request())
        assert not session.closed  # the caller's session stays the caller's
        assert seen[0].headers["X-Team"] == "render-farm"
        body = json.loads(seen[0].body)
        assert body["key"] == "sk-own"


def test_exceptions_print_as_the_package() -> None:
    assert repr(dba.InsufficientCredits) == "<class 'dreambooth_async.InsufficientCredits'>"
    for name in dba.__all__:
        value = getattr(dba, name)
        if isinstance(value, type):
            assert value.__module__ == "dreambooth_async", name
    # Annotations still resolve (cattrs relies on them) after the rename.
    assert dba.Text2Img(model_id="m", prompt="p", scheduler="LCMScheduler").scheduler is (
        dba.Scheduler.LCMScheduler
    )


def test_shortcut_fields_match_the_request_classes() -> None:
    from dreambooth_async._models import Img2ImgFields, InpaintFields, Text2ImgFields

    for fields, cls in (
        (Text2ImgFields, dba.Text2Img),
        (Img2ImgFields, dba.Img2Img),
        (InpaintFields, dba.Inpaint),
    ):
        assert set(fields.__annotations__) | {
            name for base in fields.__mro__[1:] for name in getattr(base, "__annotations__", {})
        } == {field.name for field in attrs.fields(cls)}


# --- typed user code --------------------------------------------------------------------------


def test_a_typed_user_script_passes_mypy_strict(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    script = HERE / "typed_user_script.py"
    cache = tmp_path / "mypy-cache"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(cache),
            "--no-error-summary",
            str(script),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "MYPYPATH": ""},
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_the_typed_user_script_runs_against_the_emulator() -> None:
    namespace: dict[str, object] = {}
    exec(
        compile((HERE / "typed_user_script.py").read_text(), "typed_user_script", "exec"), namespace
    )
    async with Emulator(EmulatorConfig(time_scale=SCALE)) as emu:
        with anyio.fail_after(60):
            await namespace["main"](emu.base_url, emu.key)  # type: ignore[operator]
