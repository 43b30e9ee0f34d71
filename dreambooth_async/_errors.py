"""The exception tree, and the one place that decides which of them a response body means.

The service reports most errors inside HTTP 200 (``"status": "error"`` or ``"failed"``), newer
deployments also use 4xx/5xx codes, and proxies in front of it answer with HTML or nothing.
:func:`error_from_response` sees all of these the same way.
"""

from __future__ import annotations

import datetime
import email.utils
import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "APIError",
    "AmbiguousSubmission",
    "AuthenticationError",
    "ClientClosedError",
    "DownloadError",
    "DreamboothError",
    "EndpointNotFound",
    "GenerationFailed",
    "InsufficientCredits",
    "JobNotFound",
    "JobTimeout",
    "OutputError",
    "PermissionDenied",
    "PromptFileError",
    "RateLimitError",
    "RequestValidationError",
    "ServerError",
    "TransportError",
    "error_from_response",
]


class DreamboothError(Exception):
    """Base of every error this library raises."""

    #: Set by the client on a submission that may have landed when it has a webhook receiver:
    #: ``client.recover(error)`` can then learn the job from the service's webhook call.
    webhook_token: str | None = None


class RequestValidationError(DreamboothError, ValueError):
    """A request field is out of its documented limits. Raised before any network call."""

    def __init__(self, field: str, value: object, limit: str) -> None:
        self.field = field
        self.value = value
        self.limit = limit
        try:
            shown = repr(value)
        except Exception:  # a repr that raises, an int past the digit limit, deep nesting
            shown = f"<{type(value).__name__}>"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field}={shown} is invalid: must be {limit}")


class PromptFileError(DreamboothError, ValueError):
    """A prompts file that cannot be used: unreadable, or a row that makes no valid request.
    Raised by :func:`~dreambooth_async.read_prompts` before anything is sent.

    ``path`` is the file, ``line`` its physical line (comments and blank lines counted; None
    when the fault is the whole file), ``reason`` what is wrong with it.
    """

    def __init__(self, path: os.PathLike[str] | str, line: int | None, reason: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.reason = reason
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {reason}")


class APIError(DreamboothError):
    """The service answered with an error.

    ``message`` is its text; ``details`` the per-field errors when it sent an object
    (``{"prompt": ["The prompt field is required."]}``); ``http_status`` the HTTP code;
    ``body`` the decoded JSON body, if any. ``may_have_landed`` is True when the answer cannot
    rule out that a submission was accepted (a 502 from a proxy, say).
    """

    def __init__(
        self,
        message: str,
        *,
        details: Mapping[str, list[str]] | None = None,
        http_status: int | None = None,
        body: Mapping[str, Any] | None = None,
        tip: str | None = None,
        may_have_landed: bool = False,
    ) -> None:
        self.message = message
        self.details = dict(details) if details else {}
        self.http_status = http_status
        self.body = body
        self.tip = tip
        self.may_have_landed = may_have_landed
        super().__init__(self._describe())

    def _describe(self) -> str:
        text = self.message
        if self.details:
            fields = "; ".join(f"{k}: {' '.join(v)}" for k, v in self.details.items())
            text = f"{text} ({fields})"
        if self.http_status is not None and self.http_status != 200:
            text = f"{text} [HTTP {self.http_status}]"
        return text


class AuthenticationError(APIError):
    """The API key was refused: an invalid or missing key (``Invalid Api Key``, HTTP 401).

    A batch stops submitting on it: every other item would be refused the same way.
    """


class InsufficientCredits(APIError):
    """The account's wallet cannot pay for the request (HTTP 402, or ``Insufficient credits``
    in an HTTP 200 answer). Nothing was accepted; top up and run again.

    A batch stops submitting on it and leaves the rest pending in its manifest.
    """


class EndpointNotFound(APIError):
    """Submissions keep being answered HTTP 404 (not found): the base URL does not look like
    the root of the service's API (a path too many or too few, another site). Nothing was
    accepted; a batch stops submitting after a few in a row and leaves the rest pending.
    """


class PermissionDenied(APIError):
    """The key is valid but the feature or model is not on the account's plan (HTTP 403,
    ``This feature requires a premium subscription``). Nothing was accepted."""


class JobNotFound(APIError):
    """The service does not know the job id that was fetched (``job_id`` names it).

    Right after a submission was accepted the service may not show the job yet: the poller
    retries for a bounded time before it reports this.
    """

    def __init__(self, message: str, *, job_id: str | None = None, **kw: Any) -> None:
        self.job_id = job_id
        super().__init__(message, **kw)


class RateLimitError(APIError):
    """The account's queue is full, or the spam filter saw the same request again.

    ``retry_after`` is in seconds when the service said how long to wait; ``queue_full`` tells
    the queue-slot limit (``Maximum N queued requests``) from other rate limits, and
    ``queue_limit`` is that N when the message states it (the account's limit: 5, 10 or 15).
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        queue_full: bool = False,
        queue_limit: int | None = None,
        **kw: Any,
    ) -> None:
        self.retry_after = retry_after
        self.queue_full = queue_full
        self.queue_limit = queue_limit
        super().__init__(message, **kw)


class ServerError(APIError):
    """A 5xx answer, or a body that is not the service's JSON (an HTML error page, nothing).

    ``retry_after`` is the wait a 503 asked for (``Retry-After``), if any.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)


