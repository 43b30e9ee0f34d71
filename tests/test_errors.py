"""Every response shape of docs/protocol.md, served over real HTTP, maps to the right outcome.

Each case is replayed by a local server and goes through the whole client (transport, the one
error mapping, the converter), with retries off so that one scripted answer is one outcome.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from _emulator_fixtures import SEED_RESPONSE
from replay_server import ReplayServer, Reply, fast_client_options

import dreambooth_async as dba
from dreambooth_async._errors import error_from_response
from dreambooth_async._wire import parse_response

pytestmark = pytest.mark.anyio

SUBMIT = "/api/v3/dreambooth"

# The seed page's example response (dreambooth-inpaint-endpoint.txt), shared with the emulator's
# tests.
SEED_SUCCESS = SEED_RESPONSE

PROCESSING_MESSEGE = {
    "status": "processing",
    "tip": "for faster speed, keep resolution upto 512x512",
    "eta": 29.24,
    "messege": "Try to fetch request after given estimated time",
    "webhook_status": "",
    "fetch_result": "https://stablediffusionapi.com/api/v3/dreambooth/fetch/13481504",
    "id": 13481504,
    "output": [],
    "meta": {"steps": 20},
    "future_links": ["https://cdn.example/generations/0-abc.png"],
}

INVALID_KEY = {
    "status": "error",
    "message": "Invalid Api Key",
    "tip": "1. Make sure you are passing Api Key in the key field",
}
SPAM_LIMIT = {
    "status": "error",
    "message": "Rate limit exceeded",
    "tips": "You have sent the same request again, please wait for 30 seconds and try again",
}
QUEUE_FULL = {
    "status": "error",
    "message": "Rate limit exceeded. Maximum 5 queued requests allowed.",
    "retry_after": 30,
}
FAILED = {"status": "failed", "id": "", "message": "Failed, Try Again", "output": ""}
FIELD_ERRORS = {"status": "error", "message": {"prompt": ["The prompt field is required."]}}
NO_MODEL = {"status": "error", "message": "Model id not found"}

BAD_GATEWAY_HTML = (
    b"<html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)


def no_retry_client(server: ReplayServer, **overrides: Any) -> dba.DreamboothClient:
    options = fast_client_options(retry=dba.RetryPolicy(max_retries=0), **overrides)
    return dba.DreamboothClient(base_url=server.url, **options)


async def submit_once(reply: Reply) -> tuple[Any, ReplayServer]:
    """Submit one request against ``reply``; return the job's result or the raised error."""
    async with ReplayServer() as server:
        server.script(SUBMIT, reply)
        async with no_retry_client(server) as client:
            try:
                job = await client.submit(dba.Text2Img(model_id="m", prompt="a cat"))
            except dba.DreamboothError as error:
                return error, server
            return job.result(), server


# --- successes --------------------------------------------------------------------------------


async def test_seed_success_example() -> None:
    result, server = await submit_once(Reply.json(SEED_SUCCESS))
    assert isinstance(result, dba.GenerationResult)
    assert result.id == "12382960"
    assert result.status == "success"
    assert result.output == tuple(SEED_SUCCESS["output"])  # type: ignore[arg-type]
    assert result.generation_time == pytest.approx(11.9588, rel=1e-4)
    assert result.seed == 4156422202
    assert result.meta["scheduler"] == "UniPCMultistepScheduler"
    assert result.raw == SEED_SUCCESS
    assert server.count() == 1


async def test_v6_success_fields() -> None:
    body = {
        **SEED_SUCCESS,
        "id": "9f0e",
        "generationTime": "3.5",
        "proxy_links": ["https://proxy.example/a.png"],
        "nsfw_content_detected": ["no"],
        "webhook_status": "",
        "tip": "Get 20x faster image generation",
        "unknown_future_field": {"x": 1},
    }
    result, _ = await submit_once(Reply.json(body))
    assert isinstance(result, dba.GenerationResult)
    assert result.id == "9f0e"
    assert result.generation_time == 3.5
    assert result.proxy_links == ("https://proxy.example/a.png",)
    assert result.nsfw_content_detected is False
    assert result.raw["unknown_future_field"] == {"x": 1}


