"""DreamboothClient against a replay server: paths and bodies per API version, fetch_result
following (same origin only), the other endpoints, the key's source, and the lifecycle."""

from __future__ import annotations

import gc
import logging
import socket
import warnings
from typing import Any

import attrs
import pytest
from replay_server import ReplayServer, Reply, fast_client_options, refused_url

import dreambooth_async as dba
from dreambooth_async._client import _same_origin

pytestmark = pytest.mark.anyio

KEY = "test-key"
IMG = "https://example.com/in.png"
MASK = "https://example.com/mask.png"


def success(job_id: Any = 1) -> Reply:
    return Reply.json(
        {"status": "success", "id": job_id, "output": [f"https://cdn.example/{job_id}-0.png"]}
    )


def processing(job_id: Any, *, eta: Any = "0.01", fetch_result: str | None = None) -> Reply:
    body: dict[str, Any] = {"status": "processing", "id": job_id, "eta": eta, "output": []}
    if fetch_result is not None:
        body["fetch_result"] = fetch_result
    return Reply.json(body)


def client_for(server: ReplayServer | str, **overrides: Any) -> dba.DreamboothClient:
    url = server if isinstance(server, str) else server.url
    return dba.DreamboothClient(base_url=url, **fast_client_options(**overrides))


PATHS = {
    ("v3", "text2img"): "/api/v3/dreambooth",
    ("v3", "img2img"): "/api/v3/dreambooth/img2img",
    ("v3", "inpaint"): "/api/v3/dreambooth/inpaint",
    ("v4", "text2img"): "/api/v4/dreambooth",
    ("v4", "img2img"): "/api/v4/dreambooth/img2img",
    ("v4", "inpaint"): "/api/v4/dreambooth/inpaint",
    ("v6", "text2img"): "/api/v6/images/text2img",
    ("v6", "img2img"): "/api/v6/images/img2img",
    ("v6", "inpaint"): "/api/v6/images/inpaint",
}
REQUESTS: dict[str, dba.GenerationRequest] = {
    "text2img": dba.Text2Img(model_id="m", prompt="a cat", steps=20),
    "img2img": dba.Img2Img(model_id="m", prompt="a cat", init_image=IMG, steps=20),
    "inpaint": dba.Inpaint(model_id="m", prompt="a cat", init_image=IMG, mask_image=MASK, steps=20),
}


# --- paths and bodies -------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "kind"), sorted(PATHS))
async def test_submit_paths_and_bodies(version: dba.ApiVersion, kind: str) -> None:
    path = PATHS[version, kind]
    async with ReplayServer() as server:
        server.script(path, success(5))
        async with client_for(server, api_version=version) as client:
            job = await client.submit(REQUESTS[kind])
        assert job.done() and job.result().output == ("https://cdn.example/5-0.png",)
        (sent,) = server.requests
    assert sent.path == path
    assert sent.query == ""  # nothing travels in the query string
    assert sent.headers["Content-Type"].startswith("application/json")
    assert sent.body["key"] == KEY
    assert sent.body["model_id"] == "m" and sent.body["width"] == "512"
    steps = "steps" if kind == "inpaint" and version in ("v3", "v4") else "num_inference_steps"
    assert sent.body[steps] == "20"


@pytest.mark.parametrize(
    ("version", "path", "body"),
    [
        ("v3", "/api/v3/dreambooth/fetch/123", {"key": KEY}),
        ("v4", "/api/v4/dreambooth/fetch", {"key": KEY, "request_id": "123"}),
        ("v6", "/api/v6/images/fetch", {"key": KEY, "request_id": "123"}),
    ],
)
async def test_fetch_paths_and_bodies(
    version: dba.ApiVersion, path: str, body: dict[str, Any]
) -> None:
    async with ReplayServer() as server:
        server.script(path, processing(123, eta=4), success(123))
        async with client_for(server, api_version=version) as client:
            first = await client.fetch(123)  # an int id works (the official SDK's TypeError)
            second = await client.fetch("123")
        assert isinstance(first, dba.Processing) and first.eta == 4
        assert isinstance(second, dba.GenerationResult) and second.id == "123"
        assert server.bodies(path) == [body, body]


async def test_fetch_refuses_an_empty_id() -> None:
    async with ReplayServer() as server:
        async with client_for(server) as client:
            for bad in ("", "  "):
                with pytest.raises(dba.RequestValidationError):
                    await client.fetch(bad)
        assert server.count() == 0


