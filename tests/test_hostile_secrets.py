"""The API key never shows up, at the level of a whole batch and of the command line.

test_secrets.py covers the client: a server that echoes the key in error texts, a DEBUG log,
reprs and tracebacks. This goes further:

- the echo may be JSON-escaped (``"\\u0073k-..."``): the bytes differ from the key's, the
  decoded text does not;
- a batch through a proxy that puts the key into every answer (``tip``, ``meta``, error texts,
  plainly or escaped) in front of an emulator that injects faults and fails generations, with a
  manifest, downloads, events and reprs of everything, under a DEBUG log;
- the ``generate`` command doing the same in a subprocess with ``-vv`` and its progress lines:
  every file in the output folder, and everything it printed, is searched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import traceback
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anyio
import pytest
from aiohttp import web
from replay_server import ReplayServer, Reply, fast_client_options

import dreambooth_async as dba
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig, FaultConfig

pytestmark = pytest.mark.anyio

KEY = "sk-Hostile-Secret-7c1d2e3f"
SCALE = 0.01


def escaped(text: str, *, upper: bool = False) -> str:
    """``text`` as a JSON encoder that escapes every character would write it."""
    return "".join((f"\\u{ord(c):04X}" if upper else f"\\u{ord(c):04x}") for c in text)


SPELLINGS = [KEY, escaped(KEY), escaped(KEY, upper=True), json.dumps(KEY)[1:-1]]


def leaks(text: str | bytes) -> list[str]:
    """Which spellings of the key ``text`` contains (decoded or not)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return [spelling for spelling in SPELLINGS if spelling in text]


async def test_an_escaped_echo_of_the_key_is_masked_too() -> None:
    # \u0073 is "s": the bytes on the wire are not the key's, the decoded message is the key.
    plain = escaped(KEY)
    success = f'{{"status": "success", "id": 1, "output": [], "meta": {{"k": "{plain}"}}}}'
    mixed = "sk-" + escaped(KEY[3:7]) + KEY[7:]  # part escaped, part not
    async with ReplayServer() as server:
        server.script(
            "/api/v3/dreambooth",
            Reply.raw(
                f'{{"status": "error", "message": "Invalid Api Key {plain}"}}'.encode(),
                content_type="application/json",
            ),
            Reply.raw(
                f'{{"status": "error", "message": "Rate limit", "tips": "{mixed}: wait"}}'.encode(),
                content_type="application/json",
            ),
            Reply.raw(success.encode(), content_type="application/json"),
        )
        options = fast_client_options(api_key=KEY)
        options["retry"] = dba.RetryPolicy(max_retries=0)
        async with dba.DreamboothClient(base_url=server.url, **options) as client:
            request = dba.Text2Img(model_id="m", prompt="p")
            texts: list[str] = []
            for expected in (dba.AuthenticationError, dba.RateLimitError):
                with pytest.raises(expected) as caught:
                    await client.submit(request)
                error = caught.value
                texts += [str(error), repr(error), repr(vars(error))]
                texts += traceback.format_exception(error)
            job = await client.submit(request)
            result = job.result()
            texts += [repr(result), repr(result.meta), repr(result.raw)]
    assert [t for t in texts if leaks(t)] == []


# --- a proxy that echoes the key in every answer ----------------------------------------------