@pytest.mark.parametrize(
    ("body", "expected_id"),
    [
        ({"status": "success", "id": 13481504, "output": ["https://x.example/a.png"]}, "13481504"),
        ({"status": "success", "id": "13481504", "output": "https://x.example/a.png"}, "13481504"),
        (
            {"status": "success", "id": 13481504.0, "output": ["https://x.example/a.png"]},
            "13481504",
        ),
        # No id in the answer: it is the id that was fetched.
        ({"status": "success", "id": "", "output": ["https://x.example/a.png"]}, "13481504"),
        ({"status": "success", "output": ["https://x.example/a.png"]}, "13481504"),
    ],
)
async def test_v3_fetch_success_shapes(body: dict[str, Any], expected_id: str | None) -> None:
    async with ReplayServer() as server:
        server.script("/api/v3/dreambooth/fetch/13481504", Reply.json(body))
        async with no_retry_client(server) as client:
            result = await client.fetch(13481504)
    assert isinstance(result, dba.GenerationResult)
    assert result.id == expected_id
    assert result.output == ("https://x.example/a.png",)


# --- processing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "job_id", "eta", "message"),
    [
        (PROCESSING_MESSEGE, "13481504", 29.24, "Try to fetch request after given estimated time"),
        (
            {"status": "processing", "id": "777", "eta": "12.5", "message": "queued", "output": ""},
            "777",
            12.5,
            "queued",
        ),
        ({"status": "processing", "id": 5, "eta": "", "output": []}, "5", None, None),
        ({"status": "processing", "id": "6", "eta": -3}, "6", None, None),
    ],
)
async def test_processing_shapes(
    body: dict[str, Any], job_id: str, eta: float | None, message: str | None
) -> None:
    async with ReplayServer() as server:
        server.script("/api/v3/dreambooth/fetch/42", Reply.json(body))
        async with no_retry_client(server) as client:
            answer = await client.fetch("42")
    assert isinstance(answer, dba.Processing)
    assert answer.id == job_id
    assert answer.eta == eta
    assert answer.message == message
    assert answer.raw == body


async def test_processing_submission_gives_a_pending_job() -> None:
    async with ReplayServer() as server:
        server.script(SUBMIT, Reply.json(PROCESSING_MESSEGE))
        async with no_retry_client(server) as client:
            job = await client.submit(dba.Text2Img(model_id="m", prompt="a cat"))
            assert job.id == "13481504"
            assert job.eta == 29.24
            assert job.status == "processing"
        # Leaving the block fails the pending job instead of leaving it hanging.
        with pytest.raises(dba.ClientClosedError, match="13481504"):
            await job
    assert server.count() == 1


async def test_processing_without_id_is_reported_not_polled() -> None:
    error, _ = await submit_once(Reply.json({"status": "processing", "id": "", "eta": 3}))
    assert type(error) is dba.APIError
    assert error.may_have_landed  # it was accepted: resubmitting would pay twice


# --- errors, inside HTTP 200 and with HTTP codes ----------------------------------------------


@pytest.mark.parametrize("status", [200, 401, 403])
async def test_invalid_api_key(status: int) -> None:
    error, _ = await submit_once(Reply.json(INVALID_KEY, status=status))
    assert type(error) is dba.AuthenticationError
    assert error.message == "Invalid Api Key"
    assert error.tip is not None and error.tip.startswith("1. Make sure")
    assert error.http_status == status


@pytest.mark.parametrize("status", [200, 429])
async def test_spam_filter_rate_limit(status: int) -> None:
    error, _ = await submit_once(Reply.json(SPAM_LIMIT, status=status))
    assert type(error) is dba.RateLimitError
    assert error.retry_after == 30
    assert error.queue_full is False
    assert error.queue_limit is None


@pytest.mark.parametrize("status", [200, 429])
async def test_queue_full_with_retry_after_body(status: int) -> None:
    error, _ = await submit_once(Reply.json(QUEUE_FULL, status=status))
    assert type(error) is dba.RateLimitError
    assert error.retry_after == 30
    assert error.queue_full is True
    assert error.queue_limit == 5  # the account's limit, as the message states it
    assert "Maximum 5 queued requests" in str(error)


async def test_429_retry_after_header_wins_and_needs_no_body() -> None:
    error, _ = await submit_once(Reply.raw(b"", status=429, headers={"Retry-After": "7"}))
    assert type(error) is dba.RateLimitError
    assert error.retry_after == 7
    error, _ = await submit_once(Reply.json(QUEUE_FULL, status=429, headers={"Retry-After": "2"}))
    assert isinstance(error, dba.RateLimitError)
    assert error.retry_after == 2


@pytest.mark.parametrize("status", [200, 500])
async def test_failed_generation(status: int) -> None:
    error, _ = await submit_once(Reply.json(FAILED, status=status))
    assert type(error) is dba.GenerationFailed
    assert error.message == "Failed, Try Again"
    assert error.job_id is None  # the service's id was ""


async def test_failed_generation_keeps_job_id() -> None:
    error, _ = await submit_once(Reply.json({**FAILED, "id": 99}))
    assert isinstance(error, dba.GenerationFailed)
    assert error.job_id == "99"


