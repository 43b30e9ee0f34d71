"""A webhook receiver that lets the service's completion calls resolve jobs early.

The logic (tokens, verification, answers) is framework-neutral (:mod:`._webhook_core`); this
module adds the ways to serve it: its own aiohttp server, aiohttp routes for an application that
already serves, or an ASGI application (:mod:`._webhook_asgi`) for FastAPI, Starlette or any
ASGI server.
"""

from __future__ import annotations

from aiohttp import web

from ._webhook_asgi import WebhookASGI
from ._webhook_core import JobHost, UnreadableBody, WebhookCore, WebhookStats

__all__ = ["WebhookReceiver", "WebhookStats"]


class WebhookReceiver(WebhookCore):
    """Receives the service's webhook calls on ``path/<token>``.

    Either let it serve itself (``host``/``port``; the client starts and stops it), or pass
    ``serve=False`` and a ``public_url``, and mount it in your own application: :meth:`routes`
    in aiohttp, :meth:`asgi` in FastAPI or Starlette (``app.mount(receiver.path,
    receiver.asgi())``). ``public_url`` is the address the service can reach this receiver at
    (default: the one it listens on).

    Every way of serving it answers alike: 404 for a URL no submission was given, 413 for a
    body over ``max_body_bytes``, 400 for one that is not a JSON object with a ``status`` (or
    that names another job), 200 otherwise; a delivery is only a hint that makes the client
    fetch the job, and the fetch is what resolves it.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        public_url: str | None = None,
        path: str = "/dreambooth-webhook",
        max_body_bytes: int = 256 * 1024,
        serve: bool = True,
    ) -> None:
        super().__init__(path=path, max_body_bytes=max_body_bytes, public_url=public_url)
        self.host = host
        self.port = port
        self._serve = serve
        self._runner: web.AppRunner | None = None
        self._asgi: WebhookASGI | None = None

    def routes(self) -> list[web.RouteDef]:
        """The route to add to an aiohttp application that already serves elsewhere."""
        return [web.post(self.path + "/{token}", self._handle)]

    def asgi(self) -> WebhookASGI:
        """An ASGI application answering the webhook calls, to mount at :attr:`path`:
        ``app.mount(receiver.path, receiver.asgi())`` in FastAPI or Starlette. It needs no
        framework (raw ASGI), and may be mounted before the client starts: until then every
        URL is unknown (404)."""
        if self._asgi is None:
            self._asgi = WebhookASGI(self)
        return self._asgi

    async def start(self, poller: JobHost) -> None:
        """Called by the client: resolve deliveries through its poller, and serve, if serving."""
        self.attach_host(poller)
        if not self._serve:
            if self.public_url is None:
                raise ValueError("WebhookReceiver(serve=False) needs public_url")
            return
        app = web.Application(client_max_size=self.max_body_bytes)
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = self._runner.addresses
        port = sockets[0][1] if sockets else self.port
        self.port = port
        if self.public_url is None:
            self.public_url = f"http://{self.host}:{port}"

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        async def read(limit: int) -> bytes:
            # read(n) returns what is buffered, possibly less than the whole body: loop until
            # the end, or until the body is known to be too large.
            chunks: list[bytes] = []
            size = 0
            try:
                while size <= limit:
                    chunk = await request.content.read(limit + 1 - size)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
            except (ValueError, OSError, web.RequestPayloadError) as error:
                raise UnreadableBody(str(error)) from None
            return b"".join(chunks)

        answer = await self.deliver(request.match_info["token"], request.content_length, read)
        return web.json_response(answer.body, status=answer.status)
