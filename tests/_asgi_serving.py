"""Serving an ASGI application with uvicorn on 127.0.0.1, in the test's own event loop, the way
a deployment runs it (lifespan on). The socket is bound first, so the application can be built
knowing its own public URL (the webhook receiver needs it)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator
from typing import Any

import uvicorn


class _Server(uvicorn.Server):
    """uvicorn's server, telling when it is ready, and leaving the test's signals alone."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@contextlib.contextmanager
def loopback_socket() -> Generator[tuple[socket.socket, str], None, None]:
    """A listening socket on 127.0.0.1 and its URL (``http://127.0.0.1:PORT``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    try:
        yield sock, f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def serving(app: Any, sock: socket.socket) -> AsyncIterator[None]:
    """Serve ``app`` on ``sock`` until the block ends; its lifespan has run when this yields."""
    config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    ready = asyncio.create_task(server.ready.wait())
    try:
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises what stopped it (a lifespan that failed: SystemExit)
            raise RuntimeError("uvicorn stopped before serving")
        yield
    finally:
        ready.cancel()
        server.should_exit = True
        await task
