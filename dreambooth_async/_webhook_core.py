"""The webhook receiver's logic, free of any web framework: which URL belongs to which job, and
what a delivery to it is answered and does. The aiohttp routes (:mod:`._webhooks`) and the ASGI
application (:mod:`._webhook_asgi`) are thin adapters that read a request into
:meth:`WebhookCore.deliver` and write its :class:`Answer` back.

The service signs nothing, and it may deliver a webhook twice or never. So:

* each submission gets its own unguessable token in the webhook URL; a call to any other URL is
  answered 404 and costs nothing;
* a delivery is a *hint*, never the result: it makes the poller fetch that job now, and the
  result comes from the fetch (the service's word). A forged delivery to a valid token
  therefore costs at most one fetch and cannot complete a job with made-up data;
* a delivery that does not verify does not use the URL up: one whose body names another job is
  refused (400) without a fetch, and one whose fetch finds the job still running leaves the URL
  open for the genuine delivery that follows;
* duplicates are answered 200 and ignored; polling goes on at a slower pace as the fallback for
  deliveries that never come.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import attrs

if TYPE_CHECKING:
    from ._models import GenerationResult

__all__ = ["Answer", "BodyReader", "JobHost", "UnreadableBody", "WebhookCore", "WebhookStats"]

logger = logging.getLogger("dreambooth_async")

#: A job ended: ``(job_id, result, error)``.
EndListener = Callable[[str, "GenerationResult | None", "BaseException | None"], None]

#: Reads the request body: at most the given number of bytes (more only to show it is larger);
#: raises :class:`UnreadableBody` when the body cannot be read or decoded.
BodyReader = Callable[[int], Awaitable[bytes]]

#: Job ids a delivery named before its job's id was known, kept per token (a forger with the
#: URL could otherwise grow the list without end).
_EARLY_IDS = 4


class JobHost(Protocol):
    """What the receiver needs of the poller that owns the jobs."""

    def hint(self, job_id: str) -> bool:
        """A delivery says the job ended: fetch it now (False if it is not pending)."""
        ...

    def subscribe(self, callback: EndListener) -> None:
        """Call ``callback`` when a job ends."""
        ...

    def on_unconfirmed(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(job_id)`` when the fetch a hint caused finds the job running."""
        ...


class UnreadableBody(Exception):
    """The request body could not be read (the connection broke, or it does not decode)."""


@attrs.define
class WebhookStats:
    """Counters of what the receiver was sent.

    ``accepted``: deliveries believed as hints (each caused a fetch); ``duplicates``: deliveries
    for a job already ended or already being fetched; ``unknown``: calls to URLs no submission
    was given; ``rejected``: bodies refused (too large, unreadable, not JSON, naming another
    job); ``unverified``: accepted deliveries whose fetch found the job still running (their
    URL stays open).
    """

    accepted: int = 0
    duplicates: int = 0
    unknown: int = 0
    rejected: int = 0
    unverified: int = 0


@attrs.frozen
class Answer:
    """What to answer a delivery: the HTTP status and a JSON body."""

    status: int
    body: dict[str, Any]

    def encoded(self) -> bytes:
        """The body as JSON bytes."""
        return json.dumps(self.body).encode()


_DUPLICATE = Answer(200, {"status": "duplicate"})
_UNKNOWN = Answer(404, {"status": "unknown"})
_TOO_LARGE = Answer(413, {"status": "too large"})
_UNREADABLE = Answer(400, {"status": "unreadable"})
_MALFORMED = Answer(400, {"status": "malformed"})
_MISMATCH = Answer(400, {"status": "mismatch"})
_OK = Answer(200, {"status": "ok"})


def _named_id(body: dict[str, Any]) -> str | None:
    """The job id a delivery's body names, as text (None when it names none)."""
    value = body.get("id")
    if isinstance(value, int | str) and not isinstance(value, bool):
        text = str(value).strip()
        return text or None
    return None


