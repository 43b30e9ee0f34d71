"""The webhook receiver under hostile HTTP: random methods, tokens, headers, sizes and bodies,
sent as raw bytes so that nothing on the sending side tidies them up.

The receiver faces whoever can reach its port. Whatever arrives, it answers 2xx or 4xx (never a
5xx: that would be a crash of the handler) and no delivery completes a job: a forged body
carrying a made-up output, even on a real job's token, only makes the poller ask the service,
which says the job is still running. Three real jobs, on a service that will not finish them
while the test runs, stand by the whole time.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import secrets
import string
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.from_thread
import attrs
import pytest
from _chaos_fixtures import HostileCounter, http_request, raw_exchange, record_hostile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dreambooth_async as dba
from dreambooth_async._webhooks import WebhookReceiver
from dreambooth_async.emulator import DEFAULT_KEY, CostModel, Emulator, EmulatorConfig

# The client under test runs in a portal thread, and its poller draws jitter from the global
# `random` while hypothesis draws examples in this one: hypothesis takes that for a strategy
# using `random` and warns. It is not one.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
SCALE = 0.01
FORMS = pytest.mark.parametrize(
    "examples",
    [pytest.param(250, id="quick"), pytest.param(5000, id="slow", marks=pytest.mark.slow)],
)


@attrs.define
class World:
    emu: Emulator
    receiver: WebhookReceiver
    client: dba.DreamboothClient
    jobs: list[dba.Job]
    tokens: list[str]

    @property
    def port(self) -> int:
        return self.receiver.port

    def path(self, token: str) -> str:
        return f"{self.receiver.path}/{token}"


@contextlib.asynccontextmanager
async def world() -> AsyncIterator[World]:
    # Jobs of 10^5 service seconds: a thousand real seconds, far beyond the test.
    config = EmulatorConfig(
        time_scale=SCALE,
        cost=CostModel(base=100_000, per_step=0, per_sample=0, per_megapixel=0, noise=0),
        sync_window=0,
        queue_limit=10,
        workers=4,
    )
    async with Emulator(config) as emu:
        receiver = WebhookReceiver()
        client = dba.DreamboothClient(
            DEFAULT_KEY,
            base_url=emu.base_url,
            poll=dba.PollPolicy(job_timeout=None).scaled(SCALE),
            webhooks=receiver,
        )
        async with client:
            jobs = [
                await client.submit(
                    dba.Text2Img(model_id="midjourney", prompt=f"a slow {i}", seed=i)
                )
                for i in range(3)
            ]
            tokens = []
            for job in jobs:
                webhook = emu.jobs[int(job.id)].params.webhook
                assert webhook is not None
                tokens.append(webhook.rsplit("/", 1)[-1])
            yield World(emu, receiver, client, jobs, tokens)


@pytest.fixture(scope="module")
def portal() -> Iterator[anyio.from_thread.BlockingPortal]:
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        yield portal


@pytest.fixture(scope="module")
def live(portal: anyio.from_thread.BlockingPortal) -> Iterator[World]:
    with portal.wrap_async_context_manager(world()) as w:
        yield w
    # Leaving the client failed the standing jobs with ClientClosedError: none had a result.


def check_nothing_resolved(w: World, portal: anyio.from_thread.BlockingPortal) -> None:
    for job in w.jobs:
        assert not job.done(), f"job {job.id} was resolved by a hostile delivery"
        assert w.emu.jobs[int(job.id)].status in ("queued", "processing")

    async def fetch_all() -> list[Any]:
        return [await w.client.fetch(job) for job in w.jobs]

    # The service's word, fetched now: still running, so no output could have come from it.
    for answer in portal.call(fetch_all):
        assert isinstance(answer, dba.Processing)


# --- strategies -------------------------------------------------------------------------------

header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
    max_size=40,
)
header_name = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=20)
headers = st.lists(
    st.tuples(
        st.sampled_from(
            ["Content-Type", "Content-Encoding", "User-Agent", "Accept", "X-Track-Id", "Cookie"]
        )
        | header_name,
        st.sampled_from(["application/json", "text/html", "gzip", "deflate", "identity", "br"])
        | header_text,
    ).filter(lambda h: h[0].lower() not in ("content-length", "transfer-encoding", "host")),
    max_size=5,
)
# Mostly POST, the receiver's one method; the rest must be refused without a crash.
methods = st.sampled_from(
    ["POST"] * 8 + ["GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "BREW", "X"]
)
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def tokens(draw: st.DrawFn) -> tuple[str, int | None]:
    """(URL path segment, index of the real token it is, if it is one)."""
    kind = draw(st.sampled_from(["real", "real", "tweaked", "random", "traversal", "long", "odd"]))
    index = draw(st.integers(0, 2))
    if kind == "real":
        return f"{{{index}}}", index
    if kind == "tweaked":
        return f"{{{index}}}~", None
    if kind == "random":
        return urllib.parse.quote(draw(st.text(min_size=1, max_size=40)), safe=""), None
    if kind == "traversal":
        return draw(st.sampled_from(["..", "../..", "%2e%2e", "..%2f..%2fetc", ".", "%00"])), None
    if kind == "long":
        return "A" * draw(st.integers(100, 12_000)), None
    return draw(st.sampled_from(["", "?x=1", "{0}/extra", "{0}?a=b", "{0}#frag"])), None


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["forged", "forged", "json", "bytes", "big", "empty"]))
    if kind == "forged":
        forged: dict[str, Any] = {
            "status": draw(st.sampled_from(["success", "failed", "processing", "error"])),
            "id": draw(st.integers(1_000_000, 1_000_010) | st.text(max_size=8)),
            "output": ["http://evil.invalid/forged.png"],
            "track_id": draw(st.text(max_size=32)),
            "message": "forged",
        }
        return json.dumps(forged).encode()
    if kind == "json":
        return json.dumps(draw(json_value)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "big":
        return (
            b'{"status": "success", "pad": "' + b"x" * draw(st.integers(200_000, 400_000)) + b'"}'
        )
    return b""


def fill(token: str, w: World) -> str:
    for i, real in enumerate(w.tokens):
        token = token.replace(f"{{{i}}}", real)
    return token


# --- the tests --------------------------------------------------------------------------------


@FORMS
def test_any_request_gets_2xx_or_4xx_and_resolves_nothing(
    examples: int, live: World, portal: anyio.from_thread.BlockingPortal
) -> None:
    counter = HostileCounter()
    answers: dict[int | None, int] = {}

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(method=methods, token=tokens(), head=headers, body=bodies())
    def one(
        method: str, token: tuple[str, int | None], head: list[tuple[str, str]], body: bytes
    ) -> None:
        target = live.path(fill(token[0], live))
        status = portal.call(raw_exchange, live.port, http_request(method, target, body, head))
        counter.add("webhook_http_request")
        answers[status] = answers.get(status, 0) + 1
        assert status is None or 200 <= status < 500, (method, target[:80], head, body[:80], status)

    one()
    check_nothing_resolved(live, portal)
    print(f"answers by status: {answers}")
    # The malformed requests of the next test count too.
    counter.add("webhook_malformed_http", len(fixed_cases(live)))
    record_hostile("webhook_receiver_http", counter.counts, write=examples > 1000)


def _encoded(name: str, data: bytes) -> bytes:
    if name == "gzip":
        return gzip.compress(data)
    if name == "deflate":
        return zlib.compress(data)
    return data


def fixed_cases(w: World) -> list[tuple[str, bytes]]:
    """Malformed HTTP that a library would not send: (name, raw request)."""
    real = w.path(w.tokens[0])
    forged = json.dumps({"status": "success", "id": w.jobs[0].id, "output": ["http://x/y.png"]})
    cases = [
        ("gzip garbage", http_request("POST", real, b"0123456789", [("Content-Encoding", "gzip")])),
        (
            "deflate garbage",
            http_request("POST", real, b"0123456789", [("Content-Encoding", "deflate")]),
        ),
        ("brotli", http_request("POST", real, b"0123456789", [("Content-Encoding", "br")])),
        ("unknown encoding", http_request("POST", real, b"{}", [("Content-Encoding", "zz")])),
        (
            "gzip forged",
            http_request(
                "POST", real, _encoded("gzip", forged.encode()), [("Content-Encoding", "gzip")]
            ),
        ),
        (
            "gzip bomb",
            http_request(
                "POST",
                real,
                _encoded("gzip", b"{" + b" " * 20_000_000 + b"}"),
                [("Content-Encoding", "gzip")],
            ),
        ),
        (
            "bad chunk size",
            http_request(
                "POST",
                real,
                b"ZZ\r\nabc\r\n0\r\n\r\n",
                [("Transfer-Encoding", "chunked")],
                content_length=False,
            ),
        ),
        (
            "chunked forged",
            http_request(
                "POST",
                real,
                f"{len(forged):x}\r\n{forged}\r\n0\r\n\r\n".encode(),
                [("Transfer-Encoding", "chunked")],
                content_length=False,
            ),
        ),
        (
            "chunked and length",
            http_request("POST", real, b"2\r\n{}\r\n0\r\n\r\n", [("Transfer-Encoding", "chunked")]),
        ),
        (
            "two lengths",
            http_request("POST", real, b"{}", [("Content-Length", "5")]),
        ),
        (
            "negative length",
            http_request("POST", real, b"", [("Content-Length", "-1")], content_length=False),
        ),
        (
            "huge length",
            http_request(
                "POST",
                real,
                b"{}",
                [("Content-Length", "99999999999999999999")],
                content_length=False,
            ),
        ),
        ("huge header", http_request("POST", real, b"{}", [("X-Pad", "a" * 200_000)])),
        ("many headers", http_request("POST", real, b"{}", [(f"X-{i}", "v") for i in range(500)])),
        ("NUL in target", http_request("POST", real + "\x00", b"{}")),
        ("absolute target", http_request("POST", "http://evil.invalid" + real, forged.encode())),
        ("asterisk target", http_request("OPTIONS", "*", b"")),
        ("no version", f"POST {real}\r\n\r\n".encode()),
        ("bad version", f"POST {real} HTTP/9.9\r\nHost: x\r\n\r\n".encode()),
        ("lowercase method", http_request("post", real, forged.encode())),
        ("bare LF", f"POST {real} HTTP/1.1\nHost: x\nContent-Length: 2\n\n{{}}".encode()),
        ("garbage", secrets.token_bytes(512)),
        ("expect continue", http_request("POST", real, b"{}", [("Expect", "100-continue")])),
        ("expect other", http_request("POST", real, b"{}", [("Expect", "teapot")])),
        ("json forged utf16", http_request("POST", real, forged.encode("utf-16"))),
        ("deep json", http_request("POST", real, b"[" * 100_000 + b"]" * 100_000)),
        ("huge int", http_request("POST", real, b'{"status": 1' + b"0" * 10_000 + b"}")),
    ]
    return cases


def test_malformed_http_never_gets_a_5xx(
    live: World, portal: anyio.from_thread.BlockingPortal
) -> None:
    outcomes: dict[str, int | None] = {}
    for name, raw in fixed_cases(live):
        outcomes[name] = portal.call(raw_exchange, live.port, raw)
    bad = {
        name: status for name, status in outcomes.items() if status is not None and status >= 500
    }
    assert bad == {}, outcomes
    print(f"answers: {outcomes}")
    check_nothing_resolved(live, portal)
