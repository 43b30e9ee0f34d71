"""The receiver's two adapters answer alike: the same calls to its own aiohttp server and to its
ASGI application (served alone by uvicorn, with no framework) get the same status and body, and
a delivery through either resolves the job by a fetch."""

from __future__ import annotations

import secrets
from typing import Any

import aiohttp
import anyio
import pytest
from _emulator_fixtures import POLL_SCALE, poller_config

pytest.importorskip("uvicorn")

from _asgi_serving import loopback_socket, serving

import dreambooth_async as dba
from dreambooth_async.emulator import CostModel, Emulator

pytestmark = pytest.mark.anyio

# Jobs of about a second: the calls below reach their URLs while the jobs still run.
SLOW = CostModel(base=100.0, per_step=0.0, per_sample=0.0, per_megapixel=0.0, noise=0.0)


async def call(
    http: aiohttp.ClientSession, url: str, *, method: str = "POST", **kw: Any
) -> tuple[int, Any]:
    async with http.request(method, url, **kw) as response:
        body = await response.read()
        try:
            return response.status, await response.json(content_type=None)
        except ValueError:
            return response.status, body.decode()


async def test_the_aiohttp_and_asgi_adapters_answer_alike() -> None:
    async with Emulator(poller_config(cost=SLOW)) as emu:
        receiver = dba.WebhookReceiver()  # serves itself with aiohttp
        policy = dba.PollPolicy(webhook_slowdown=100.0).scaled(POLL_SCALE)
        async with dba.DreamboothClient(
            emu.key, base_url=emu.base_url, poll=policy, webhooks=receiver
        ) as client:
            with loopback_socket() as (sock, asgi_url):
                async with serving(receiver.asgi(), sock), aiohttp.ClientSession() as http:
                    first = await client.submit(dba.Text2Img(model_id="midjourney", prompt="a"))
                    second = await client.submit(dba.Text2Img(model_id="midjourney", prompt="b"))
                    tokens = {
                        job.id: str(emu.jobs[int(job.id)].params.webhook).rsplit("/", 1)[1]
                        for job in (first, second)
                    }
                    own = f"{receiver.public_url}{receiver.path}"
                    mounted = f"{asgi_url}{receiver.path}"
                    token = tokens[first.id]
                    big = b'{"status": "' + b"x" * receiver.max_body_bytes + b'"}'
                    cases: list[tuple[str, dict[str, Any]]] = [
                        (f"/{secrets.token_urlsafe(24)}", {"json": {"status": "success"}}),
                        (f"/{token}", {"data": b"{not json"}),
                        (f"/{token}", {"json": ["status"]}),
                        (f"/{token}", {"json": {"id": first.id}}),
                        (f"/{token}", {"data": big}),
                        (f"/{token}", {"json": {"status": "success", "id": "another"}}),
                    ]
                    for suffix, options in cases:
                        expected = await call(http, own + suffix, **options)
                        assert await call(http, mounted + suffix, **options) == expected
                        assert expected[0] in (400, 404, 413)
                    # Other methods: 405 from both (aiohttp's own text body, JSON from ASGI).
                    assert (await call(http, own + f"/{token}", method="GET"))[0] == 405
                    assert (await call(http, mounted + f"/{token}", method="GET"))[0] == 405
                    assert not first.done() and emu.jobs[int(first.id)].fetched_at == []
                    # A delivery through each adapter: believed, so the job is fetched now.
                    for base, job in ((own, first), (mounted, second)):
                        body = {"status": "success", "id": job.id}
                        assert await call(http, f"{base}/{tokens[job.id]}", json=body) == (
                            200,
                            {"status": "ok"},
                        )
                    with anyio.fail_after(10):
                        results = [await first, await second]
                    assert [result.id for result in results] == [first.id, second.id]
    # Each job was fetched when its (early) delivery came, found running, and fetched again
    # after the service's own delivery.
    for job in (first, second):
        record = emu.jobs[int(job.id)]
        assert record.fetched_at[-1] >= record.webhook_posted_at[0]
    assert receiver.stats.unknown == 2  # one call through each adapter
    assert receiver.stats.rejected == 5 * 2
    assert receiver.stats.unverified == 2
