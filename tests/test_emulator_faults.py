"""Injected faults: each kind at its configured rate for a fixed seed, and repeatable.

Stated tolerance: over 400 requests, each kind's observed share is within 0.06 of its rate (more
than three binomial standard deviations at these rates; with a fixed seed the counts are fixed,
so the tolerance only says how far a seed may land from the rate).
"""

from __future__ import annotations

import time
from collections import Counter

import aiohttp
import pytest
from _emulator_fixtures import KEY, get, post, text2img

from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig, FaultConfig

pytestmark = pytest.mark.anyio

N = 400
TOLERANCE = 0.06
FAST = 0.01

REQUEST_FAULTS = FaultConfig(
    seed=11,
    rate_5xx=0.15,
    rate_drop_before=0.15,
    rate_429=0.15,
    rate_drop_after=0.15,
    rate_slow=0.15,
    slow_delay=1.0,
)


async def submit_many(config: EmulatorConfig, n: int) -> tuple[list[str], Emulator]:
    """Send n distinct text2img submissions one after another; the outcome of each as the
    client saw it: ok, 5xx, 429, dropped, or slow (an ok answer that took slow_delay or more)."""
    outcomes: list[str] = []
    slow = config.scaled(config.faults.slow_delay)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        url = f"{emu.base_url}/api/v3/dreambooth"
        for i in range(n):
            started = time.monotonic()
            try:
                async with http.post(url, json=text2img(f"prompt {i}")) as resp:
                    raw = await resp.read()
                    if resp.status in (502, 503):
                        assert resp.content_type == "text/html"
                        assert b"<html>" in raw
                        outcomes.append("5xx")
                    elif resp.status == 429:
                        assert float(resp.headers["Retry-After"]) > 0
                        body = await resp.json()
                        assert body["status"] == "error" and body["retry_after"] > 0
                        outcomes.append("429")
                    else:
                        assert resp.status == 200
                        assert (await resp.json())["status"] == "processing"
                        took = time.monotonic() - started
                        outcomes.append("slow" if took >= slow else "ok")
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                outcomes.append("dropped")
    return outcomes, emu


def request_config(faults: FaultConfig = REQUEST_FAULTS) -> EmulatorConfig:
    # No synchronous window: every accepted job answers "processing" at once.
    return EmulatorConfig(time_scale=FAST, sync_window=0, queue_limit=10**6, faults=faults)


async def test_request_faults_at_their_rates_and_only_unprocessed_ones_are_lost() -> None:
    outcomes, emu = await submit_many(request_config(), N)
    faults = emu.stats.faults
    for kind, rate in (
        ("5xx", REQUEST_FAULTS.rate_5xx),
        ("drop_before", REQUEST_FAULTS.rate_drop_before),
        ("429", REQUEST_FAULTS.rate_429),
        ("drop_after", REQUEST_FAULTS.rate_drop_after),
        ("slow", REQUEST_FAULTS.rate_slow),
    ):
        assert abs(faults[kind] / N - rate) <= TOLERANCE, (kind, faults[kind])

    seen = Counter(outcomes)
    assert emu.stats.submissions_received == N  # the client library retried nothing
    assert seen["5xx"] == faults["5xx"]
    assert seen["429"] == faults["429"]
    assert seen["dropped"] == faults["drop_before"] + faults["drop_after"]
    # Slow answers took at least the delay; a loaded machine may make an ok one slow too.
    assert seen["slow"] >= faults["slow"]
    # 5xx, drop-before and 429 are not processed; a drop after the body was read is: that job
    # was accepted and runs although its client never heard of it.
    unprocessed = faults["5xx"] + faults["drop_before"] + faults["429"]
    assert emu.stats.submissions_accepted == N - unprocessed
    assert len(emu.jobs) == N - unprocessed


async def test_the_same_seed_gives_the_same_fault_sequence() -> None:
    first, _ = await submit_many(request_config(), 120)
    again, _ = await submit_many(request_config(), 120)
    other, _ = await submit_many(
        request_config(FaultConfig(seed=12, rate_5xx=0.15, rate_429=0.15, rate_drop_after=0.15)),
        120,
    )

    # "slow" is timed by the client, so compare with it folded into "ok".
    def served(outcomes: list[str]) -> list[str]:
        return ["ok" if o == "slow" else o for o in outcomes]

    assert served(first) == served(again)
    assert served(first) != served(other)