class WebhookCore:
    """The receiver's bookkeeping and its answer to each delivery (no web framework)."""

    def __init__(self, *, path: str, max_body_bytes: int, public_url: str | None) -> None:
        self.public_url = public_url.rstrip("/") if public_url else None
        self.path = "/" + path.strip("/")
        self.max_body_bytes = max_body_bytes
        self.stats = WebhookStats()
        self._host: JobHost | None = None
        self._jobs: dict[str, str | None] = {}  # token -> job id (None until the id is known)
        # Tokens delivered to before their job id was known -> the ids those bodies named.
        self._early: dict[str, list[str | None]] = {}
        # Job ids that deliveries revealed for tokens whose submission went unanswered.
        self._revealed: dict[str, str] = {}
        # Tokens whose delivery is being checked by a fetch: one fetch per delivery at a time.
        self._verifying: set[str] = set()
        self._jobs_token: dict[str, str] = {}
        self._finished: collections.deque[str] = collections.deque(maxlen=10_000)
        self._finished_set: set[str] = set()
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} url={self.public_url!r} pending={len(self._jobs)}>"

    async def wait_until(self, predicate: Callable[[WebhookStats], bool]) -> None:
        """Wait until ``predicate(self.stats)`` holds (checked after every delivery)."""
        while not predicate(self.stats):
            self._changed.clear()
            await self._changed.wait()

    def attach_host(self, host: JobHost) -> None:
        """Resolve deliveries through ``host`` (the client's poller)."""
        self._host = host
        host.subscribe(self._job_ended)
        host.on_unconfirmed(self._unconfirmed)

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
        named = self._early.pop(token, None)
        if named is None:
            return
        if job_id in named or None in named:
            self._hint(token, job_id)
        else:
            # Every early delivery named another job: none of them was this job's.
            self.stats.rejected += 1

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
        self._early.pop(token, None)
        self._verifying.discard(token)
        if job_id is not None:
            self._jobs_token.pop(job_id, None)

    def _job_ended(
        self, job_id: str, _result: GenerationResult | None, _error: BaseException | None
    ) -> None:
        token = self._jobs_token.pop(job_id, None)
        if token is None:
            return
        self._jobs.pop(token, None)
        self._verifying.discard(token)
        if len(self._finished) == self._finished.maxlen:
            self._finished_set.discard(self._finished[0])
        self._finished.append(token)
        self._finished_set.add(token)

    def _unconfirmed(self, job_id: str) -> None:
        """The fetch a delivery caused found the job running: that delivery was not the
        service's (or came early); the next one is believed again."""
        token = self._jobs_token.get(job_id)
        if token is not None and token in self._verifying:
            self._verifying.discard(token)
            self.stats.unverified += 1

    def _hint(self, token: str, job_id: str) -> None:
        self._verifying.add(token)
        if self._host is not None:
            # A hint only: the poller fetches now, and the fetch is what resolves the job.
            self._host.hint(job_id)

    # --- a delivery ---------------------------------------------------------------------------

    async def deliver(self, token: str, declared_length: int | None, read: BodyReader) -> Answer:
        """Answer a delivery to ``{path}/{token}`` whose request declared ``declared_length``
        bytes of body (None: not declared), reading the body with ``read``."""
        try:
            return await self._deliver(token, declared_length, read)
        finally:
            self._changed.set()

    async def _deliver(self, token: str, declared_length: int | None, read: BodyReader) -> Answer:
        if token in self._finished_set:
            self.stats.duplicates += 1
            return _DUPLICATE
        if token not in self._jobs:
            self.stats.unknown += 1
            return _UNKNOWN
        if declared_length is not None and declared_length > self.max_body_bytes:
            self.stats.rejected += 1
            return _TOO_LARGE
        try:
            raw = await read(self.max_body_bytes)
        except UnreadableBody:
            # A broken connection, or a body that does not decode (garbage under
            # Content-Encoding: gzip, say): the sender's fault, a 400, not a crash (500).
            self.stats.rejected += 1
            return _UNREADABLE
        if len(raw) > self.max_body_bytes:
            self.stats.rejected += 1
            return _TOO_LARGE
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            body = None
        if not isinstance(body, dict) or "status" not in body:
            self.stats.rejected += 1
            return _MALFORMED
        if token not in self._jobs:
            # The job ended while the body was being read.
            self.stats.duplicates += 1
            return _DUPLICATE
        job_id = self._jobs[token]
        named = _named_id(body)
        if job_id is not None and named is not None and named != job_id:
            # Not this job's delivery: refused, and the URL stays open for the genuine one.
            self.stats.rejected += 1
            return _MISMATCH
        if token in self._verifying:
            self.stats.duplicates += 1
            return _DUPLICATE
        if job_id is None:
            # Arrived before the submission's answer: the hint waits for bind().
            early = self._early.setdefault(token, [])
            if named in early:
                self.stats.duplicates += 1
                return _DUPLICATE
            if len(early) >= _EARLY_IDS:
                self.stats.rejected += 1
                return _MISMATCH
            early.append(named)
            if named is not None:
                self._revealed.setdefault(token, named)
        else:
            self._hint(token, job_id)
        self.stats.accepted += 1
        logger.debug("webhook delivery for job %s (%s)", job_id, body.get("status"))
        return _OK