class GenerationFailed(APIError):
    """The service ran the job and it failed (``"status": "failed"``). ``job_id`` names it."""

    def __init__(self, message: str, *, job_id: str | None = None, **kw: Any) -> None:
        self.job_id = job_id
        super().__init__(message, **kw)


class JobTimeout(DreamboothError, TimeoutError):
    """Waiting for a job ran out of time. It may still finish: ``wait_for(job_id)`` attaches."""

    def __init__(self, job_id: str, timeout: float | None) -> None:
        self.job_id = job_id
        self.timeout = timeout
        after = f" after {timeout:g}s" if timeout is not None else ""
        super().__init__(
            f"job {job_id} did not finish{after}; it may still complete: "
            f"client.wait_for({job_id!r}) attaches to it again"
        )


class TransportError(DreamboothError):
    """The exchange with the service broke (connection refused or dropped, timeout).

    ``may_have_landed`` is True when the request body had been sent: a submission in that
    state may have been accepted (and billed), so it is not retried automatically.
    """

    def __init__(self, message: str, *, may_have_landed: bool, url: str | None = None) -> None:
        self.may_have_landed = may_have_landed
        self.url = url
        if may_have_landed:
            message += " (the request was sent: the service may have accepted it)"
        super().__init__(message)


class DownloadError(DreamboothError):
    """An output image could not be downloaded: not found in time, too large, not an image."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        self.url = url
        super().__init__(message)


class OutputError(DreamboothError):
    """An output folder or file cannot be written (read-only, missing, a file where a folder
    should be). ``path`` names it. A batch checks its ``download_to`` before submitting."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(message)


class AmbiguousSubmission(DreamboothError):
    """A submission may or may not have been accepted (and billed): the connection broke after
    the request was sent, a proxy answered 5xx, or a batch died between sending it and hearing
    back. The item is reported rather than sent again, which could pay twice; pass
    ``resubmit_ambiguous=True`` to send it anyway. ``cause`` is the error seen, when there was
    one in this run."""

    def __init__(self, key: str | None, detail: str, cause: BaseException | None = None) -> None:
        self.key = key
        self.cause = cause
        super().__init__(detail)


class ClientClosedError(DreamboothError, RuntimeError):
    """The client was used outside ``async with`` (before it started or after it closed)."""


# --- the mapping ------------------------------------------------------------------------------

# How the service words a refusal for money or for the plan when it answers HTTP 200
# (error-codes.mdx gives the texts; legacy endpoints send them without the status code).
_NO_CREDIT = ("insufficient credit", "insufficient balance", "add more credits", "out of credits")
_NOT_ON_PLAN = ("premium subscription", "not available on your plan", "upgrade your plan")

_WAIT_SECONDS = re.compile(r"(\d+(?:\.\d+)?)\s*(?:seconds|secs|sec|s)\b", re.IGNORECASE)
#: "Maximum 5 queued requests allowed": the account's limit, as the queue-full message states it.
_STATED_LIMIT = re.compile(r"maximum\s+(\d{1,6})\s+queued\s+requests", re.IGNORECASE)
#: A stated limit past this is not one any plan has (5, 10 or 15 today): not trusted.
_MAX_STATED_LIMIT = 1000
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int past a float
        return None
    return number if number >= 0 and number == number and number != float("inf") else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # aiohttp's headers are case-insensitive, a plain dict (tests, callers) is not.
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def _stated_limit(message: str) -> int | None:
    """The account's queue limit where a "queue full" message states it (``Maximum 5 queued
    requests allowed``, as the rate-limits page shows); None otherwise, or for a number no
    account has (a limit below one, or past any plan's)."""
    match = _STATED_LIMIT.search(message)
    if match is None:
        return None
    limit = int(match.group(1))
    return limit if 0 < limit <= _MAX_STATED_LIMIT else None


