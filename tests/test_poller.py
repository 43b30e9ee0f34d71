"""The shared poller: deadlines, waiters, failures, attach, webhooks, clean shutdown.

Everything runs against the emulator on 127.0.0.1 with a time scale, so a 10-second job takes
0.1 s; nothing sleeps to wait for something to happen.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import anyio
import pytest
from _emulator_fixtures import POLL_SCALE, poller_config

import dreambooth_async as dba
from dreambooth_async.emulator import DEFAULT_KEY, Emulator, FaultConfig

pytestmark = pytest.mark.anyio


def request(i: int = 0, **fields: object) -> dba.Text2Img:
    return dba.Text2Img(model_id="midjourney", prompt=f"a lighthouse {i}", seed=i, **fields)  # type: ignore[arg-type]


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(poller_config()) as emu:
        yield emu


def client_for(emu: Emulator, **options: object) -> dba.DreamboothClient:
    return dba.DreamboothClient(
        DEFAULT_KEY,
        base_url=emu.base_url,
        poll=dba.PollPolicy().scaled(POLL_SCALE),
        **options,  # type: ignore[arg-type]
    )


async def test_processing_job_is_polled_to_its_result(emulator: Emulator) -> None:
    async with client_for(emulator) as client:
        job = await client.submit(request())
        assert job.status == "processing" and job.eta is not None and job.eta > 0
        result = await job
        assert result.id == job.id and result.output
        assert job.status == "success" and job.fetches >= 1
        assert emulator.finished_at(int(job.id)) is not None


async def test_deadline_raises_job_timeout_with_the_id_and_attach_later(
    emulator: Emulator,
) -> None:
    async with client_for(emulator) as client:
        job = await client.submit(request(), timeout=0.01)  # the job needs ~0.1 s
        with pytest.raises(dba.JobTimeout) as caught:
            await job
        assert caught.value.job_id == job.id
        assert client.poller.pending == 0  # the deadline ended the polling
        # The job went on on the server: attaching by id gets its result.
        result = await client.wait_for(job.id)
        assert result.id == job.id and result.output


async def test_waiter_timeout_leaves_the_job_running(emulator: Emulator) -> None:
    async with client_for(emulator) as client:
        job = await client.submit(request())
        with pytest.raises(dba.JobTimeout):
            await job.wait(timeout=0.001)
        assert not job.done()
        assert (await job.wait()).id == job.id


async def test_cancelling_one_waiter_leaves_the_others(emulator: Emulator) -> None:
    async with client_for(emulator) as client:
        job = await client.submit(request())
        first = asyncio.create_task(job.wait())
        second = asyncio.create_task(job.wait())
        third = client.attach(job.id)  # another handle on the same pending job
        await asyncio.sleep(0)  # let both waiters start waiting
        first.cancel()
        result = await second
        assert first.cancelled()
        assert (await third).id == result.id == job.id
        assert client.poller.pending == 0


async def test_a_failure_in_the_middle_of_the_queue_fails_only_that_job() -> None:
    cfg = poller_config(faults=FaultConfig(seed=3, rate_failed=0.3))
    async with Emulator(cfg) as emu, client_for(emu) as client:
        jobs = [await client.submit(request(i)) for i in range(12)]
        outcomes = await asyncio.gather(*(job.wait() for job in jobs), return_exceptions=True)
        failed = {
            job.id
            for job, out in zip(jobs, outcomes, strict=True)
            if isinstance(out, BaseException)
        }
        on_server = {str(i) for i, j in emu.jobs.items() if j.status == "failed"}
        assert failed == on_server
        assert 0 < len(failed) < len(jobs)  # the seed gives a mix
        for job, outcome in zip(jobs, outcomes, strict=True):
            if job.id in failed:
                assert isinstance(outcome, dba.GenerationFailed)
            else:
                assert isinstance(outcome, dba.GenerationResult) and outcome.output


async def test_leaving_the_client_with_jobs_pending_cancels_cleanly(emulator: Emulator) -> None:
    # Warnings are errors in this suite: a destroyed pending task or an unclosed session fails it.
    async with client_for(emulator) as client:
        jobs = [await client.submit(request(i)) for i in range(5)]
        waiter = asyncio.create_task(jobs[0].wait())
        await asyncio.sleep(0)
    with pytest.raises(dba.ClientClosedError):
        await waiter
    assert all(job.status == "failed" for job in jobs)
    with pytest.raises(dba.ClientClosedError):
        await client.submit(request())


async def test_attach_to_a_job_from_another_client(emulator: Emulator) -> None:
    async with client_for(emulator) as first:
        job = await first.submit(request())
        job_id = job.id
    async with client_for(emulator) as second:
        result = await second.wait_for(job_id)
        assert result.id == job_id


# --- webhooks ---------------------------------------------------------------------------------


async def _post(url: str, body: object, **kw: object) -> int:
    async with aiohttp.ClientSession() as session, session.post(url, json=body, **kw) as resp:  # type: ignore[arg-type]
        return resp.status


async def test_webhook_resolves_the_job_before_the_poller_would(emulator: Emulator) -> None:
    receiver = dba.WebhookReceiver()
    # Polling alone would wait a hundred times the job's ETA: only the webhook can be on time.
    policy = dba.PollPolicy(webhook_slowdown=100.0).scaled(POLL_SCALE)
    async with dba.DreamboothClient(
        DEFAULT_KEY, base_url=emulator.base_url, poll=policy, webhooks=receiver
    ) as client:
        job = await client.submit(request())
        result = await job.wait(timeout=5.0)
        assert result.id == job.id
        assert receiver.stats.accepted == 1
        assert job.fetches == 1  # one verifying fetch, triggered by the delivery
        sent = emulator.jobs[int(job.id)]
        assert sent.track_id  # the submission carried a track id


async def test_duplicate_and_forged_webhooks_change_nothing() -> None:
    cfg = poller_config(webhook_duplicate_rate=1.0)
    async with Emulator(cfg) as emu:
        receiver = dba.WebhookReceiver()
        async with dba.DreamboothClient(
            DEFAULT_KEY,
            base_url=emu.base_url,
            poll=dba.PollPolicy().scaled(POLL_SCALE),
            webhooks=receiver,
        ) as client:
            assert receiver.public_url is not None
            base = receiver.public_url + receiver.path
            # Unknown tokens are refused without touching any job.
            assert await _post(f"{base}/not-a-token", {"status": "success", "id": 1}) == 404
            job = await client.submit(request())
            token = emu.jobs[int(job.id)].params.webhook.rsplit("/", 1)[-1]  # type: ignore[union-attr]
            # A forged "success" with made-up output only makes the poller ask the service.
            forged = {"status": "success", "id": job.id, "output": ["http://evil.invalid/x.png"]}
            assert await _post(f"{base}/{token}", forged) == 200
            result = await job.wait(timeout=5.0)
            assert "http://evil.invalid/x.png" not in result.output
            assert result.output[0].startswith(emu.base_url)
            # Malformed and oversized bodies are refused.
            other = await client.submit(request(1))
            other_token = emu.jobs[int(other.id)].params.webhook.rsplit("/", 1)[-1]  # type: ignore[union-attr]
            async with aiohttp.ClientSession() as session:
                async with session.post(f"{base}/{other_token}", data=b"{not json") as resp:
                    assert resp.status == 400
                big = b'{"status": "' + b"x" * (receiver.max_body_bytes + 10) + b'"}'
                async with session.post(f"{base}/{other_token}", data=big) as resp:
                    assert resp.status == 413
            await other.wait(timeout=5.0)
            # The emulator delivers every webhook twice; the extra ones are ignored. The forged
            # delivery's fetch found its job running (unverified), so it did not use the URL up.
            with anyio.fail_after(5):
                await receiver.wait_until(lambda stats: stats.duplicates >= 2)
            stats = receiver.stats
            assert stats.accepted - stats.unverified == 2 and job.done() and other.done()


async def test_a_delivery_that_does_not_verify_does_not_use_up_the_url() -> None:
    # Jobs of about a second, so that the calls below reach the job's URL while it runs.
    slow = dba.emulator.CostModel(base=100.0, per_step=0, per_sample=0, per_megapixel=0, noise=0)
    async with Emulator(poller_config(cost=slow)) as emu:
        receiver = dba.WebhookReceiver()
        # Polling alone would take a hundred times the job: only a believed delivery is on time.
        policy = dba.PollPolicy(webhook_slowdown=100.0).scaled(POLL_SCALE)
        async with dba.DreamboothClient(
            DEFAULT_KEY, base_url=emu.base_url, poll=policy, webhooks=receiver
        ) as client:
            job = await client.submit(request())
            record = emu.jobs[int(job.id)]
            assert record.params.webhook is not None
            # A body naming another job: refused (no fetch), and the URL stays open.
            wrong = {"status": "success", "id": str(int(job.id) + 1), "output": []}
            assert await _post(record.params.webhook, wrong) == 400
            assert record.fetched_at == []
            # The right id, while the job runs: believed as a hint, its fetch finds the job
            # running, and the URL stays open again.
            early = {"status": "success", "id": job.id, "output": []}
            assert await _post(record.params.webhook, early) == 200
            with anyio.fail_after(5):
                await receiver.wait_until(lambda stats: stats.unverified == 1)
            # The genuine delivery that follows resolves the job, by its fetch.
            with anyio.fail_after(10):
                result = await job.wait()
            assert result.id == job.id
            assert len(record.fetched_at) == 2 and job.fetches == 2
            assert record.fetched_at[1] >= record.webhook_posted_at[0]
            stats = receiver.stats
            assert (stats.rejected, stats.accepted, stats.unverified) == (1, 2, 1)


async def test_receiver_down_polling_still_completes(emulator: Emulator) -> None:
    receiver = dba.WebhookReceiver()
    policy = dba.PollPolicy(webhook_slowdown=2.0).scaled(POLL_SCALE)
    async with dba.DreamboothClient(
        DEFAULT_KEY, base_url=emulator.base_url, poll=policy, webhooks=receiver
    ) as client:
        job = await client.submit(request())
        await receiver.stop()  # every delivery now fails to connect
        result = await job.wait(timeout=5.0)
        assert result.id == job.id
        assert receiver.stats.accepted == 0
