"""examples/fastapi_app.py served the way a deployment runs it: uvicorn on 127.0.0.1, the webhook
receiver mounted in the same app, the emulator calling its webhooks for real, and an HTTP
client (httpx) driving ``POST /generate``. What resolved each job is read from the emulator's
own record: when each webhook was posted and when each fetch was answered."""

from __future__ import annotations

import asyncio
import importlib.util
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import anyio
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from _asgi_serving import loopback_socket, serving  # noqa: E402
from _emulator_fixtures import POLL_SCALE, poller_config  # noqa: E402

import dreambooth_async as dba  # noqa: E402
from dreambooth_async.emulator import CostModel, Emulator  # noqa: E402

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

#: Polling alone would wait a hundred times longer than the job: only a webhook is on time.
WEBHOOK_FIRST = dba.PollPolicy(webhook_slowdown=100.0).scaled(POLL_SCALE)


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "example_fastapi_app", EXAMPLES / "fastapi_app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # FastAPI resolves the handlers' annotations through the module, by its name.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def served_app(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Emulator, object, str]]:
    """The emulator, the example app (its lifespan has run) and the app's URL."""
    cost = getattr(request, "param", None)
    config = poller_config() if cost is None else poller_config(cost=cost)
    example = load_example()
    async with Emulator(config) as emu:
        with loopback_socket() as (sock, url):
            app = example.create_app(
                base_url=emu.base_url, api_key=emu.key, public_url=url, poll=WEBHOOK_FIRST
            )
            async with serving(app, sock):
                yield emu, app, url


async def test_jobs_are_resolved_by_the_emulators_webhook_calls(
    served_app: tuple[Emulator, object, str],
) -> None:
    emu, app, url = served_app
    prompts = [f"a lighthouse, take {n}" for n in range(8)]
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        with anyio.fail_after(20):
            answers = await asyncio.gather(
                *(http.post("/generate", json={"prompt": prompt}) for prompt in prompts)
            )
    assert [answer.status_code for answer in answers] == [200] * len(prompts)
    receiver: dba.WebhookReceiver = app.state.webhooks  # type: ignore[attr-defined]
    for answer in answers:
        job = emu.jobs[int(answer.json()["id"])]
        # The service was given a URL on this app's own server, at the receiver's path.
        assert job.params.webhook is not None
        assert job.params.webhook.startswith(f"{url}{receiver.path}/")
        # One fetch, answered after the webhook was posted: the delivery caused it, and it
        # was the one verifying fetch of the job.
        assert len(job.webhook_posted_at) == 1
        assert len(job.fetched_at) == 1
        assert job.fetched_at[0] >= job.webhook_posted_at[0]
        assert answer.json()["images"] == job.output_urls()
    assert receiver.stats.accepted == len(prompts)
    assert receiver.stats.rejected == receiver.stats.unknown == 0


# Jobs of about a second: long enough to send forged calls while the job is still running.
SLOW = CostModel(base=100.0, per_step=0.0, per_sample=0.0, per_megapixel=0.0, noise=0.0)


@pytest.mark.parametrize("served_app", [SLOW], indirect=True)
async def test_forged_and_oversized_calls_resolve_nothing(
    served_app: tuple[Emulator, object, str],
) -> None:
    emu, app, url = served_app
    client: dba.DreamboothClient = app.state.dreambooth  # type: ignore[attr-defined]
    receiver: dba.WebhookReceiver = app.state.webhooks  # type: ignore[attr-defined]
    job = await client.submit(dba.Text2Img(model_id="midjourney", prompt="a slow lighthouse"))
    record = emu.jobs[int(job.id)]
    assert record.params.webhook is not None
    hook = record.params.webhook
    other_id = str(int(job.id) + 1000)
    async with httpx.AsyncClient(timeout=30) as http:
        # A URL no submission was given: 404, and nothing else happens.
        forged = f"{url}{receiver.path}/{secrets.token_urlsafe(24)}"
        answer = await http.post(forged, json={"status": "success", "id": job.id})
        assert answer.status_code == 404
        # The job's real URL, but a body naming another job: refused, no fetch.
        answer = await http.post(hook, json={"status": "success", "id": other_id, "output": []})
        assert answer.status_code == 400 and answer.json() == {"status": "mismatch"}
        # Oversized, declared or streamed (chunked, no Content-Length): refused unread.
        big = b'{"status": "' + b"x" * (receiver.max_body_bytes + 10) + b'"}'
        answer = await http.post(hook, content=big)
        assert answer.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(big), 8192):
                yield big[start : start + 8192]

        answer = await http.post(hook, content=chunks())
        assert answer.status_code == 413
        assert not job.done()
        assert record.fetched_at == []  # none of it cost a fetch
        # The genuine delivery that follows still resolves the job (the URL was not used up).
        with anyio.fail_after(10):
            result = await job.wait()
    assert result.id == job.id
    assert len(record.fetched_at) == 1
    assert record.fetched_at[0] >= record.webhook_posted_at[0]
    assert receiver.stats.unknown == 1
    assert receiver.stats.rejected == 3
    assert receiver.stats.accepted == 1