def test_job_ids_are_quoted_in_fetch_paths() -> None:
    client = dba.DreamboothClient(api_key=KEY, base_url="http://127.0.0.1:1", api_version="v3")
    url, body = client._fetch_target("../../admin", None)
    assert url == "http://127.0.0.1:1/api/v3/dreambooth/fetch/..%2F..%2Fadmin"
    assert body == {}


# --- generate and the fetch_result URL --------------------------------------------------------


async def test_generate_waits_through_processing_following_fetch_result() -> None:
    async with ReplayServer() as server:
        # A v4 client, but the service names a v3 fetch URL: follow what the server gave.
        fetch_url = f"{server.url}/api/v3/dreambooth/fetch/900"
        server.script("/api/v4/dreambooth", processing(900, fetch_result=fetch_url))
        server.script(
            "/api/v3/dreambooth/fetch/900",
            processing(900, fetch_result=fetch_url),
            success(900),
        )
        async with client_for(server, api_version="v4") as client:
            result = await client.generate(REQUESTS["text2img"])
        assert result.id == "900"
        assert server.count("/api/v4/dreambooth") == 1
        assert server.bodies("/api/v3/dreambooth/fetch/900") == [{"key": KEY}, {"key": KEY}]
        assert server.count("/api/v4/dreambooth/fetch") == 0


