"""Telemetry as the client, the transport and the poller see it: a narrow interface whose
default implementation does nothing.

The OpenTelemetry implementation lives in :mod:`._otel`, which the client picks when
``opentelemetry-api`` is installed. Everything here costs a method call that returns at once,
so a client without telemetry pays next to nothing for the hooks.

Three kinds of object:

* :class:`Telemetry`: one per client; makes traces and counts (retries, "queue full", pending
  jobs, slots in use, job durations, fetches per job);
* :class:`JobTrace`: one per generation call, batch item or attached job; the parent of the
  HTTP exchanges made for it. The poller stores it with the job, so that fetches made from its
  own task are parented on the job's trace, not on whatever the poller's task inherited;
* :class:`HttpTrace`: one HTTP exchange (one attempt).

Nothing here may ever carry an API key, and a prompt only when the user opts in
(:attr:`TelemetryOptions.record_prompts`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Literal, TypeAlias

import attrs

from ._errors import (
    AmbiguousSubmission,
    ClientClosedError,
    GenerationFailed,
    JobTimeout,
    RateLimitError,
)

if TYPE_CHECKING:
    from ._models import GenerationRequest

__all__ = [
    "NO_HTTP",
    "NO_TELEMETRY",
    "NO_TRACE",
    "AttributeValue",
    "HttpTrace",
    "JobTrace",
    "Operation",
    "Outcome",
    "Telemetry",
    "TelemetryOptions",
    "current_trace",
    "outcome_of",
]

AttributeValue: TypeAlias = str | bool | int | float

#: What a trace stands for: ``generate()``, ``submit()``, an item of ``map()``/``gather()``,
#: or a job attached by id (``attach()``/``wait_for()``).
Operation: TypeAlias = Literal["generate", "submit", "batch_item", "attach"]

#: How a generation ended: its result (``success``), a failed job (``failed``), the caller's
#: or the policy's timeout (``timeout``), the service turning it away (``rate_limited``), a
#: submission that may or may not have landed (``ambiguous``), the client closing
#: (``closed``), the caller cancelling (``cancelled``), any other error (``error``);
#: ``accepted`` for a ``submit()`` trace whose job is reported elsewhere, ``unsent`` for a
#: batch item the batch stopped before sending.
Outcome: TypeAlias = Literal[
    "success",
    "failed",
    "timeout",
    "rate_limited",
    "ambiguous",
    "closed",
    "cancelled",
    "error",
    "accepted",
    "unsent",
]


@attrs.frozen(kw_only=True)
class TelemetryOptions:
    """What the client reports through OpenTelemetry (when ``opentelemetry-api`` is installed).

    Pass it as ``DreamboothClient(telemetry=TelemetryOptions(...))``; ``telemetry=False`` turns
    telemetry off, ``True`` (the default) is ``TelemetryOptions()``.
    """

    enabled: bool = True
    """Make spans and metrics at all."""
    record_prompts: bool = False
    """Put each request's prompt and negative prompt on its span
    (``dreambooth.request.prompt``, ``dreambooth.request.negative_prompt``). Off by default:
    prompts are user content."""
    # Typed loosely: opentelemetry is an optional extra, so its types cannot appear here.
    tracer_provider: object | None = None
    """An OpenTelemetry ``TracerProvider`` to use instead of the global one
    (``opentelemetry.trace.get_tracer_provider()``)."""
    meter_provider: object | None = None
    """Likewise a ``MeterProvider`` instead of the global one."""


class HttpTrace:
    """One HTTP exchange. This base records nothing."""

    __slots__ = ()

    def answered(self, status: int) -> None:
        """The service answered with HTTP ``status``."""

    def failed(self, error: BaseException) -> None:
        """No answer came: ``error`` (a timeout, a refused or dropped connection)."""

    def end(self) -> None:
        """The exchange is over."""


class JobTrace:
    """The trace of one generation call, batch item or attached job. This base records
    nothing, and :meth:`active` changes nothing."""

    __slots__ = ()

    def active(self) -> contextlib.AbstractContextManager[object]:
        """Make this the current trace for the ``with`` block: HTTP exchanges made inside are
        its children, and a ``submit()`` inside joins it instead of starting its own."""
        return _NOTHING

    @property
    def ends_with_job(self) -> bool:
        """True when the job's end ends this trace (a bare ``submit()`` or ``attach()``), False
        when the code that opened it ends it (``generate()``, a batch item)."""
        return False

    def job(self, job_id: str) -> None:
        """The service accepted the request as job ``job_id``."""

    def event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        """Something happened to the job (a retry, a webhook delivery, ...)."""

    def finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        """End the trace (only the first call counts)."""


class Telemetry:
    """A client's telemetry. This base records nothing."""

    __slots__ = ()

    #: False for this base: callers may skip work (say, redacting a URL) that only feeds it.
    enabled: bool = False

    def generation(
        self,
        operation: Operation,
        request: GenerationRequest | None,
        *,
        index: int | None = None,
        ends_with_job: bool = False,
    ) -> JobTrace:
        """A new trace for one generation of ``request`` (None: a job attached by id);
        ``index`` is a batch item's position."""
        return NO_TRACE

    def http(
        self, operation: str, url: str, attempt: int, redact: Callable[[str], str]
    ) -> HttpTrace:
        """A new HTTP exchange (``attempt`` 0 for the first try) under the current trace;
        ``redact`` masks the keys in ``url`` before it is reported."""
        return NO_HTTP

    def retried(self, operation: str, attempt: int, error: BaseException, delay: float) -> None:
        """The transport will try ``operation`` again in ``delay`` seconds."""

    def queue_full(self, error: RateLimitError) -> None:
        """The service turned a submission away because the account's queue is full."""

    def job_started(self, trace: JobTrace, *, submitted: bool) -> None:
        """A job is pending; ``submitted`` when this client's submission made it (it holds
        one of the account's queue slots until it ends), False when attached by id."""

    def job_ended(
        self,
        trace: JobTrace,
        *,
        outcome: Outcome,
        error: BaseException | None,
        duration: float | None,
        fetches: int,
        resolved_by: str | None,
        submitted: bool,
    ) -> None:
        """A pending job ended: how, after how long (None when unknown: attached by id),
        after how many fetches, and what found its end (``poll``, ``webhook``)."""

    def job_answered(self, trace: JobTrace, duration: float) -> None:
        """A submission's answer was its result (no fetch, never pending), ``duration``
        seconds after it was sent."""


