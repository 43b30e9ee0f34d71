"""The HTTP layer: one aiohttp session, timeouts, the retry policy, and key redaction.

The retry policy lives in :class:`RetryPolicy` and nowhere else. Its rule for submissions is
the one that keeps users from paying twice: a POST that generates images is retried only when
it provably did not land (the connection was refused, or the service answered 429, 503 or
"queue full"); a timeout or a dropped connection after the body went out is reported instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
import attrs

from . import _backoff
from ._errors import APIError, ClientClosedError, RateLimitError, ServerError, TransportError
from ._telemetry import NO_TELEMETRY, Telemetry

__all__ = ["RetryPolicy", "Timeouts", "Transport", "connect_failure", "logger"]

logger = logging.getLogger("dreambooth_async")

T = TypeVar("T")

#: Called before each retry with (attempt number, the error, the delay in seconds).
RetryHook = Callable[[int, Exception, float], None]


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """When and how long to wait before trying a call again.

    Delays are "full jitter" exponential backoff: uniform in ``[0, min(cap, base * 2**n)]``,
    or the service's ``Retry-After`` (capped at ``max_retry_after``) when it gave one.
    """

    max_retries: int = attrs.field(default=4, validator=attrs.validators.ge(0))
    backoff_base: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    backoff_cap: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    max_retry_after: float = attrs.field(default=120.0, validator=attrs.validators.ge(0))
    #: Retry "queue full" / spam-filter answers. The batch scheduler turns this off and adapts.
    retry_rate_limited: bool = True
    #: Retry "queue full" answers here (with ``retry_rate_limited``); the client's slot window
    #: turns this off for the submissions that wait their turn in it, and waits for room itself.
    retry_queue_full: bool = True

    def should_retry(self, error: Exception, *, idempotent: bool) -> bool:
        """True when retrying ``error`` cannot make the service run a submission twice."""
        if isinstance(error, RateLimitError):
            return self.retry_rate_limited and (self.retry_queue_full or not error.queue_full)
        if isinstance(error, TransportError | ServerError):
            return idempotent or not error.may_have_landed
        return False

    def delay(self, attempt: int, error: Exception) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return _backoff.retry_after(retry_after, cap=self.max_retry_after)
        return _backoff.exponential(attempt, base=self.backoff_base, cap=self.backoff_cap)


@attrs.frozen(kw_only=True)
class Timeouts:
    """Seconds. ``connect``: to open a connection; ``request``: one HTTP exchange;
    ``total``: one call including its retries (None: no bound beyond the retries')."""

    # Zero would mean "no timeout" to aiohttp: refuse it rather than wait forever.
    connect: float = attrs.field(default=10.0, validator=attrs.validators.gt(0.0))
    request: float = attrs.field(default=60.0, validator=attrs.validators.gt(0.0))
    total: float | None = attrs.field(default=300.0)

    @total.validator
    def _check_total(self, _attr: attrs.Attribute[float | None], value: float | None) -> None:
        if value is not None and not value > 0:
            raise ValueError(f"total must be None or > 0, not {value!r}")


class _Redactor:
    """Replaces every API key in any text meant for logs or error messages."""

    def __init__(self, secret: str | Sequence[str]) -> None:
        secrets = [secret] if isinstance(secret, str) else list(secret)
        # Longest first: a key that contains another is masked whole, not around the other.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._encoded = [secret.encode() for secret in self._secrets]

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def body(self, raw: bytes) -> bytes:
        """A response body with any echo of a key masked, before anything reads it: so no
        result, error message or log line built from it can carry a key."""
        if not self._secrets:
            return raw
        for encoded in self._encoded:
            raw = raw.replace(encoded, b"***")
        if b"\\" not in raw:
            return raw
        # A JSON escape ("\u0073k-...") spells a key in other bytes, and decoding would
        # bring it back: look at the decoded text too, and mask it there.
        try:
            text = json.dumps(json.loads(raw), ensure_ascii=False)
        except (ValueError, RecursionError):
            return raw  # not JSON: nothing will decode the escapes
        masked = text
        for secret in self._secrets:
            masked = masked.replace(json.dumps(secret, ensure_ascii=False)[1:-1], "***")
        if masked == text:
            return raw
        try:
            return json.dumps(json.loads(masked)).encode()  # ASCII: lone surrogates survive
        except (ValueError, RecursionError):  # pragma: no cover - masking kept it JSON
            return masked.encode("utf-8", "replace")

    def payload(self, body: Mapping[str, Any]) -> str:
        shown = {k: ("***" if k == "key" else _short(v)) for k, v in body.items()}
        return self(json.dumps(shown, default=str))


def connect_failure(exc: aiohttp.ClientError) -> str:
    """Why no connection was made, in a few words: aiohttp's own text names its connection
    key (``ssl:default``, even for an http URL), which says nothing to a user."""
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS handshake failed: {exc}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "timed out"
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(os_error, socket.gaierror):
        return f"host not found ({os_error.strerror or os_error})"
    if isinstance(os_error, OSError):
        return os_error.strerror or str(os_error) or type(os_error).__name__
    return str(exc) or type(exc).__name__


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > 200:
        return value[:60] + f"...<{len(value)} chars>"
    return value


class Transport:
    """An aiohttp session plus the retry loop. Owned by one client."""

    def __init__(
        self,
        api_key: str | Sequence[str],
        *,
        retry: RetryPolicy,
        timeouts: Timeouts,
        connection_limit: int,
        on_retry: RetryHook | None = None,
        trust_env: bool = True,
        headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        # One key, or several (each call names the one it uses by position).
        self._keys: tuple[str, ...] = (api_key,) if isinstance(api_key, str) else tuple(api_key)
        self.retry = retry
        self.timeouts = timeouts
        self._limit = connection_limit
        self._on_retry = on_retry
        self._trust_env = trust_env
        self._headers = dict(headers or {})
        self.redact = _Redactor(self._keys)
        self._telemetry = telemetry
        # A session the caller passed in is theirs: used, never closed here.
        self._own_session = session is None
        self._session: aiohttp.ClientSession | None = session

    def __repr__(self) -> str:
        return f"<Transport retry={self.retry!r}>"

    @property
    def key_count(self) -> int:
        """How many keys this transport can send (by position, never shown)."""
        return len(self._keys)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            raise ClientClosedError("the HTTP session is not open (client not started or closed)")
        return self._session

    async def open(self) -> None:
        if not self._own_session:
            return
        connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=self._limit)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self.timeouts.request, connect=self.timeouts.connect
            ),
            json_serialize=json.dumps,
            # HTTP(S)_PROXY / NO_PROXY from the environment, as httpx's trust_env.
            trust_env=self._trust_env,
        )

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()

    async def call(
        self,
        url: str,
        body: Mapping[str, Any],
        *,
        idempotent: bool,
        parse: Callable[[int, Mapping[str, str], bytes], T],
        retry: RetryPolicy | None = None,
        key_index: int = 0,
        on_retry: RetryHook | None = None,
        operation: str = "call",
    ) -> T:
        """POST ``body`` plus key number ``key_index`` (0-based) to ``url`` and ``parse`` the
        answer, retrying per policy; ``on_retry`` hears of this call's retries (after the
        transport's own hook). ``operation`` (``submit``, ``fetch``) names the call in
        telemetry."""
        policy = retry or self.retry
        payload = {"key": self._keys[key_index], **body}
        deadline = None if self.timeouts.total is None else time.monotonic() + self.timeouts.total
        attempt = 0
        while True:
            try:
                status, headers, raw = await self._post_once(url, payload, operation, attempt)
                return parse(status, headers, raw)
            except (TransportError, APIError) as error:
                if isinstance(error, RateLimitError) and error.queue_full:
                    self._telemetry.queue_full(error)
                if attempt >= policy.max_retries or not policy.should_retry(
                    error, idempotent=idempotent
                ):
                    raise
                delay = policy.delay(attempt, error)
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise
                attempt += 1
                logger.info(
                    "retrying %s in %.2fs (attempt %d of %d): %s",
                    url,
                    delay,
                    attempt,
                    policy.max_retries,
                    self.redact(str(error)),
                )
                self._telemetry.retried(operation, attempt, error, delay)
                for hook in (self._on_retry, on_retry):
                    if hook is not None:
                        hook(attempt, error, delay)
                await asyncio.sleep(delay)

    async def _post_once(
        self, url: str, payload: Mapping[str, Any], operation: str, attempt: int
    ) -> tuple[int, Mapping[str, str], bytes]:
        debug = logger.isEnabledFor(logging.DEBUG)
        if debug:
            logger.debug("POST %s %s", url, self.redact.payload(payload))
        # The key travels in the body, never in a URL; a URL the service gave (fetch_result)
        # is masked all the same before it is reported.
        exchange = self._telemetry.http(operation, url, attempt, self.redact)
        try:
            # Redirects are not followed: the key is in the body, and a 307/308 would carry
            # it to wherever the Location header points.
            async with self.session.post(
                url, json=payload, headers=self._headers or None, allow_redirects=False
            ) as response:
                exchange.answered(response.status)
                raw = self.redact.body(await response.read())
                headers = response.headers
                status = response.status
                exchange.end()
        except aiohttp.InvalidURL as exc:
            exchange.failed(exc)
            exchange.end()
            raise TransportError(f"invalid URL {url!r}: {exc}", may_have_landed=False) from None
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            exchange.failed(exc)
            exchange.end()
            # No connection was made, so nothing was sent.
            raise TransportError(
                f"cannot connect to {url}: {self.redact(connect_failure(exc))}",
                may_have_landed=False,
                url=url,
            ) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            exchange.failed(exc)
            exchange.end()
            kind = "timed out" if isinstance(exc, TimeoutError) else "connection failed"
            detail = self.redact(str(exc)) or type(exc).__name__
            raise TransportError(
                f"{kind} during POST {url}: {detail}", may_have_landed=True, url=url
            ) from None
        except BaseException as exc:
            # Cancelled (or worse): the exchange's trace still ends.
            exchange.failed(exc)
            exchange.end()
            raise
        if debug:
            logger.debug(
                "HTTP %d from %s: %s",
                status,
                url,
                self.redact(raw[:500].decode("utf-8", "replace")),
            )
        if 300 <= status < 400:
            location = self.redact(headers.get("Location", "nowhere"))
            raise APIError(
                f"POST {url} was redirected to {location}; not followed (the API key travels "
                f"in the body): use the final address as base_url",
                http_status=status,
            )
        return status, headers, raw