def _can_bind(host: str) -> bool:
    try:
        with socket.socket() as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    "other_host",
    [
        "127.0.0.1",  # another port
        pytest.param(
            "127.0.0.2",  # another host
            marks=pytest.mark.skipif(not _can_bind("127.0.0.2"), reason="no 127.0.0.2 here"),
        ),
    ],
)
async def test_fetch_result_on_another_origin_never_gets_the_key(
    other_host: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with ReplayServer() as server, ReplayServer(other_host) as elsewhere:
        foreign = f"{elsewhere.url}/api/v3/dreambooth/fetch/901"
        elsewhere.always("/api/v3/dreambooth/fetch/901", success(901))
        server.script("/api/v6/images/text2img", processing(901, fetch_result=foreign))
        server.script("/api/v6/images/fetch", success(901), success(901))
        async with client_for(server, api_version="v6") as client:
            result = await client.generate(REQUESTS["text2img"])
            direct = await client.fetch(901, fetch_url=foreign)  # explicit, too
        assert result.id == "901"
        assert isinstance(direct, dba.GenerationResult) and direct.id == "901"
        assert elsewhere.count() == 0
        assert server.bodies("/api/v6/images/fetch") == [{"key": KEY, "request_id": "901"}] * 2
    assert any("another origin" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_not_followed(status: int) -> None:
    async with ReplayServer() as server, ReplayServer() as elsewhere:
        target = f"{elsewhere.url}/api/v3/dreambooth"
        elsewhere.always("/api/v3/dreambooth", success(1))
        server.script(
            "/api/v3/dreambooth", Reply.raw(b"", status=status, headers={"Location": target})
        )
        async with client_for(server) as client:
            with pytest.raises(dba.APIError, match="redirected") as caught:
                await client.submit(REQUESTS["text2img"])
        assert elsewhere.count() == 0  # a 307/308 would have re-sent the body, key included
        assert server.count() == 1
    assert caught.value.http_status == status
    assert target in str(caught.value)


async def test_fetch_result_downgraded_to_http_is_not_followed() -> None:
    assert not _same_origin("http://api.example", "https://api.example")
    assert _same_origin("https://api.example", "https://API.example:443/x")
    assert _same_origin("http://api.example:80", "http://api.example/")
    assert not _same_origin("https://api.example:8443", "https://api.example")


async def test_fetch_of_a_job_uses_its_fetch_result() -> None:
    async with ReplayServer() as server:
        custom = f"{server.url}/custom/fetch/77"
        server.script("/api/v3/dreambooth", processing(77, eta=600, fetch_result=custom))
        server.script("/custom/fetch/77", processing(77, eta=500))
        async with client_for(server) as client:
            job = await client.submit(REQUESTS["text2img"])
            answer = await client.fetch(job)
        assert isinstance(answer, dba.Processing) and answer.eta == 500
        assert server.bodies("/custom/fetch/77") == [{"key": KEY}]  # id in the path
    with pytest.raises(dba.ClientClosedError):
        await job


async def test_generate_raises_a_failed_job() -> None:
    async with ReplayServer() as server:
        server.script("/api/v3/dreambooth", processing(66))
        server.script(
            "/api/v3/dreambooth/fetch/66",
            Reply.json({"status": "failed", "id": 66, "message": "Failed, Try Again"}),
        )
        async with client_for(server) as client:
            with pytest.raises(dba.GenerationFailed) as caught:
                await client.generate(REQUESTS["text2img"])
    assert caught.value.job_id == "66"


async def test_shortcuts_build_and_generate() -> None:
    async with ReplayServer() as server:
        server.script("/api/v3/dreambooth", success(1))
        server.script("/api/v3/dreambooth/img2img", success(2))
        server.script("/api/v3/dreambooth/inpaint", processing(3), success(3))
        server.script("/api/v3/dreambooth/fetch/3", success(3))
        async with client_for(server) as client:
            one = await client.text2img(model_id="m", prompt="p", seed=7, safety_checker=True)
            two = await client.img2img(model_id="m", prompt="p", init_image=IMG, strength=0.3)
            three = await client.inpaint(model_id="m", prompt="p", init_image=IMG, mask_image=MASK)
        assert [r.id for r in (one, two, three)] == ["1", "2", "3"]
        text2img, img2img, inpaint = (server.bodies(p)[0] for p in list(PATHS.values())[:3])
    assert text2img["seed"] == 7 and text2img["safety_checker"] == "yes"
    assert img2img["init_image"] == IMG and img2img["strength"] == 0.3
    assert inpaint["mask_image"] == MASK and inpaint["steps"] == "30"


async def test_results_hold_a_session_handle_never_their_client() -> None:
    # Results are plain data: save() reaches the client's HTTP session through a narrow handle
    # that holds the session while the client is open, and nothing once it has closed.
    async with ReplayServer() as server:
        server.script("/api/v3/dreambooth", success(1))
        async with client_for(server) as client:
            result = await client.text2img(model_id="m", prompt="p")
            fields = attrs.fields_dict(dba.GenerationResult)
            assert "_client" not in fields and "client" not in fields
            handle = result._session
            assert handle is not None
            assert client not in gc.get_referents(result)
            assert client not in gc.get_referents(handle)
            assert handle.live_session() is client.http_session
        assert handle.live_session() is None


# --- other endpoints --------------------------------------------------------------------------


async def test_system_load() -> None:
    async with ReplayServer() as server:
        server.script(
            "/api/v3/system_load",
            Reply.json({"queue_num": "3", "queue_time": "12.5", "status": "ok"}),
            Reply.json({"status": "error", "message": "Invalid Api Key"}),
        )
        async with client_for(server, api_version="v6") as client:
            load = await client.system_load()
            with pytest.raises(dba.AuthenticationError):
                await client.system_load()
        assert (load.queue_num, load.queue_time, load.status) == (3, 12.5, "ok")
        assert server.bodies("/api/v3/system_load")[0] == {"key": KEY}


async def test_model_list_bare_wrapped_and_error() -> None:
    models = [
        {"model_id": "midjourney", "status": "model_ready", "model_name": "MJ v4", "extra": 1},
        {"model_id": "sd-1.5"},
        "junk",
    ]
    async with ReplayServer() as server:
        server.script(
            "/api/v4/dreambooth/model_list",
            Reply.json(models),
            Reply.json({"status": "success", "data": models[:1]}),
            Reply.json({"status": "error", "message": "Invalid Api Key"}, status=401),
            Reply.json({"status": "success", "data": "nope"}),
        )
        async with client_for(server) as client:
            bare = await client.model_list()
            wrapped = await client.model_list()
            with pytest.raises(dba.AuthenticationError):
                await client.model_list()
            with pytest.raises(dba.APIError, match="list"):
                await client.model_list()
    assert [m.model_id for m in bare] == ["midjourney", "sd-1.5"]
    assert bare[0].model_name == "MJ v4" and bare[0].raw["extra"] == 1
    assert wrapped == bare[:1]


async def test_model_reload() -> None:
    async with ReplayServer() as server:
        path = "/api/v4/dreambooth/model_reload"
        server.script(path, Reply.json({"status": "success", "message": "reloading"}))
        server.script(path, Reply.json({"status": "error", "message": "Model id not found"}))
        async with client_for(server) as client:
            answer = await client.model_reload("midjourney")
            with pytest.raises(dba.APIError, match="Model id not found"):
                await client.model_reload("nope")
            with pytest.raises(dba.RequestValidationError):
                await client.model_reload(" ")
        assert answer["message"] == "reloading"
        assert server.bodies(path) == [
            {"key": KEY, "model_id": "midjourney"},
            {"key": KEY, "model_id": "nope"},
        ]


# --- the key ----------------------------------------------------------------------------------


async def test_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DREAMBOOTH_API_KEY", "env-key\n")
    async with ReplayServer() as server:
        server.always("/api/v3/system_load", Reply.json({"status": "ok", "queue_num": 0}))
        options = fast_client_options()
        del options["api_key"]
        async with dba.DreamboothClient(base_url=server.url, **options) as client:
            await client.system_load()
        async with dba.DreamboothClient(api_key="given", base_url=server.url, **options) as client:
            await client.system_load()
        assert [b["key"] for b in server.bodies("/api/v3/system_load")] == ["env-key", "given"]


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_api_key(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("DREAMBOOTH_API_KEY", raising=False)
    else:
        monkeypatch.setenv("DREAMBOOTH_API_KEY", value)
    with pytest.raises(dba.RequestValidationError, match="DREAMBOOTH_API_KEY") as caught:
        dba.DreamboothClient()
    assert caught.value.field == "api_key"


def test_constructor_validation() -> None:
    for kwargs in (
        {"api_version": "v5"},
        {"base_url": "ftp://example.com"},
        {"base_url": "not a url"},
        {"max_concurrency": 0},
    ):
        with pytest.raises(dba.RequestValidationError):
            dba.DreamboothClient(api_key=KEY, **kwargs)
    with pytest.warns(UserWarning, match="unencrypted"):
        dba.DreamboothClient(api_key=KEY, base_url="http://api.example.com")


# --- lifecycle --------------------------------------------------------------------------------


async def test_use_before_start_and_after_close_is_a_clear_error() -> None:
    async with ReplayServer() as server:
        client = client_for(server)
        calls = [
            lambda: client.submit(REQUESTS["text2img"]),
            lambda: client.generate(REQUESTS["text2img"]),
            lambda: client.text2img(model_id="m", prompt="p"),
            lambda: client.fetch("1"),
            lambda: client.system_load(),
            lambda: client.model_list(),
            lambda: client.model_reload("m"),
        ]
        for call in calls:
            with pytest.raises(dba.ClientClosedError, match="not started"):
                await call()
        async with client:
            assert "open" in repr(client)
        for call in calls:
            with pytest.raises(dba.ClientClosedError, match="closed"):
                await call()
        with pytest.raises(dba.ClientClosedError):
            client.attach("1")
        with pytest.raises(dba.ClientClosedError):
            await client.start()
        await client.aclose()  # idempotent
        assert server.count() == 0


async def test_leaving_async_with_closes_the_session_without_warnings() -> None:
    async with ReplayServer() as server:
        server.always("/api/v3/system_load", Reply.json({"status": "ok", "queue_num": 0}))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            client = client_for(server)
            async with client:
                await client.system_load()
            session = client._transport._session
            assert session is not None and session.closed
            with pytest.raises(RuntimeError):
                async with client_for(server) as other:
                    await other.system_load()
                    raise RuntimeError("the block fails")
            assert other._transport._session is not None and other._transport._session.closed
            del client, other, session
            gc.collect()
        assert [str(w.message) for w in caught] == []


async def test_closing_a_client_that_never_started() -> None:
    client = dba.DreamboothClient(api_key=KEY, base_url="http://127.0.0.1:1")
    await client.aclose()
    assert "closed" in repr(client)


async def test_pending_jobs_fail_on_close_and_can_be_attached_again() -> None:
    async with ReplayServer() as server:
        server.script("/api/v3/dreambooth", processing(31, eta=600))
        server.always("/api/v3/dreambooth/fetch/31", success(31))
        async with client_for(server) as client:
            job = await client.submit(REQUESTS["text2img"])
        with pytest.raises(dba.ClientClosedError, match="wait_for"):
            await job.wait()
        async with client_for(server) as again:
            result = await again.wait_for(job.id)
        assert result.id == "31"


async def test_connection_refused_client_raises_transport_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dreambooth_async")
    with refused_url() as url:
        async with client_for(url) as client:
            with pytest.raises(dba.TransportError) as caught:
                await client.system_load()
    assert caught.value.may_have_landed is False
    assert caught.value.url == f"{url}/api/v3/system_load"
