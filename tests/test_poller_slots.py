"""Slot turnover: a batch turned away by a full queue goes again when one of its own jobs ends.

The service's docs answer a full queue with ``retry_after: 30`` whatever the jobs' length; a
batch of one-second jobs that waited that long would leave the account idle for most of the
time. The client sees its own jobs end, and each one that ends frees a slot.
"""

from __future__ import annotations

import anyio
import pytest
from replay_server import ReplayServer, Reply, fast_client_options

import dreambooth_async as dba

pytestmark = pytest.mark.anyio

SUBMIT = "/api/v3/dreambooth"
QUEUE_FULL = Reply.json(
    {
        "status": "error",
        "message": "Rate limit exceeded. Maximum 1 queued requests allowed.",
        "retry_after": 30,
    },
    status=429,
)


def processing(job_id: int) -> Reply:
    return Reply.json({"status": "processing", "id": job_id, "eta": 0.05})


def done(job_id: int) -> Reply:
    return Reply.json({"status": "success", "id": job_id, "output": []})


@pytest.mark.parametrize("concurrency", [2, None])
async def test_a_full_queue_is_tried_again_when_one_of_the_batchs_jobs_ends(
    concurrency: int | None,
) -> None:
    async with ReplayServer() as server:
        server.script(SUBMIT, processing(1), QUEUE_FULL, processing(2))
        server.always(f"{SUBMIT}/fetch/1", done(1))
        server.always(f"{SUBMIT}/fetch/2", done(2))
        options = fast_client_options(
            api_version="v3",
            poll=dba.PollPolicy(explore_every=0),
            # The default cap on retry_after (120 s): the 30 s asked for would be honoured.
            retry=dba.RetryPolicy(max_retries=1),
        )
        async with dba.DreamboothClient(base_url=server.url, **options) as client:
            prompts = [dba.Text2Img(model_id="m", prompt=f"p{i}") for i in range(2)]
            # Far less than the 30 s the service asked for: job 1 ending is the signal.
            with anyio.fail_after(10):
                async with client.map(prompts, concurrency, initial_concurrency=2) as run:
                    items = [item async for item in run]
        assert sorted(item.job_id for item in items if item.ok) == ["1", "2"]
        assert server.count(SUBMIT) == 3  # one refusal, then accepted: no storm either
        assert run.stats["rejected_queue_full"] == 1