def _retry_after_header(value: str | None) -> float | None:
    """``Retry-After`` is seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


def _retry_after(headers: Mapping[str, str], body: Mapping[str, Any] | None) -> float | None:
    header = _retry_after_header(_header(headers, "Retry-After"))
    if header is not None:
        return header
    if body is None:
        return None
    from_body = _number(body.get("retry_after"))
    if from_body is not None:
        return from_body
    for key in ("tips", "tip", "message", "messege"):
        text = body.get(key)
        if isinstance(text, str) and (match := _WAIT_SECONDS.search(text)):
            return _number(match.group(1))  # None for a wait past a float (inf)
    return None


def _split_message(raw: Any) -> tuple[str, dict[str, list[str]]]:
    """``message`` is a string or an object of per-field error lists."""
    if isinstance(raw, Mapping):
        details = {
            str(k): [str(x) for x in v] if isinstance(v, list) else [str(v)] for k, v in raw.items()
        }
        return "The request was refused: " + ", ".join(details) + " invalid", details
    return (_text(raw) or "unknown error"), {}


def _describe_non_json(http_status: int, body: bytes) -> str:
    if not body.strip():
        return f"empty response body (HTTP {http_status})"
    match = _TITLE.search(body[:4096])
    if match:
        title = match.group(1).decode("utf-8", "replace").strip()
        return f"non-JSON response (HTTP {http_status}): {title[:120]}"
    snippet = body[:120].decode("utf-8", "replace").strip().replace("\n", " ")
    return f"non-JSON response (HTTP {http_status}): {snippet}"


def error_from_response(
    http_status: int,
    headers: Mapping[str, str],
    body: bytes,
    parsed: Any,
) -> DreamboothError | None:
    """The exception an answer means, or None when it is a success or processing body.

    ``parsed`` is the decoded JSON (or ``None`` when the body is not JSON). Submissions that a
    429, a 503 or a queue-full body turned away provably did not land; a 5xx of another kind
    cannot say, and is marked ``may_have_landed``.
    """
    body_map = parsed if isinstance(parsed, Mapping) else None
    status = str(body_map.get("status", "")).lower() if body_map is not None else ""
    ok_http = 200 <= http_status < 300

    if body_map is None:
        if ok_http and isinstance(parsed, list):
            return None  # model_list answers with a bare array
        text = _describe_non_json(http_status, body)
        if http_status == 429:
            return RateLimitError(
                text, retry_after=_retry_after(headers, None), http_status=http_status
            )
        if http_status == 401:
            return AuthenticationError(text, http_status=http_status)
        if http_status == 402:
            return InsufficientCredits(text, http_status=http_status)
        if http_status == 403:
            return PermissionDenied(text, http_status=http_status)
        if http_status >= 500 or ok_http:
            return ServerError(
                text,
                http_status=http_status,
                may_have_landed=http_status != 503,
                retry_after=_retry_after(headers, None),
            )
        return APIError(text, http_status=http_status)

    if ok_http and status in ("success", "processing", "ok"):
        return None  # "ok" is system_load's word for success

    message, details = _split_message(
        body_map.get("message") if body_map.get("message") is not None else body_map.get("messege")
    )
    tip = _text(body_map.get("tip")) or _text(body_map.get("tips"))
    common: dict[str, Any] = {
        "details": details,
        "http_status": http_status,
        "body": body_map,
        "tip": tip,
    }
    lowered = message.lower()

    if http_status == 401 or "api key" in lowered:
        return AuthenticationError(message, **common)
    if http_status == 402 or any(words in lowered for words in _NO_CREDIT):
        return InsufficientCredits(message, **common)
    if http_status == 403 or any(words in lowered for words in _NOT_ON_PLAN):
        return PermissionDenied(message, **common)
    if http_status == 429 or "rate limit" in lowered or "queued requests" in lowered:
        return RateLimitError(
            message,
            retry_after=_retry_after(headers, body_map),
            queue_full="queue" in lowered,
            queue_limit=_stated_limit(message),
            **common,
        )
    if status == "failed":
        job_id = _text(body_map.get("id"))
        return GenerationFailed(message, job_id=job_id, **common)
    if http_status >= 500:
        return ServerError(
            message,
            may_have_landed=http_status != 503,
            retry_after=_retry_after(headers, body_map),
            **common,
        )
    if ok_http and status not in ("error", ""):
        return APIError(f"unexpected status {status!r}: {message}", **common)
    return APIError(message, **common)


def about_job(error: APIError, job_id: str) -> APIError:
    """``error``, from a fetch of ``job_id``, as the error about that job: a failure names the
    job it was asked about when the answer did not, and a plain "not found" (or HTTP 404)
    becomes :class:`JobNotFound`."""
    if isinstance(error, GenerationFailed):
        error.job_id = error.job_id or job_id
        return error
    not_found = error.http_status == 404 or "not found" in error.message.lower()
    if type(error) is APIError and not_found:
        return JobNotFound(
            f"job {job_id}: {error.message}",
            job_id=job_id,
            http_status=error.http_status,
            body=error.body,
            tip=error.tip,
        )
    return error


def sole_error(error: BaseException) -> BaseException:
    """The one exception a task group wrapped (however deeply), else ``error`` itself."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