def outcome_of(error: BaseException | None) -> Outcome:
    """The outcome an error stands for (None: success)."""
    if error is None:
        return "success"
    if isinstance(error, GenerationFailed):
        return "failed"
    if isinstance(error, JobTimeout | TimeoutError):
        return "timeout"
    if isinstance(error, RateLimitError):
        return "rate_limited"
    if isinstance(error, AmbiguousSubmission):
        return "ambiguous"
    if isinstance(error, ClientClosedError):
        return "closed"
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return "error"


#: The trace a caller up the stack opened (``generate()``, a batch item): a ``submit()``
#: inside joins it.
_CURRENT: ContextVar[JobTrace | None] = ContextVar("dreambooth_trace", default=None)


# The context variable's own methods, not functions around them: every generate() calls them.

#: ``current_trace()``: the trace made current by :meth:`JobTrace.active`, if any.
current_trace: Callable[[], JobTrace | None] = _CURRENT.get
#: ``set_current(trace)``: make ``trace`` current; returns what :func:`reset_current` takes to
#: undo it.
set_current: Callable[[JobTrace | None], Token[JobTrace | None]] = _CURRENT.set
#: ``reset_current(token)``: undo :func:`set_current`.
reset_current: Callable[[Token[JobTrace | None]], None] = _CURRENT.reset


_NOTHING: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
NO_TRACE = JobTrace()
NO_HTTP = HttpTrace()
NO_TELEMETRY = Telemetry()