@pytest.mark.parametrize("status", [200, 400, 422])
async def test_message_as_object_gives_details(status: int) -> None:
    error, _ = await submit_once(Reply.json(FIELD_ERRORS, status=status))
    assert type(error) is dba.APIError
    assert error.details == {"prompt": ["The prompt field is required."]}
    assert "prompt" in str(error)
    assert error.http_status == status


@pytest.mark.parametrize("status", [200, 404])
async def test_model_not_found(status: int) -> None:
    error, _ = await submit_once(Reply.json(NO_MODEL, status=status))
    assert type(error) is dba.APIError
    assert error.message == "Model id not found"
    assert error.body == NO_MODEL


async def test_messege_spelling_in_errors() -> None:
    error, _ = await submit_once(Reply.json({"status": "error", "messege": "Model id not found"}))
    assert type(error) is dba.APIError
    assert error.message == "Model id not found"


async def test_502_html_page() -> None:
    error, _ = await submit_once(Reply.raw(BAD_GATEWAY_HTML, status=502))
    assert type(error) is dba.ServerError
    assert error.may_have_landed is True
    assert error.http_status == 502
    assert "502 Bad Gateway" in str(error)


async def test_503_is_a_server_error_that_did_not_land() -> None:
    body = {"status": "error", "message": "Service overloaded, try again"}
    error, _ = await submit_once(Reply.json(body, status=503))
    assert type(error) is dba.ServerError
    assert error.may_have_landed is False
    assert error.retry_after is None
    headers = {"Retry-After": "4"}
    error, _ = await submit_once(Reply.raw(b"busy", status=503, headers=headers))
    assert type(error) is dba.ServerError
    assert error.retry_after == 4


@pytest.mark.parametrize("status", [200, 500])
async def test_empty_body(status: int) -> None:
    error, _ = await submit_once(Reply.raw(b"", status=status, content_type="application/json"))
    assert type(error) is dba.ServerError
    assert "empty response body" in str(error)
    assert error.may_have_landed is True  # nothing says the submission was refused


async def test_non_json_4xx() -> None:
    error, _ = await submit_once(Reply.raw(b"<h1>Not Found</h1>", status=404))
    assert type(error) is dba.APIError
    assert "Not Found" in str(error)


async def test_unknown_status_in_200() -> None:
    error, _ = await submit_once(Reply.json({"status": "weird", "message": "hm"}))
    assert type(error) is dba.APIError
    assert "weird" in str(error)


@pytest.mark.parametrize(
    ("reply", "check"),
    [
        (Reply.drop_before_body(), lambda e: isinstance(e, dba.TransportError)),
        (Reply.drop_after_body(), lambda e: isinstance(e, dba.TransportError)),
    ],
)
async def test_dropped_connections(reply: Reply, check: Callable[[Any], bool]) -> None:
    error, server = await submit_once(reply)
    assert check(error)
    assert error.may_have_landed is True
    assert "may have accepted it" in str(error)
    assert server.count() == 1


# --- the mapping function on its own ----------------------------------------------------------


def test_retry_after_header_is_case_insensitive_and_accepts_dates() -> None:
    error = error_from_response(429, {"retry-after": "3"}, b"", None)
    assert isinstance(error, dba.RateLimitError) and error.retry_after == 3
    error = error_from_response(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"", None)
    assert isinstance(error, dba.RateLimitError) and error.retry_after == 0  # already past


def test_success_and_processing_map_to_no_error() -> None:
    for body in (SEED_SUCCESS, PROCESSING_MESSEGE, {"status": "ok", "queue_num": 0}):
        raw = json.dumps(body).encode()
        assert error_from_response(200, {}, raw, body) is None


def test_bare_array_is_model_list_not_an_error() -> None:
    assert error_from_response(200, {}, b"[]", []) is None
    with pytest.raises(dba.APIError, match="JSON object"):
        parse_response(200, {}, b"[]")


def test_error_texts_and_attributes() -> None:
    error = dba.APIError("boom", details={"w": ["too big"]}, http_status=400)
    assert str(error) == "boom (w: too big) [HTTP 400]"
    timeout = dba.JobTimeout("12", 3.0)
    assert "12" in str(timeout) and "3s" in str(timeout) and isinstance(timeout, TimeoutError)
    not_sent = dba.TransportError("refused", may_have_landed=False)
    assert "may have" not in str(not_sent)
    validation = dba.RequestValidationError("width", 5000, "from 1 to 1024")
    assert str(validation) == "width=5000 is invalid: must be from 1 to 1024"
    assert isinstance(validation, ValueError)
