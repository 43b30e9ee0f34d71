"""A scripted HTTP server for tests: each path answers from a queue of canned replies.

::

    async with ReplayServer() as server:
        server.script("/api/v3/dreambooth", Reply.json({"status": "error", ...}), Reply.drop())
        ...  # point a client at server.url
        assert server.count("/api/v3/dreambooth") == 2

Besides plain answers a reply can misbehave the way networks do: close the connection without
reading the request body, close it after reading the body without answering, or hold the
request until the server closes (for timeouts). Every request that reaches a handler is
recorded (path, decoded JSON body) and counted, so tests can prove how often a call was sent.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import defaultdict, deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Literal, Self

import attrs
from aiohttp import web

Action = Literal["respond", "drop_before_body", "drop_after_body", "slow"]


@attrs.frozen(kw_only=True)
class Reply:
    """One canned answer."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = attrs.field(factory=dict)
    action: Action = "respond"

    @classmethod
    def json(
        cls, payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> Reply:
        return cls(
            status=status,
            body=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
        )

    @classmethod
    def raw(
        cls,
        body: bytes,
        status: int = 200,
        content_type: str = "text/html",
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        return cls(
            status=status, body=body, headers={"Content-Type": content_type, **(headers or {})}
        )

    @classmethod
    def drop_before_body(cls) -> Reply:
        """Close the connection without reading the request body or answering."""
        return cls(action="drop_before_body")

    @classmethod
    def drop_after_body(cls) -> Reply:
        """Read the request body, then close the connection without answering."""
        return cls(action="drop_after_body")

    @classmethod
    def slow(cls) -> Reply:
        """Read the body and hold the request until the server shuts down: the client times out."""
        return cls(action="slow")


@attrs.frozen
class Recorded:
    """A request the server received. ``body`` is None when it was not read or not JSON."""

    path: str
    body: Any
    headers: Mapping[str, str]
    query: str


# What a path with nothing scripted answers: a status no client retries, so a test that
# forgot to script a call fails loudly instead of looping.
UNSCRIPTED = Reply.json({"status": "error", "message": "replay server: nothing scripted"}, 418)


class ReplayServer:
    """An aiohttp server on ``host`` (an ephemeral port) replaying scripted answers per path."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.requests: list[Recorded] = []
        self._queues: dict[str, deque[Reply]] = defaultdict(deque)
        self._defaults: dict[str, Reply] = {}
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:43121``."""
        return f"http://{self.host}:{self.port}"

    def script(self, path: str, *replies: Reply) -> None:
        """Queue ``replies`` for ``path``, answered in order, one per request."""
        self._queues[path].extend(replies)

    def always(self, path: str, reply: Reply) -> None:
        """Answer ``path`` with ``reply`` once its queue is empty."""
        self._defaults[path] = reply

    def count(self, path: str | None = None) -> int:
        """Requests received, for ``path`` or in all."""
        return sum(1 for r in self.requests if path is None or r.path == path)

    def bodies(self, path: str) -> list[Any]:
        return [r.body for r in self.requests if r.path == path]

    def pending(self) -> dict[str, int]:
        """Scripted replies not yet used, per path (a test can assert they were all consumed)."""
        return {path: len(queue) for path, queue in self._queues.items() if queue}

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        queue = self._queues.get(request.path)
        reply = queue.popleft() if queue else self._defaults.get(request.path, UNSCRIPTED)
        headers = dict(request.headers)
        if reply.action == "drop_before_body":
            self.requests.append(Recorded(request.path, None, headers, request.query_string))
            assert request.transport is not None
            request.transport.close()
            return web.Response()  # never written: the transport is gone
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.requests.append(Recorded(request.path, body, headers, request.query_string))
        if reply.action == "drop_after_body":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if reply.action == "slow":
            await self._release.wait()
            return web.Response(status=504)
        return web.Response(status=reply.status, body=reply.body, headers=dict(reply.headers))

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release.set()  # let "slow" handlers finish, so shutdown does not wait for them
        if self._runner is not None:
            await self._runner.cleanup()


@contextmanager
def refused_url(host: str = "127.0.0.1") -> Iterator[str]:
    """A base URL where nothing listens: the port is bound (so nobody else takes it) but not
    listening, so every connection attempt is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        sock.close()


# --- client settings for tests: every wait is milliseconds --------------------------------------

#: Tiny backoff, so a retried call costs milliseconds; Retry-After is capped the same way.
FAST_RETRY_OPTIONS: dict[str, Any] = {
    "max_retries": 3,
    "backoff_base": 0.001,
    "backoff_cap": 0.005,
    "max_retry_after": 0.05,
}


def fast_client_options(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a DreamboothClient that never waits long in a test.

    The replay scripts speak the seed pages' v3 API (``/api/v3/dreambooth``), so the client is
    pinned to it; tests of today's v6/v7 shapes pass ``api_version`` themselves.
    """
    from dreambooth_async import PollPolicy, RetryPolicy, Timeouts

    options: dict[str, Any] = {
        "api_key": "test-key",
        "api_version": "v3",
        "retry": RetryPolicy(**FAST_RETRY_OPTIONS),
        "poll": PollPolicy(
            min_interval=0.001,
            initial_interval=0.005,
            max_interval=0.02,
            job_timeout=10.0,
            explore_every=0,
        ),
        "timeout": Timeouts(connect=2.0, request=5.0, total=10.0),
    }
    options.update(overrides)
    return options
