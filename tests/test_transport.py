"""The retry rule, shown by counting requests at the server.

A submission is sent again only when it provably did not land (connection refused, 429, 503,
"queue full"); when it may have landed (dropped connection, timeout, 502, empty answer) it is
sent exactly once and the error says so. Fetches are idempotent and retry every transient fault.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from replay_server import ReplayServer, Reply, fast_client_options, refused_url

import dreambooth_async as dba

pytestmark = pytest.mark.anyio

SUBMIT = "/api/v3/dreambooth"
FETCH = "/api/v3/dreambooth/fetch/77"
SUCCESS = {"status": "success", "id": 77, "output": ["https://cdn.example/77-0.png"]}
OVERLOADED = {"status": "error", "message": "Service Unavailable"}
QUEUE_FULL = {
    "status": "error",
    "message": "Rate limit exceeded. Maximum 5 queued requests allowed.",
    "retry_after": 30,
}
BAD_GATEWAY = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
REQUEST = dba.Text2Img(model_id="m", prompt="a cat")


def client_for(server_url: str, **overrides: Any) -> dba.DreamboothClient:
    return dba.DreamboothClient(base_url=server_url, **fast_client_options(**overrides))


class RetryLog:
    def __init__(self) -> None:
        self.calls: list[tuple[int, Exception, float]] = []

    def __call__(self, attempt: int, error: Exception, delay: float) -> None:
        self.calls.append((attempt, error, delay))


# --- submissions that may have landed: sent once, reported ------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        Reply.drop_before_body(),
        Reply.drop_after_body(),
        Reply.raw(BAD_GATEWAY, status=502),
        Reply.raw(b"", status=200),
        Reply.json({"status": "error", "message": "Internal error"}, status=500),
    ],
    ids=["drop-before-body", "drop-after-body", "502-html", "empty-200", "500-json"],
)
async def test_submission_that_may_have_landed_is_sent_once(reply: Reply) -> None:
    async with ReplayServer() as server:
        server.script(SUBMIT, reply)
        server.always(SUBMIT, Reply.json(SUCCESS))  # a retry would succeed: it must not happen
        async with client_for(server.url) as client:
            with pytest.raises((dba.TransportError, dba.ServerError)) as caught:
                await client.submit(REQUEST)
        assert server.count(SUBMIT) == 1
    error = caught.value
    assert error.may_have_landed is True
    if isinstance(error, dba.TransportError):
        assert "may have accepted it" in str(error)


async def test_submission_timeout_is_sent_once() -> None:
    async with ReplayServer() as server:
        server.script(SUBMIT, Reply.slow())
        server.always(SUBMIT, Reply.json(SUCCESS))
        timeouts = dba.Timeouts(connect=2.0, request=0.1, total=5.0)
        async with client_for(server.url, timeout=timeouts) as client:
            with pytest.raises(dba.TransportError, match="timed out") as caught:
                await client.submit(REQUEST)
        assert server.count(SUBMIT) == 1
    assert caught.value.may_have_landed is True
    assert "may have accepted it" in str(caught.value)


async def test_model_reload_is_not_retried_after_a_drop() -> None:
    async with ReplayServer() as server:
        server.script("/api/v4/dreambooth/model_reload", Reply.drop_after_body())
        async with client_for(server.url) as client:
            with pytest.raises(dba.TransportError):
                await client.model_reload("midjourney")
        assert server.count() == 1


# --- submissions that provably did not land: retried ------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        Reply.json(OVERLOADED, status=503),
        Reply.raw(b"<html><title>503 Service Unavailable</title></html>", status=503),
        Reply.raw(b"", status=429, headers={"Retry-After": "0.01"}),
        Reply.json(QUEUE_FULL, status=429),
        Reply.json(QUEUE_FULL, status=200),
    ],
    ids=["503-json", "503-html", "429-retry-after-header", "429-queue-full", "200-queue-full"],
)
async def test_submission_that_did_not_land_is_retried(reply: Reply) -> None:
    async with ReplayServer() as server:
        server.script(SUBMIT, reply, reply, Reply.json(SUCCESS))
        async with client_for(server.url) as client:
            retries = RetryLog()
            client.on_retry(retries)
            job = await client.submit(REQUEST)
        assert job.result().id == "77"
        assert server.count(SUBMIT) == 3
        assert [attempt for attempt, _, _ in retries.calls] == [1, 2]


async def test_retry_after_is_honoured_and_capped() -> None:
    async with ReplayServer() as server:
        server.script(
            SUBMIT,
            Reply.raw(b"", status=429, headers={"Retry-After": "0.02"}),
            Reply.json(QUEUE_FULL),  # says 30 s; the policy caps it at max_retry_after
            Reply.json(SUCCESS),
        )
        async with client_for(server.url) as client:
            retries = RetryLog()
            client.on_retry(retries)
            await client.submit(REQUEST)
    delays = [delay for _, _, delay in retries.calls]
    assert 0.02 <= delays[0] <= 0.022  # Retry-After plus at most 10 % jitter
    assert 0.05 <= delays[1] <= 0.055  # capped at max_retry_after=0.05
    assert isinstance(retries.calls[1][1], dba.RateLimitError)
    assert retries.calls[1][1].retry_after == 30


async def test_503_retry_after_is_honoured() -> None:
    async with ReplayServer() as server:
        busy = Reply.json(OVERLOADED, status=503, headers={"Retry-After": "0.02"})
        server.script(SUBMIT, busy, Reply.json(SUCCESS))
        async with client_for(server.url) as client:
            retries = RetryLog()
            client.on_retry(retries)
            await client.submit(REQUEST)
        assert server.count(SUBMIT) == 2
    assert 0.02 <= retries.calls[0][2] <= 0.022


async def test_retries_give_up_after_max_retries() -> None:
    async with ReplayServer() as server:
        server.always(SUBMIT, Reply.json(OVERLOADED, status=503))
        async with client_for(server.url) as client:
            with pytest.raises(dba.ServerError) as caught:
                await client.submit(REQUEST)
        assert server.count(SUBMIT) == 1 + 3  # the first try and max_retries=3
    assert caught.value.may_have_landed is False


async def test_rate_limit_retry_can_be_turned_off() -> None:
    policy = dba.RetryPolicy(backoff_base=0.001, retry_rate_limited=False)
    async with ReplayServer() as server:
        server.always(SUBMIT, Reply.json(QUEUE_FULL, status=429))
        async with client_for(server.url, retry=policy) as client:
            with pytest.raises(dba.RateLimitError):
                await client.submit(REQUEST)
        assert server.count(SUBMIT) == 1


async def test_per_call_retry_policy_overrides_the_clients() -> None:
    async with ReplayServer() as server:
        server.always(SUBMIT, Reply.json(OVERLOADED, status=503))
        async with client_for(server.url) as client:
            with pytest.raises(dba.ServerError):
                await client.submit(REQUEST, retry=dba.RetryPolicy(max_retries=0))
        assert server.count(SUBMIT) == 1


async def test_total_timeout_stops_retrying_instead_of_waiting() -> None:
    policy = dba.RetryPolicy(max_retries=5, backoff_base=0.001, max_retry_after=60)
    timeouts = dba.Timeouts(connect=2.0, request=5.0, total=1.0)
    async with ReplayServer() as server:
        server.always(SUBMIT, Reply.raw(b"", status=429, headers={"Retry-After": "30"}))
        async with client_for(server.url, retry=policy, timeout=timeouts) as client:
            with pytest.raises(dba.RateLimitError) as caught:
                await client.submit(REQUEST)
        # Waiting 30 s would overrun the 1 s budget: it raises at once instead.
        assert server.count(SUBMIT) == 1
    assert caught.value.retry_after == 30


async def test_non_transient_errors_are_never_retried() -> None:
    invalid = {"status": "error", "message": "Invalid Api Key"}
    async with ReplayServer() as server:
        server.always(SUBMIT, Reply.json(invalid))
        server.always(FETCH, Reply.json(invalid, status=401))
        async with client_for(server.url) as client:
            with pytest.raises(dba.AuthenticationError):
                await client.submit(REQUEST)
            with pytest.raises(dba.AuthenticationError):
                await client.fetch("77")
        assert server.count(SUBMIT) == 1
        assert server.count(FETCH) == 1


async def test_connection_refused_is_retried_then_raises_not_landed() -> None:
    with refused_url() as url:
        async with client_for(url) as client:
            retries = RetryLog()
            client.on_retry(retries)
            with pytest.raises(dba.TransportError, match="cannot connect") as caught:
                await client.submit(REQUEST)
    assert caught.value.may_have_landed is False
    assert "may have" not in str(caught.value)
    assert len(retries.calls) == 3  # every retry the policy allows: nothing was ever sent


# --- fetches are idempotent: every transient fault is retried --------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        Reply.drop_before_body(),
        Reply.drop_after_body(),
        Reply.raw(BAD_GATEWAY, status=502),
        Reply.raw(b"", status=200),
        Reply.json(OVERLOADED, status=503),
        Reply.raw(b"", status=429, headers={"Retry-After": "0.01"}),
    ],
    ids=["drop-before-body", "drop-after-body", "502-html", "empty-200", "503", "429"],
)
async def test_fetch_retries_transient_faults(reply: Reply) -> None:
    async with ReplayServer() as server:
        server.script(FETCH, reply, reply, Reply.json(SUCCESS))
        async with client_for(server.url) as client:
            result = await client.fetch(77)
        assert isinstance(result, dba.GenerationResult)
        assert server.count(FETCH) == 3
        assert server.bodies(FETCH)[-1] == {"key": "test-key"}


async def test_fetch_retries_a_timeout() -> None:
    async with ReplayServer() as server:
        server.script(FETCH, Reply.slow(), Reply.json(SUCCESS))
        timeouts = dba.Timeouts(connect=2.0, request=0.1, total=5.0)
        async with client_for(server.url, timeout=timeouts) as client:
            result = await client.fetch(77)
        assert isinstance(result, dba.GenerationResult)
        assert server.count(FETCH) == 2


async def test_fetch_gives_up_after_max_retries() -> None:
    async with ReplayServer() as server:
        server.always(FETCH, Reply.drop_after_body())
        async with client_for(server.url) as client:
            with pytest.raises(dba.TransportError):
                await client.fetch(77)
        assert server.count(FETCH) == 4


async def test_system_load_and_model_list_are_retried() -> None:
    async with ReplayServer() as server:
        server.script("/api/v3/system_load", Reply.drop_before_body())
        server.always("/api/v3/system_load", Reply.json({"queue_num": 0, "status": "ok"}))
        server.script("/api/v4/dreambooth/model_list", Reply.raw(BAD_GATEWAY, status=502))
        server.always("/api/v4/dreambooth/model_list", Reply.json([]))
        async with client_for(server.url) as client:
            assert (await client.system_load()).queue_num == 0
            assert await client.model_list() == []
        assert server.count("/api/v3/system_load") == 2
        assert server.count("/api/v4/dreambooth/model_list") == 2


async def test_retries_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dreambooth_async")
    async with ReplayServer() as server:
        server.script(FETCH, Reply.json(OVERLOADED, status=503), Reply.json(SUCCESS))
        async with client_for(server.url) as client:
            await client.fetch(77)
    assert any("retrying" in r.getMessage() for r in caplog.records)


# --- the policy on its own --------------------------------------------------------------------


def test_should_retry_matrix() -> None:
    policy = dba.RetryPolicy()
    landed = dba.TransportError("dropped", may_have_landed=True)
    refused = dba.TransportError("refused", may_have_landed=False)
    bad_gateway = dba.ServerError("502", http_status=502, may_have_landed=True)
    unavailable = dba.ServerError("503", http_status=503, may_have_landed=False)
    limited = dba.RateLimitError("limit", retry_after=1)
    for error, submit, fetch in [
        (landed, False, True),
        (refused, True, True),
        (bad_gateway, False, True),
        (unavailable, True, True),
        (limited, True, True),
        (dba.APIError("Model id not found"), False, False),
        (dba.AuthenticationError("Invalid Api Key"), False, False),
        (dba.GenerationFailed("Failed"), False, False),
    ]:
        assert policy.should_retry(error, idempotent=False) is submit, error
        assert policy.should_retry(error, idempotent=True) is fetch, error


def test_backoff_is_jittered_exponential_and_capped() -> None:
    policy = dba.RetryPolicy(backoff_base=0.5, backoff_cap=4.0)
    error = dba.TransportError("x", may_have_landed=False)
    for attempt in range(8):
        limit = min(4.0, 0.5 * 2**attempt)
        delays = [policy.delay(attempt, error) for _ in range(50)]
        assert all(0 <= d <= limit for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        dba.RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError):
        dba.RetryPolicy(backoff_base=0)
    for bad in ({"request": 0}, {"connect": -1}, {"total": 0}):
        with pytest.raises(ValueError):
            dba.Timeouts(**bad)
    assert dba.Timeouts(total=None).total is None