async def test_request_faults_hit_only_submissions_and_fetches() -> None:
    config = EmulatorConfig(faults=FaultConfig(rate_5xx=1.0))
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        base = emu.base_url
        for path, body in (
            ("/api/v3/dreambooth", text2img()),
            ("/api/v4/dreambooth/fetch", {"key": KEY, "request_id": 1}),
            ("/api/v6/images/fetch/1", {"key": KEY}),
        ):
            async with http.post(base + path, json=body) as resp:
                assert resp.status in (502, 503)
        for path in ("/api/v3/system_load", "/api/v4/dreambooth/model_list"):
            status, _, _ = await post(http, base + path, {"key": KEY})
            assert status == 200
        assert (await get(http, f"{base}/samples/init.png"))[0] == 200
        assert (await get(http, f"{base}/_emulator/stats"))[0] == 200
        assert emu.stats.faults["5xx"] == 3


async def test_job_faults_at_their_rates() -> None:
    faults = FaultConfig(seed=5, rate_failed=0.2, rate_stuck=0.2, rate_output_404=0.2)
    config = EmulatorConfig(sync_window=0, queue_limit=10**6, faults=faults)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        url = f"{emu.base_url}/api/v3/dreambooth"
        for i in range(N):
            await post(http, url, text2img(f"job {i}"))
        assert len(emu.jobs) == N
        per_job = Counter(kind for job in emu.jobs.values() for kind in job.faults.kinds())
    assert per_job == emu.stats.faults
    assert abs(per_job["failed"] / N - 0.2) <= TOLERANCE
    assert abs(per_job["stuck"] / N - 0.2) <= TOLERANCE
    # A failed job has no files to hide, so output_404 is drawn at 0.2 among the others.
    assert abs(per_job["output_404"] / N - 0.2 * (1 - per_job["failed"] / N)) <= TOLERANCE


async def test_a_failed_job_says_failed_on_fetch_and_at_once() -> None:
    faults = FaultConfig(rate_failed=1.0)
    config = EmulatorConfig(time_scale=FAST, sync_window=0, faults=faults, spam_filter=False)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        _, answer, _ = await post(http, f"{emu.base_url}/api/v3/dreambooth", text2img())
        assert answer["status"] == "processing"
        await emu.wait_finished(answer["id"])
        _, fetched, _ = await post(http, answer["fetch_result"], {"key": KEY})
        assert fetched == {
            "status": "failed",
            "id": answer["id"],
            "message": "Failed, Try Again",
            "output": "",
        }
        assert (await get(http, answer["future_links"][0]))[0] == 404
    config = EmulatorConfig(time_scale=0.001, sync_window=10_000, faults=faults)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        _, answer, _ = await post(http, f"{emu.base_url}/api/v3/dreambooth", text2img())
        assert answer["status"] == "failed"


async def test_a_stuck_job_keeps_processing_past_its_eta() -> None:
    faults = FaultConfig(rate_stuck=1.0, stuck_extra=10.0)
    cost = CostModel(base=2.0, per_step=0, per_sample=0, per_megapixel=0, noise=0)
    config = EmulatorConfig(time_scale=FAST, sync_window=0, faults=faults, cost=cost)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        sent = time.monotonic()
        _, answer, _ = await post(http, f"{emu.base_url}/api/v3/dreambooth", text2img())
        assert answer["eta"] == pytest.approx(2.0 * FAST, abs=0.01)  # what it promises
        job = emu.jobs[answer["id"]]
        assert job.scheduled_finish - job.expected_finish == pytest.approx(10.0 * FAST)
        assert answer["eta"] <= job.expected_finish - sent
        # Poll until well past the ETA: still processing all along.
        for _ in range(10_000):
            _, fetched, _ = await post(http, answer["fetch_result"], {"key": KEY})
            assert fetched["status"] == "processing"
            if time.monotonic() > job.expected_finish + 2 * answer["eta"]:
                break
        assert time.monotonic() < job.scheduled_finish, "the test machine was too slow"
        await emu.wait_finished(job.id)
        _, done, _ = await post(http, answer["fetch_result"], {"key": KEY})
        assert done["status"] == "success"


async def test_output_files_404_for_a_while_after_success() -> None:
    faults = FaultConfig(rate_output_404=1.0, output_404_for=5.0)
    config = EmulatorConfig(time_scale=FAST, sync_window=10_000, faults=faults)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        _, answer, _ = await post(http, f"{emu.base_url}/api/v3/dreambooth", text2img())
        assert answer["status"] == "success"
        link = answer["output"][0]
        job = emu.jobs[answer["id"]]
        assert job.output_404_until is not None
        assert (await get(http, link))[0] == 404
        for _ in range(10_000):
            status, _ = await get(http, link)
            if status == 200:
                break
        assert status == 200
        assert time.monotonic() >= job.output_404_until
