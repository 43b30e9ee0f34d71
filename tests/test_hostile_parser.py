"""Hostile answers: whatever the service (or a proxy, or an attacker in its place) sends back, no
exception escapes the client but the library's own.

test_wire.py fuzzes ``parse_response`` with protocol-shaped JSON and short byte strings. Here:

- the parser gets wider input: any status code, any headers (``Retry-After`` as nonsense, as
  dates in year 1 or 9999), JSON with NaN, infinities, 4,000-digit numbers, lone surrogates and
  nesting near the decoder's limit, valid answers with one field replaced by anything, and
  non-UTF-8 encodings;
- a raw TCP server answers real client calls (``submit`` and ``fetch``) with whatever bytes the
  example says: broken status lines, lying Content-Length, broken chunked or gzip encodings,
  duplicate headers, truncated bodies. The client must come back with a result, a job, or a
  DreamboothError, and its background poller must survive the fetches it makes on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import math
import string
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.from_thread
import attrs
import pytest
from _chaos_fixtures import HostileCounter, record_hostile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from replay_server import ReplayServer, Reply, fast_client_options

import dreambooth_async as dba
from dreambooth_async._errors import error_from_response
from dreambooth_async._wire import parse_json, parse_response

# The client under test runs in a portal thread, and its poller draws jitter from the global
# `random` while hypothesis draws examples in this one: hypothesis takes that for a strategy
# using `random` and warns. It is not one.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
FORMS = pytest.mark.parametrize(
    "examples",
    [pytest.param(300, id="quick"), pytest.param(6000, id="slow", marks=pytest.mark.slow)],
)
FUZZ = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "database": None,
}

# --- bodies -----------------------------------------------------------------------------------

leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**4000, -(10**4000), 2**63, -1, 0]),
    st.floats(),  # NaN and infinities included: json.dumps writes them as bare words
    st.text(max_size=30),
    st.sampled_from(["\ud800", "\x00", "success", "processing", "failed", "error", "x" * 5000]),
)
anything = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=15,
)
TEMPLATES: list[dict[str, Any]] = [
    {
        "status": "success",
        "generationTime": 1.5,
        "id": 12,
        "output": ["https://cdn.example/a.png"],
        "meta": {"seed": 1, "W": 512},
        "nsfw_content_detected": ["no"],
        "proxy_links": ["https://p.example/a.png"],
    },
    {
        "status": "processing",
        "eta": 3.2,
        "id": 13,
        "fetch_result": "https://api.example/api/v3/dreambooth/fetch/13",
        "future_links": ["https://cdn.example/b.png"],
        "messege": "Try to fetch request after given estimated time",
        "output": [],
    },
    {"status": "failed", "id": "", "message": "Failed, Try Again", "output": ""},
    {"status": "error", "message": {"prompt": ["The prompt field is required."]}},
    {"status": "error", "message": "Rate limit exceeded. Maximum 5 queued requests allowed."},
    {"status": "error", "message": "Rate limit exceeded", "tips": "wait for 30 seconds"},
    {"status": "ok", "queue_num": 3},
]


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    body = dict(draw(st.sampled_from(TEMPLATES)))
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from([*body, "status", "id", "eta", "retry_after", "x"]))
        if draw(st.booleans()):
            body[field] = draw(anything)
        else:
            body.pop(field, None)
    return body


def deep(depth: int, opener: bytes = b"[") -> bytes:
    closer = b"]" if opener == b"[" else b"}"
    inner = b"" if opener == b"[" else b'"a":1'
    prefix = opener if opener == b"[" else b'{"a":'
    if opener == b"{":
        return prefix * depth + b"1" + closer * depth
    return prefix * depth + inner + closer * depth


def dumps(value: Any) -> bytes:
    try:
        return json.dumps(value).encode()
    except (ValueError, RecursionError):
        return b"{}"


bodies = st.one_of(
    st.sampled_from(TEMPLATES).map(dumps),
    st.sampled_from(TEMPLATES).map(dumps),
    anything.map(dumps),
    mutated().map(dumps),
    st.binary(max_size=200),
    st.integers(1, 3000).map(deep),
    st.integers(1, 3000).map(lambda n: deep(n, b"{")),
    mutated().map(lambda b: json.dumps(b).encode("utf-16")),
    mutated().map(lambda b: b"\xef\xbb\xbf" + dumps(b)),
    mutated().map(lambda b: dumps(b)[: max(1, len(dumps(b)) // 2)]),  # cut short
    st.sampled_from([b"", b" ", b"null", b"[]", b'"x"', b"<html><title>502</title></html>"]),
)
retry_after = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        [
            "1e400",
            "-5",
            "nan",
            "inf",
            "  5 ",
            "5, 6",
            "Mon, 01 Jan 0001 00:00:00 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Wed, 32 Oct 2015 25:61:00 XYZ",
            "0x10",
            "١٢",  # Arabic-Indic digits: float() takes them
        ]
    ),
)
header_maps = st.dictionaries(
    st.sampled_from(["Retry-After", "retry-after", "Content-Type", "X-Other"]),
    retry_after,
    max_size=3,
)


def check(answer_or_error: Any) -> None:
    if isinstance(answer_or_error, dba.DreamboothError):
        str(answer_or_error), repr(answer_or_error)
        retry = getattr(answer_or_error, "retry_after", None)
        assert retry is None or (math.isfinite(retry) and retry >= 0), retry
        return
    answer = answer_or_error
    assert isinstance(answer, dba.GenerationResult | dba.Processing), type(answer)
    assert answer.id is None or (isinstance(answer.id, str) and answer.id.strip())
    if isinstance(answer, dba.GenerationResult):
        assert all(isinstance(url, str) for url in answer.output)
        assert answer.seed is None or isinstance(answer.seed, int)  # the batch reads it
    else:
        assert answer.eta is None or (math.isfinite(answer.eta) and answer.eta >= 0)


@FORMS
def test_parser_takes_anything(examples: int) -> None:
    counter = HostileCounter()

    @settings(max_examples=examples, **FUZZ)
    @given(status=st.integers(-5, 1200), head=header_maps, body=bodies)
    def one(status: int, head: dict[str, str], body: bytes) -> None:
        counter.add("response_parse")
        try:
            answer: Any = parse_response(status, head, body)
        except dba.DreamboothError as error:
            answer = error
        check(answer)
        try:
            parse_json(status, head, body)
        except dba.DreamboothError as error:
            check(error)
        error = error_from_response(status, head, body, None)
        assert error is None or isinstance(error, dba.DreamboothError)

    one()
    record_hostile("response_parser", counter.counts, write=examples > 1000)


# --- over the wire ----------------------------------------------------------------------------


@attrs.define
class RawServer:
    """Answers every request with ``response`` (raw bytes), then closes the connection."""

    response: bytes = b"HTTP/1.1 204 No Content\r\n\r\n"
    requests: int = 0
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            await reader.readexactly(length)
            self.requests += 1
            writer.write(self.response)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@attrs.define
class Wire:
    server: RawServer
    client: dba.DreamboothClient


@contextlib.asynccontextmanager
async def wire() -> AsyncIterator[Wire]:
    raw = RawServer()
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    raw.port = server.sockets[0].getsockname()[1]
    client = dba.DreamboothClient(
        "sk-hostile-parser-key",
        base_url=f"http://127.0.0.1:{raw.port}",
        retry=dba.RetryPolicy(max_retries=0),
        timeout=dba.Timeouts(connect=1.0, request=1.0, total=2.0),
        poll=dba.PollPolicy(min_interval=0.001, initial_interval=0.01, max_interval=0.05),
    )
    try:
        async with server, client:
            yield Wire(raw, client)
    finally:
        server.close()


@pytest.fixture(scope="module")
def portal() -> Iterator[anyio.from_thread.BlockingPortal]:
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        yield portal


@pytest.fixture(scope="module")
def live(portal: anyio.from_thread.BlockingPortal) -> Iterator[Wire]:
    with portal.wrap_async_context_manager(wire()) as w:
        yield w


status_lines = st.one_of(
    st.sampled_from([200, 200, 200, 201, 400, 401, 403, 404, 429, 500, 502, 503, 504]).map(
        lambda code: f"HTTP/1.1 {code} Reason".encode()
    ),
    st.integers(100, 999).map(lambda code: f"HTTP/1.1 {code} X".encode()),
    st.sampled_from(
        [
            b"HTTP/1.0 200 OK",
            b"HTTP/1.1 200",
            b"HTTP/2 200 OK",
            b"HTTP/1.1 -1 Minus",
            b"HTTP/1.1 20 Short",
            b"HTTP/1.1 OK 200",
            b"ICY 200 OK",
            b"garbage",
            b"",
            b"HTTP/1.1 200 \xff\xfe",
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://evil.invalid/",
        ]
    ),
)
plain_header_value = st.text(
    alphabet=string.ascii_letters + string.digits + " ;=/-_.,", max_size=30
)
extra_headers = st.lists(
    st.tuples(
        st.sampled_from(
            ["Content-Type", "Retry-After", "Set-Cookie", "X-Any", "Connection", "Content-Type"]
        ),
        st.sampled_from(
            ["application/json", "text/html", "application/json; charset=utf-16", "image/png"]
        )
        | retry_after.filter(lambda v: "\r" not in v and "\n" not in v)
        | plain_header_value,
    ),
    max_size=3,
)
framings = st.sampled_from(
    [
        "length",
        "length",
        "none",
        "short",
        "long",
        "chunked",
        "bad-chunked",
        "gzip",
        "bad-gzip",
        "deflate",
        "br",
        "two-lengths",
        "bad-length",
    ]
)


def frame(status: bytes, headers: list[tuple[str, str]], body: bytes, framing: str) -> bytes:
    lines = [status]
    lines += [f"{name}: {value}".encode("latin-1", "replace") for name, value in headers]
    if framing == "gzip":
        body = gzip.compress(body)
        lines.append(b"Content-Encoding: gzip")
    elif framing == "bad-gzip":
        lines.append(b"Content-Encoding: gzip")
    elif framing == "deflate":
        body = zlib.compress(body)
        lines.append(b"Content-Encoding: deflate")
    elif framing == "br":
        lines.append(b"Content-Encoding: br")
    if framing in ("length", "gzip", "bad-gzip", "deflate", "br"):
        lines.append(f"Content-Length: {len(body)}".encode())
    elif framing == "short":
        lines.append(f"Content-Length: {len(body) + 10}".encode())
    elif framing == "long":
        lines.append(f"Content-Length: {max(0, len(body) - 3)}".encode())
    elif framing == "two-lengths":
        lines += [f"Content-Length: {len(body)}".encode(), b"Content-Length: 1"]
    elif framing == "bad-length":
        lines.append(b"Content-Length: lots")
    elif framing in ("chunked", "bad-chunked"):
        lines.append(b"Transfer-Encoding: chunked")
        if framing == "chunked":
            body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        else:
            body = b"zz\r\n" + body
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@FORMS
def test_any_bytes_on_the_wire(
    examples: int, live: Wire, portal: anyio.from_thread.BlockingPortal
) -> None:
    counter = HostileCounter()
    outcomes: dict[str, int] = {}
    request = dba.Text2Img(model_id="m", prompt="a hostile answer")

    async def call(kind: str) -> Any:
        try:
            if kind == "submit":
                # The hostile server's jobs never end, so in the client's slot window they
                # would hold every slot; this test is about parsing answers, not slots.
                return await live.client.submit(request, wait_for_slot=False)
            return await live.client.fetch("123")
        except dba.DreamboothError as error:
            return error

    @settings(max_examples=examples, **FUZZ)
    @given(
        status=status_lines,
        head=extra_headers,
        body=bodies,
        framing=framings,
        kind=st.sampled_from(["submit", "fetch"]),
    )
    def one(
        status: bytes, head: list[tuple[str, str]], body: bytes, framing: str, kind: str
    ) -> None:
        counter.add(f"http_answer_to_{kind}")
        live.server.response = frame(status, head, body, framing)
        outcome = portal.call(call, kind)
        if isinstance(outcome, dba.Job):
            outcomes["job"] = outcomes.get("job", 0) + 1
            return
        check(outcome)
        name = f"{type(outcome).__name__}/{framing}"
        outcomes[name] = outcomes.get(name, 0) + 1

    one()
    print(f"outcomes: {outcomes}")
    # The poller, fetching the jobs those answers created, met the same bytes and survived.
    task = live.client._poller_task
    assert task is not None and not task.done()
    # The fixed hostile ids below count too.
    counter.add("hostile_job_id", len(HOSTILE_IDS) + 1)
    record_hostile("http_answers", counter.counts, write=examples > 1000)


HOSTILE_IDS = ["\ud800", "a\udfffb", "\x00", "../../x", "é" * 3000]


@pytest.mark.anyio
@pytest.mark.parametrize("job_id", HOSTILE_IDS)
async def test_a_hostile_job_id_costs_that_job_at_most_never_the_poller(job_id: str) -> None:
    # The id comes back JSON-escaped, as any encoder writes a lone surrogate.
    odd = json.dumps({"status": "processing", "id": job_id, "eta": 0.01}).encode()
    async with ReplayServer() as server:
        server.script(
            "/api/v3/dreambooth",
            Reply.raw(odd, content_type="application/json"),
            Reply.json({"status": "processing", "id": 6, "eta": 0.01}),
        )
        server.script(
            "/api/v3/dreambooth/fetch/6", Reply.json({"status": "success", "id": 6, "output": []})
        )
        async with dba.DreamboothClient(base_url=server.url, **fast_client_options()) as client:
            try:
                job = await client.submit(dba.Text2Img(model_id="m", prompt="odd"))
            except dba.DreamboothError:
                pass
            else:
                with anyio.fail_after(10), contextlib.suppress(dba.DreamboothError):
                    await job.wait()
            # Whatever became of that one, the poller still serves the next job.
            other = await client.submit(dba.Text2Img(model_id="m", prompt="plain"))
            with anyio.fail_after(10):
                assert (await other.wait()).id == "6"
            task = client._poller_task
            assert task is not None and not task.done()


@pytest.mark.anyio
async def test_an_id_no_url_can_carry_fails_its_job_not_the_poller() -> None:
    # Attached by id (from a manifest, say): the fetch cannot even be built.
    async with ReplayServer() as server:
        server.script(
            "/api/v3/dreambooth/fetch/7", Reply.json({"status": "success", "id": 7, "output": []})
        )
        async with dba.DreamboothClient(base_url=server.url, **fast_client_options()) as client:
            with anyio.fail_after(10), pytest.raises(dba.DreamboothError, match="UnicodeEncode"):
                await client.wait_for("\ud800")
            with anyio.fail_after(10):
                assert (await client.wait_for(7)).id == "7"


@pytest.mark.parametrize("field", ["retry_after", "eta", "generationTime", "queue_num"])
@pytest.mark.parametrize("status", [200, 429, 500, 503])
def test_numbers_past_a_float_are_no_numbers(field: str, status: int) -> None:
    # 10**400 is a valid JSON integer that float() cannot hold (OverflowError, not ValueError).
    for base in TEMPLATES:
        body = json.dumps({**base, field: 10**400}).encode()
        try:
            answer: Any = parse_response(status, {"Retry-After": str(10**400)}, body)
        except dba.DreamboothError as error:
            answer = error
        check(answer)


@pytest.mark.parametrize(
    "body",
    [
        b'{"status": "success", "id": 1, "output": [], "meta": {"seed": Infinity}}',
        b'{"status": "success", "id": 1, "output": [], "meta": {"seed": -Infinity}}',
        b'{"status": "success", "id": 1, "output": [], "meta": {"seed": NaN}}',
        b'{"status": "error", "message": "Rate limit exceeded", "tips": "wait for '
        + b"9" * 400
        + b' seconds"}',
        b'{"status": "error", "message": "wait 1e999 seconds", "retry_after": "1e999"}',
    ],
)
def test_numbers_json_allows_but_python_cannot_use(body: bytes) -> None:
    try:
        answer: Any = parse_response(200, {}, body)
    except dba.DreamboothError as error:
        answer = error
    check(answer)