@contextlib.asynccontextmanager
async def echoing_proxy(upstream: str) -> AsyncIterator[str]:
    """Forwards every request to ``upstream``; puts the key into each JSON answer, in a
    different spelling each time, and into HTML error pages."""
    count = 0

    async def forward(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        body = await request.read()
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                upstream + request.path_qs,
                data=body,
                headers={"Content-Type": request.content_type},
            ) as answer,
        ):
            data = await answer.read()
            status = answer.status
            content_type = answer.content_type
        spelling = SPELLINGS[count % 3]  # the raw key, or escaped in lower or upper case
        if content_type == "application/json":
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                marker = "\x00KEY\x00"
                parsed["tip"] = f"your key is {marker}"
                meta = parsed.get("meta")
                parsed["meta"] = {**(meta if isinstance(meta, dict) else {}), "key": marker}
                if parsed.get("status") in ("error", "failed"):
                    parsed["message"] = f"{parsed.get('message')} (for key {marker})"
                text = json.dumps(parsed).replace(json.dumps(marker)[1:-1], spelling)
                data = text.encode()
        elif content_type == "text/html":
            data = data.replace(b"</title>", f" {KEY}</title>".encode())
        return web.Response(body=data, status=status, content_type=content_type)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def faulty_emulator() -> Emulator:
    return Emulator(
        EmulatorConfig(
            keys=(KEY,),
            time_scale=SCALE,
            queue_limit=4,
            workers=4,
            cost=CostModel(base=8, per_step=0, per_sample=0, per_megapixel=0, noise=0.2),
            faults=FaultConfig(
                seed=5,
                rate_5xx=0.15,
                rate_drop_after=0.05,
                rate_429=0.05,
                retry_after_429=1.0,
                rate_failed=0.2,
                rate_output_404=0.2,
                output_404_for=20,
            ),
        )
    )


def search_folder(folder: Path) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and leaks(path.read_bytes()):
            found.append(str(path))
    return found


async def test_a_batch_with_everything_going_wrong_never_shows_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    out = tmp_path / "out"
    manifest = tmp_path / "manifest.jsonl"
    requests = [
        dba.Text2Img(
            model_id="no-such-model" if i % 7 == 3 else "midjourney",
            prompt=f"secret test {i}",
            seed=i,
            width=64,
            height=64,
        )
        for i in range(24)
    ]
    events: list[dba.BatchEvent] = []
    async with faulty_emulator() as emu, echoing_proxy(emu.base_url) as proxy:
        for _ in range(2):  # a run, then a rerun from the manifest
            client = dba.DreamboothClient(
                KEY,
                base_url=proxy,
                poll=dba.PollPolicy().scaled(SCALE),
                retry=dba.RetryPolicy(backoff_base=0.01, backoff_cap=0.05),
            )
            texts += [repr(client), str(client)]
            async with client:
                run = client.map(
                    requests,
                    manifest=manifest,
                    download_to=out,
                    on_event=events.append,
                )
                texts.append(repr(run))
                async with run:
                    async for item in run:
                        texts += [repr(item), str(item)]
                        if item.error is not None:
                            texts += traceback.format_exception(item.error)
                            texts.append(repr(vars(item.error)))
                        if item.result is not None:
                            texts += [repr(item.result.raw), repr(item.result.meta)]
                texts += [repr(run), repr(run.stats)]
        assert emu.stats.rejected_invalid > 0 and sum(emu.stats.faults.values()) > 0
    states = dba.read_manifest(manifest)
    assert {s.status for s in states.values()} >= {"done", "failed"}
    texts += [repr(e) for e in events] + [repr(s) for s in states.values()]
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    # The DEBUG log did see the answers (so the masking was put to work).
    assert any("***" in r.getMessage() for r in caplog.records)
    assert [t for t in texts if leaks(t)] == []
    assert search_folder(tmp_path) == []


async def test_the_command_line_with_debug_logging_never_shows_the_key(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"cli secret {i}", "seed": i} for i in range(16)]
    rows[5]["model_id"] = "no-such-model"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    async with faulty_emulator() as emu, echoing_proxy(emu.base_url) as proxy:
        argv = [
            sys.executable,
            "-m",
            "dreambooth_async.cli",
            "-vv",
            "generate",
            str(prompts),
            "--model-id",
            "midjourney",
            "--width",
            "64",
            "--height",
            "64",
            "--out",
            str(out),
            "--base-url",
            proxy,
            "--api-key",
            KEY,
            "--poll-scale",
            str(SCALE),
        ]
        printed: list[bytes] = []
        for _ in range(2):  # a run, then a rerun that retries the failed items
            with anyio.fail_after(120):
                done = await anyio.run_process(argv, check=False)
            assert done.returncode in (0, 1), done.stderr.decode()[-3000:]
            printed += [done.stdout, done.stderr]
    err = printed[1].decode()
    assert "DEBUG" in err and "***" in err  # the log was on, and masked what it showed
    assert "failed" in printed[0].decode()  # a summary with failures was printed
    assert [leaks(p) for p in printed] == [[]] * len(printed)
    assert search_folder(out) == []
