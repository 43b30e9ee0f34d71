"""The webhook receiver as an ASGI application, written against the raw ASGI interface (no web
framework needed): FastAPI and Starlette mount it with ``app.mount(receiver.path,
receiver.asgi())``, and any ASGI server can run it alone.

It reads ``POST {path}/{token}`` into :meth:`~._webhook_core.WebhookCore.deliver` and writes the
answer back: the same status and JSON body as the aiohttp routes give.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from ._webhook_core import Answer, BodyReader, UnreadableBody

__all__ = ["ASGIReceive", "ASGIScope", "ASGISend", "Deliveries", "WebhookASGI"]

ASGIScope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_NOT_ALLOWED = Answer(405, {"status": "method not allowed"})
_NOT_FOUND = Answer(404, {"status": "unknown"})
_BAD_LENGTH = Answer(400, {"status": "unreadable"})


class Deliveries(Protocol):
    """What the application needs of the receiver."""

    @property
    def path(self) -> str:
        """Where the receiver's URLs live (``/dreambooth-webhook``)."""
        ...

    async def deliver(self, token: str, declared_length: int | None, read: BodyReader) -> Answer:
        """Answer one delivery."""
        ...


def token_of(path: str, prefix: str) -> str | None:
    """The token of a request path: ``{prefix}/{token}`` as the server saw it (Starlette's
    ``Mount`` keeps the whole path; a proxy may put more in front), or ``/{token}`` when a
    framework stripped the prefix already. None for any other path."""
    head, slash, token = path.rpartition("/")
    if not slash or not token:
        return None
    if head == "" or head.endswith(prefix):
        return token
    return None


class WebhookASGI:
    """An ASGI application answering the service's webhook calls for one receiver."""

    def __init__(self, receiver: Deliveries) -> None:
        self._receiver = receiver

    def __repr__(self) -> str:
        return f"<WebhookASGI path={self._receiver.path!r}>"

    async def __call__(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        if scope.get("method") != "POST":
            await _answer(send, _NOT_ALLOWED, allow=True)
            return
        token = token_of(str(scope.get("path", "")), self._receiver.path)
        if token is None:
            await _answer(send, _NOT_FOUND)
            return
        try:
            declared = _content_length(scope)
        except ValueError:
            await _answer(send, _BAD_LENGTH)
            return
        answer = await self._receiver.deliver(token, declared, _reader(receive))
        await _answer(send, answer)


def _content_length(scope: ASGIScope) -> int | None:
    """The declared body length; ValueError when the header is not a number."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            length = int(value)
            if length < 0:
                raise ValueError(length)
            return length
    return None


def _reader(receive: ASGIReceive) -> BodyReader:
    async def read(limit: int) -> bytes:
        """The body, stopping as soon as it holds more than ``limit`` bytes."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message.get("type") == "http.disconnect":
                raise UnreadableBody("the client went away before the body was read")
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > limit or not message.get("more_body", False):
                return b"".join(chunks)

    return read


async def _answer(send: ASGISend, answer: Answer, *, allow: bool = False) -> None:
    body = answer.encoded()
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    if allow:
        headers.append((b"allow", b"POST"))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: ASGIReceive, send: ASGISend) -> None:
    """Served alone (``uvicorn module:app``), the application has nothing to start or stop:
    the client that owns the receiver starts it."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
