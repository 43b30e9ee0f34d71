"""A webhook receiver that lets the service's completion calls resolve jobs early.

The service signs nothing, and it may deliver a webhook twice or never. So:

* each submission gets its own unguessable token in the webhook URL; a call to any other URL is
  answered 404 and costs nothing;
* a delivery is treated as a *hint*, never as the result: it makes the poller fetch that job
  now, and the result comes from the fetch (the service's word). A forged delivery to a valid
  token therefore costs one extra fetch and cannot complete a job with made-up data;
* duplicates are answered 200 and ignored; polling goes on at a slower pace as the fallback for
  deliveries that never come.
"""

from __future__ import annotations

import asyncio
import collections
import json
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
import attrs
from aiohttp import web

from ._transport import logger

if TYPE_CHECKING:
    from ._models import GenerationResult
    from ._poller import Poller

__all__ = ["WebhookReceiver", "WebhookStats"]


@attrs.define
class WebhookStats:
    """Counters of what the receiver was sent."""

    accepted: int = 0
    duplicates: int = 0
    unknown: int = 0
    rejected: int = 0


class WebhookReceiver:
    """Receives the service's webhook calls on ``path/<token>``.

    Either let it serve itself (``host``/``port``; the client starts and stops it), or mount
    :meth:`routes` in your own aiohttp application and pass ``serve=False``. ``public_url`` is
    the address the service can reach this receiver at (default: the one it listens on).
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
        self.host = host
        self.port = port
        self.public_url = public_url.rstrip("/") if public_url else None
        self.path = "/" + path.strip("/")
        self.max_body_bytes = max_body_bytes
        self.stats = WebhookStats()
        self._serve = serve
        self._runner: web.AppRunner | None = None
        self._poller: Poller | None = None
        self._jobs: dict[str, str | None] = {}  # token -> job id (None until the id is known)
        self._early: set[str] = set()  # tokens delivered before their job id was known
        # Job ids that deliveries revealed for tokens whose submission went unanswered.
        self._revealed: dict[str, str] = {}
        self._delivered: set[str] = set()
        self._jobs_token: dict[str, str] = {}
        self._finished: collections.deque[str] = collections.deque(maxlen=10_000)
        self._finished_set: set[str] = set()
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<WebhookReceiver url={self.public_url!r} pending={len(self._jobs)}>"

    async def wait_until(self, predicate: Callable[[WebhookStats], bool]) -> None:
        """Wait until ``predicate(self.stats)`` holds (checked after every delivery)."""
        while not predicate(self.stats):
            self._changed.clear()
            await self._changed.wait()

    def routes(self) -> list[web.RouteDef]:
        """The route to add to an aiohttp application that already serves elsewhere."""
        return [web.post(self.path + "/{token}", self._handle)]

    async def start(self, poller: Poller) -> None:
        """Called by the client: remember the poller and serve, if serving."""
        self._poller = poller
        poller.subscribe(self._job_ended)
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

    # --- bookkeeping used by the client -------------------------------------------------------

    def new_url(self) -> tuple[str, str]:
        """A fresh token and the webhook URL that carries it."""
        token = secrets.token_urlsafe(24)
        self._jobs[token] = None
        return token, f"{self.public_url}{self.path}/{token}"

    def bind(self, token: str, job_id: str) -> None:
        """The submission carrying ``token`` became job ``job_id``."""
        if token not in self._jobs:
            return
        self._jobs[token] = job_id
        self._jobs_token[job_id] = token
        if token in self._early and self._poller is not None:
            self._early.discard(token)
            self._poller.nudge(job_id)

    async def reveal(self, token: str, timeout: float) -> str | None:
        """The job id a delivery for ``token`` names, waiting up to ``timeout`` seconds for one.

        For a submission whose answer was lost (it may or may not have been accepted): the
        service's webhook call is then the only way to learn its job id. The token is
        forgotten afterwards.
        """
        try:
            with anyio.move_on_after(timeout):
                while token in self._jobs and token not in self._revealed:
                    self._changed.clear()
                    await self._changed.wait()
            return self._revealed.get(token)
        finally:
            self.forget(token)

    def forget(self, token: str) -> None:
        """The submission carrying ``token`` did not become a pending job."""
        job_id = self._jobs.pop(token, None)
        self._revealed.pop(token, None)
        self._early.discard(token)
        self._delivered.discard(token)
        if job_id is not None:
            self._jobs_token.pop(job_id, None)

    def _job_ended(
        self, job_id: str, _result: GenerationResult | None, _error: BaseException | None
    ) -> None:
        token = self._jobs_token.pop(job_id, None)
        if token is None:
            return
        self._jobs.pop(token, None)
        self._delivered.discard(token)
        if len(self._finished) == self._finished.maxlen:
            self._finished_set.discard(self._finished[0])
        self._finished.append(token)
        self._finished_set.add(token)

    # --- the endpoint -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            return await self._receive(request)
        finally:
            self._changed.set()

    async def _receive(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if token in self._finished_set:
            self.stats.duplicates += 1
            return web.json_response({"status": "duplicate"})
        if token not in self._jobs:
            self.stats.unknown += 1
            return web.json_response({"status": "unknown"}, status=404)
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            self.stats.rejected += 1
            return web.json_response({"status": "too large"}, status=413)
        try:
            raw = await request.content.read(self.max_body_bytes + 1)
        except (ValueError, OSError, web.RequestPayloadError):
            # RequestPayloadError: a body that does not decode (garbage under
            # Content-Encoding: gzip, say). The sender's fault: a 400, not a crash (500).
            self.stats.rejected += 1
            return web.json_response({"status": "unreadable"}, status=400)
        if len(raw) > self.max_body_bytes:
            self.stats.rejected += 1
            return web.json_response({"status": "too large"}, status=413)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            body = None
        if not isinstance(body, dict) or "status" not in body:
            self.stats.rejected += 1
            return web.json_response({"status": "malformed"}, status=400)
        if token in self._delivered:
            self.stats.duplicates += 1
            return web.json_response({"status": "duplicate"})
        self._delivered.add(token)
        job_id = self._jobs[token]
        self.stats.accepted += 1
        if job_id is None:
            self._early.add(token)  # arrived before the submission's answer; nudge on bind
            revealed = body.get("id")
            if isinstance(revealed, int | str) and not isinstance(revealed, bool):
                self._revealed[token] = str(revealed).strip()
        elif self._poller is not None:
            # A hint only: the poller fetches now and the fetch is what resolves the job.
            self._poller.nudge(job_id)
        logger.debug("webhook delivery for job %s (%s)", job_id, body.get("status"))
        return web.json_response({"status": "ok"})
