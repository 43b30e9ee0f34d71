"""The API key leaves the process only in request bodies to the client's own origin.

A failing run (refused key, 502, dropped connection, rate limits, fetches, a refused
connection) against a server that even echoes the key back: the DEBUG log, every repr and every
exception text are searched for it.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import pytest
from replay_server import ReplayServer, Reply, fast_client_options, refused_url

import dreambooth_async as dba

pytestmark = pytest.mark.anyio

KEY = "sk-SECRET-abc123xyz"


def texts_of_error(error: BaseException) -> list[str]:
    return [
        str(error),
        repr(error),
        "".join(traceback.format_exception(error)),
        repr(vars(error)),
    ]


async def test_the_key_appears_nowhere(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, ours and aiohttp's
    caplog.set_level(logging.DEBUG, logger="dreambooth_async")
    seen: list[str] = []
    errors: list[BaseException] = []
    echo = f"Invalid Api Key {KEY}"  # a server that repeats what it was sent

    async with ReplayServer() as server, ReplayServer() as elsewhere:
        submit, fetch = "/api/v4/dreambooth", "/api/v4/dreambooth/fetch"
        queue_full = {
            "status": "error",
            "message": "Rate limit exceeded. Maximum 5 queued requests allowed.",
            "retry_after": 0.01,
        }
        server.script(
            submit,
            Reply.json({"status": "error", "message": echo, "tip": f"your key was {KEY}"}),
            Reply.raw(f"<html><title>502 {KEY}</title></html>".encode(), status=502),
            Reply.drop_after_body(),
            Reply.json(
                {
                    "status": "error",
                    "message": "Rate limit exceeded",
                    "tips": f"{KEY}: wait for 30 seconds",
                }
            ),
            Reply.json(queue_full, status=429),
            Reply.json(
                {
                    "status": "processing",
                    "id": 5,
                    "eta": 0.01,
                    "fetch_result": f"{elsewhere.url}/steal",
                    "meta": {"key": KEY},
                }
            ),
        )
        server.script(
            fetch,
            Reply.drop_before_body(),
            Reply.json({"status": "processing", "id": 5, "eta": 0.01, "messege": KEY}),
            Reply.json(
                {
                    "status": "success",
                    "id": 5,
                    "output": ["https://cdn.example/5.png"],
                    "meta": {"key": KEY},
                }
            ),
            Reply.json({"status": "error", "message": echo}, status=401),
        )
        server.script(
            "/api/v3/system_load",
            Reply.raw(b"", status=429, headers={"Retry-After": "0.01"}),
            Reply.json({"status": "ok", "queue_num": 0, "echo": KEY}),
        )

        client = dba.DreamboothClient(
            base_url=server.url, **fast_client_options(api_key=KEY, api_version="v4")
        )
        seen.append(repr(client))
        async with client:
            seen += [repr(client), str(client), repr(client._transport)]
            request = dba.Text2Img(model_id="m", prompt="a cat")
            for _ in range(3):
                with pytest.raises(dba.DreamboothError) as caught:
                    await client.submit(request)
                errors.append(caught.value)
            with pytest.raises(dba.RateLimitError) as caught_limit:
                await client.submit(request, retry=dba.RetryPolicy(max_retries=0))
            errors.append(caught_limit.value)
            job = await client.submit(request)
            seen.append(repr(job))
            result = await job
            seen += [repr(job), repr(result), repr(result.raw), repr(result.meta)]
            with pytest.raises(dba.AuthenticationError) as caught_fetch:
                await client.fetch(job)
            errors.append(caught_fetch.value)
            load = await client.system_load()
            seen += [repr(load), repr(load.raw)]
        seen.append(repr(client))

        # The key did travel where it should, and only there.
        assert server.bodies(submit)[0]["key"] == KEY
        assert elsewhere.count() == 0

    with refused_url() as url:
        async with dba.DreamboothClient(
            base_url=url, **fast_client_options(api_key=KEY)
        ) as refused:
            with pytest.raises(dba.TransportError) as caught_refused:
                await refused.fetch("5")
            errors.append(caught_refused.value)

    assert [type(e) for e in errors] == [
        dba.AuthenticationError,
        dba.ServerError,
        dba.TransportError,
        dba.RateLimitError,
        dba.AuthenticationError,
        dba.TransportError,
    ]
    for error in errors:
        seen += texts_of_error(error)
    records = caplog.records
    seen += [record.getMessage() for record in records]
    seen.append(caplog.text)

    leaks = [text for text in seen if KEY in text]
    assert leaks == []

    # The DEBUG log does show each request and response, with the key masked.
    debug = [r.getMessage() for r in records if r.name == "dreambooth_async"]
    posts = [m for m in debug if m.startswith(f"POST {server.url}/api/v4/dreambooth ")]
    assert len(posts) == 6 and all('"key": "***"' in m for m in posts)
    assert any(m.startswith(f"HTTP 502 from {server.url}/api/v4/dreambooth") for m in debug)
    assert any(m.startswith(f"POST {server.url}/api/v4/dreambooth/fetch ") for m in debug)
    assert any("retrying" in m for m in debug)


def test_reprs_of_keyed_objects_never_show_the_key() -> None:
    client = dba.DreamboothClient(api_key=KEY, base_url="https://api.example")
    texts: list[Any] = [repr(client), str(client), repr(client._transport), dir(client)]
    assert all(KEY not in str(text) for text in texts)
    with pytest.raises(dba.RequestValidationError) as caught:
        dba.Text2Img(model_id="m", prompt="p", extra={"key": KEY})
    assert KEY not in str(caught.value) and KEY not in repr(caught.value)
