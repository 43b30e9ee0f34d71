"""OpenTelemetry spans and metrics for the client, through the globally configured providers
(or the ones :class:`~._telemetry.TelemetryOptions` names).

Only ``opentelemetry-api`` is needed, and only when a client is made (:func:`telemetry_for`):
without it the client gets the no-op :data:`~._telemetry.NO_TELEMETRY`, and with the API but
no SDK every span and instrument is the API's own no-op.

Spans:

* one per generation call, batch item or attached job (``dreambooth generate``,
  ``dreambooth submit``, ``dreambooth batch item``, ``dreambooth attach``; kind INTERNAL) with
  ``dreambooth.job.id``, ``dreambooth.model_id``, ``dreambooth.request.kind``,
  ``dreambooth.api_version``, ``dreambooth.outcome``, ``dreambooth.job.fetches`` and
  ``dreambooth.resolved_by``; events ``dreambooth.retry``, ``dreambooth.queue_full``,
  ``dreambooth.webhook.received``, ``dreambooth.webhook.unconfirmed`` and
  ``dreambooth.webhook.resolved``;
* its children, one per HTTP exchange (``POST``, kind CLIENT), after OpenTelemetry's HTTP
  client conventions: ``http.request.method``, ``http.response.status_code``,
  ``server.address``, ``server.port``, ``url.full`` (the key travels in the JSON body, never in
  a URL; the URL is redacted all the same), ``http.request.resend_count``, ``error.type``; and
  ``dreambooth.operation`` (``submit``, ``fetch``, ``call``).

Metrics (meter ``dreambooth_async``): ``dreambooth.client.jobs.pending`` and
``dreambooth.client.slots.in_use`` (up-down counters), ``dreambooth.client.job.duration``
(seconds, from acceptance to the result) and ``dreambooth.client.job.fetches`` (histograms),
``dreambooth.client.retries`` and ``dreambooth.client.queue_full`` (counters).
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Callable, Mapping
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._errors import RateLimitError
from ._telemetry import (
    NO_HTTP,
    NO_TELEMETRY,
    AttributeValue,
    HttpTrace,
    JobTrace,
    Operation,
    Outcome,
    Telemetry,
    TelemetryOptions,
    reset_current,
    set_current,
)

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from ._models import GenerationRequest

__all__ = ["OtelTelemetry", "telemetry_for"]

_SCOPE = "dreambooth_async"

#: Job durations run from under a second (turbo models) to minutes (a cold model).
_DURATION_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_FETCH_BUCKETS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 15.0, 20.0, 50.0, 100.0)

_SPAN_NAMES: dict[Operation, str] = {
    "generate": "dreambooth generate",
    "submit": "dreambooth submit",
    "batch_item": "dreambooth batch item",
    "attach": "dreambooth attach",
}


def telemetry_for(options: TelemetryOptions, *, api_version: str, base_url: str) -> Telemetry:
    """OpenTelemetry telemetry when it is wanted and ``opentelemetry-api`` is installed, else
    the no-op."""
    if not options.enabled:
        return NO_TELEMETRY
    try:
        return OtelTelemetry(options, api_version=api_version, base_url=base_url)
    except ImportError:
        return NO_TELEMETRY


class _Current:
    """The ``with`` block of :meth:`_Measured.active`: the trace is current in our context
    (a ``submit()`` inside joins it), for this task only."""

    __slots__ = ("_token", "_trace")

    def __init__(self, trace: _Measured) -> None:
        self._trace = trace
        self._token: Token[JobTrace | None] | None = None

    def __enter__(self) -> _Current:
        self._token = set_current(self._trace)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            reset_current(self._token)


class _Active(_Current):
    """The ``with`` block of :meth:`_Trace.active`: also the trace's span is current in
    OpenTelemetry's context."""

    __slots__ = ("_otel_token", "_span_trace")

    def __init__(self, trace: _Trace) -> None:
        super().__init__(trace)
        self._span_trace = trace
        self._otel_token: object = None

    def __enter__(self) -> _Active:
        self._otel_token = self._span_trace.telemetry.attach(self._span_trace.context)
        super().__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        self._span_trace.telemetry.detach(self._otel_token)


class _Measured(JobTrace):
    """A job's trace while nothing records spans: what its measurements carry, and its place
    as the current trace; no span, no OpenTelemetry context to switch.

    Its own ``with`` block (:meth:`active` returns it) unless it is current already: one
    object fewer on every call."""

    __slots__ = ("_ends_with_job", "_token", "metered", "model_id")

    def __init__(self, *, ends_with_job: bool, model_id: str | None) -> None:
        self._ends_with_job = ends_with_job
        self._token: Token[JobTrace | None] | None = None
        #: Whether the job's start was counted in the up-down counters, so that its end is
        #: taken off them exactly when its start was put on (an SDK may arrive in between).
        self.metered = False
        #: The request's model (None: a job attached by id), for its measurements: their
        #: attributes are made only when they are recorded.
        self.model_id = model_id

    def active(self) -> contextlib.AbstractContextManager[object]:
        # Entered while its own block is open (a submit() inside joins it): a block of its own.
        return self if self._token is None else _Current(self)

    def __enter__(self) -> _Measured:
        self._token = set_current(self)
        return self

    def __exit__(self, *_: object) -> None:
        token, self._token = self._token, None
        if token is not None:
            reset_current(token)

    @property
    def ends_with_job(self) -> bool:
        return self._ends_with_job


class _Trace(_Measured):
    __slots__ = ("_ended", "context", "span", "telemetry")

    def __init__(
        self,
        telemetry: OtelTelemetry,
        span: Span,
        context: Context,
        *,
        ends_with_job: bool,
        model_id: str | None,
    ) -> None:
        super().__init__(ends_with_job=ends_with_job, model_id=model_id)
        self.telemetry = telemetry
        self.span = span
        self.context = context
        self._ended = False

    def active(self) -> _Active:
        return _Active(self)

    def job(self, job_id: str) -> None:
        self.span.set_attribute("dreambooth.job.id", job_id)

    def event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        self.span.add_event(name, attributes)

    def finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        self.span.set_attribute("dreambooth.outcome", outcome)
        if error is not None and outcome != "accepted":
            # The type only: messages may quote the service, which may quote the prompt.
            name = type(error).__name__
            self.span.set_attribute("error.type", name)
            self.span.set_status(self.telemetry.error_status(name))
        self.span.end()


class _Http(HttpTrace):
    __slots__ = ("_span", "_telemetry")

    def __init__(self, telemetry: OtelTelemetry, span: Span) -> None:
        self._telemetry = telemetry
        self._span = span

    def answered(self, status: int) -> None:
        self._span.set_attribute("http.response.status_code", status)
        if status >= 400:
            self._span.set_attribute("error.type", str(status))
            self._span.set_status(self._telemetry.error_status(str(status)))

    def failed(self, error: BaseException) -> None:
        name = type(error).__name__
        self._span.set_attribute("error.type", name)
        self._span.set_status(self._telemetry.error_status(name))

    def end(self) -> None:
        self._span.end()


class _SetUp:
    """Whether a global provider (tracer or meter) is set up, asked on every call: one may be
    set up after the client is made, and until then the API's placeholder makes every span and
    measurement a no-op, so none is made.

    The API's getter looks up an environment variable each time it is asked. The module global
    it returns (None until a provider is set up) is what the API's proxy tracer and meters read
    themselves, and costs a tenth as much: it is read instead while the module has it (should a
    later API release rename it, the getter is asked as before). Once a provider is set up, for
    good: the API sets it once."""

    __slots__ = ("_getter", "_globals", "_name", "_placeholder")

    def __init__(
        self, placeholder: object, module: object, name: str, getter: Callable[[], object]
    ) -> None:
        #: The API's placeholder provider while no SDK is set up (None: one is, or the
        #: options name a provider of their own).
        self._placeholder = placeholder
        # The module's own namespace (live: a provider set up later is seen in it).
        namespace: dict[str, object] = vars(module)
        self._globals = namespace if name in namespace else None
        self._name = name
        self._getter = getter

    def set_up(self) -> bool:
        """True once a provider is set up (or the options named one)."""
        if self._placeholder is None:
            return True
        if self._globals is not None:
            if self._globals[self._name] is None:
                return False
        elif self._getter() is self._placeholder:
            return False
        self._placeholder = None
        return True


class OtelTelemetry(Telemetry):
    """Spans and metrics through OpenTelemetry's API (raises ImportError without it)."""

    __slots__ = (
        "_api_version",
        "_base_attributes",
        "_client_kind",
        "_context",
        "_duration",
        "_fetches",
        "_metering",
        "_options",
        "_pending",
        "_queue_full",
        "_retries",
        "_servers",
        "_slots",
        "_status",
        "_trace_api",
        "_tracer",
        "_tracing",
    )

    enabled = True

    def __init__(self, options: TelemetryOptions, *, api_version: str, base_url: str) -> None:
        # opentelemetry-api is the optional [otel] extra: imported when a client is made, not
        # when the library is, so that without it the library imports and runs as before.
        from opentelemetry import context, metrics, trace
        from opentelemetry.metrics import _internal as metrics_internal

        self._options = options
        self._api_version = api_version
        self._context = context
        self._trace_api = trace
        self._client_kind = trace.SpanKind.CLIENT
        # The API's placeholder provider, while no SDK is set up (None: one is, or the options
        # name a provider of their own).
        global_provider = trace.get_tracer_provider()
        self._tracing = _SetUp(
            global_provider
            if options.tracer_provider is None
            and isinstance(global_provider, trace.ProxyTracerProvider)
            else None,
            trace,
            "_TRACER_PROVIDER",
            trace.get_tracer_provider,
        ).set_up
        # Likewise for metrics. The API's stand-in meter provider has no public name; it is
        # known by its module. Should that change, metrics are simply always recorded.
        global_meters = metrics.get_meter_provider()
        self._metering = _SetUp(
            global_meters
            if options.meter_provider is None
            and type(global_meters).__module__.startswith("opentelemetry.metrics")
            and type(global_meters).__name__.startswith("_Proxy")
            else None,
            metrics_internal,
            "_METER_PROVIDER",
            metrics.get_meter_provider,
        ).set_up
        self._status = trace.Status
        tracer_provider: Any = options.tracer_provider
        meter_provider: Any = options.meter_provider
        self._tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
        meter = metrics.get_meter(_SCOPE, meter_provider=meter_provider)
        self._servers: dict[str, dict[str, AttributeValue]] = {}
        self._base_attributes: dict[str, AttributeValue] = {"dreambooth.api_version": api_version}
        host = urllib.parse.urlsplit(base_url).hostname
        if host:
            self._base_attributes["server.address"] = host
        self._pending = meter.create_up_down_counter(
            "dreambooth.client.jobs.pending",
            unit="{job}",
            description="Jobs the client is waiting for (submitted or attached, not ended).",
        )
        self._slots = meter.create_up_down_counter(
            "dreambooth.client.slots.in_use",
            unit="{slot}",
            description="Queue slots this client's jobs hold: jobs it submitted that the "
            "service accepted and that have not ended.",
        )
        self._duration = meter.create_histogram(
            "dreambooth.client.job.duration",
            unit="s",
            description="From the service accepting a job to the client having its result.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._fetches = meter.create_histogram(
            "dreambooth.client.job.fetches",
            unit="{fetch}",
            description="Fetch calls each job cost.",
            explicit_bucket_boundaries_advisory=_FETCH_BUCKETS,
        )
        self._retries = meter.create_counter(
            "dreambooth.client.retries",
            unit="{retry}",
            description="HTTP calls the transport tried again.",
        )
        self._queue_full = meter.create_counter(
            "dreambooth.client.queue_full",
            unit="{answer}",
            description="Submissions the service turned away because the account's queue was full.",
        )

    # --- helpers for the traces ---------------------------------------------------------------

    def attach(self, context: Context) -> object:
        return self._context.attach(context)

    def detach(self, token: object) -> None:
        self._context.detach(token)  # type: ignore[arg-type]

    def error_status(self, description: str) -> Any:
        return self._status(self._trace_api.StatusCode.ERROR, description)

    # --- the interface ------------------------------------------------------------------------

    def generation(
        self,
        operation: Operation,
        request: GenerationRequest | None,
        *,
        index: int | None = None,
        ends_with_job: bool = False,
    ) -> JobTrace:
        model_id = None if request is None else request.model_id
        if not self._tracing():
            return _Measured(ends_with_job=ends_with_job, model_id=model_id)
        span = self._tracer.start_span(_SPAN_NAMES[operation])
        if span.is_recording():
            attributes: dict[str, AttributeValue] = {
                "dreambooth.operation": operation,
                **self._base_attributes,
            }
            if request is not None:
                attributes["dreambooth.model_id"] = request.model_id
                attributes["dreambooth.request.kind"] = request.kind
                if self._options.record_prompts:
                    attributes["dreambooth.request.prompt"] = request.prompt
                    if request.negative_prompt is not None:
                        attributes["dreambooth.request.negative_prompt"] = request.negative_prompt
            if index is not None:
                attributes["dreambooth.batch.index"] = index
            span.set_attributes(attributes)
        context = self._trace_api.set_span_in_context(span)
        return _Trace(self, span, context, ends_with_job=ends_with_job, model_id=model_id)

    def http(
        self, operation: str, url: str, attempt: int, redact: Callable[[str], str]
    ) -> HttpTrace:
        if not self._tracing():
            return NO_HTTP
        span = self._tracer.start_span("POST", kind=self._client_kind)
        if span.is_recording():
            attributes: dict[str, AttributeValue] = {
                "http.request.method": "POST",
                "url.full": redact(url),
                "dreambooth.operation": operation,
                **self._server_of(url),
            }
            if attempt:
                attributes["http.request.resend_count"] = attempt
            span.set_attributes(attributes)
        return _Http(self, span)

    def _server_of(self, url: str) -> dict[str, AttributeValue]:
        """``server.address`` and ``server.port`` of ``url``, parsed once per origin."""
        end = url.find("/", url.find("//") + 2)
        origin = url if end < 0 else url[:end]
        server = self._servers.get(origin)
        if server is None:
            parts = urllib.parse.urlsplit(origin)
            server = {"server.port": parts.port or (443 if parts.scheme == "https" else 80)}
            if parts.hostname:
                server["server.address"] = parts.hostname
            if len(self._servers) < 64:
                self._servers[origin] = server
        return server

    def retried(self, operation: str, attempt: int, error: BaseException, delay: float) -> None:
        name = type(error).__name__
        if self._metering():
            self._retries.add(
                1, {"dreambooth.operation": operation, "error.type": name, **self._base_attributes}
            )
        self._trace_api.get_current_span().add_event(
            "dreambooth.retry",
            {
                "dreambooth.operation": operation,
                "dreambooth.retry.attempt": attempt,
                "dreambooth.retry.delay": delay,
                "error.type": name,
            },
        )

    def queue_full(self, error: RateLimitError) -> None:
        if self._metering():
            self._queue_full.add(1, self._base_attributes)
        attributes: dict[str, AttributeValue] = {}
        if error.retry_after is not None:
            attributes["dreambooth.retry_after"] = error.retry_after
        self._trace_api.get_current_span().add_event("dreambooth.queue_full", attributes)

    def job_started(self, trace: JobTrace, *, submitted: bool) -> None:
        if not self._metering():
            return
        if isinstance(trace, _Measured):
            trace.metered = True
        self._pending.add(1, self._base_attributes)
        if submitted:
            self._slots.add(1, self._base_attributes)

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
        if not isinstance(trace, _Measured) or trace.metered:
            self._pending.add(-1, self._base_attributes)
            if submitted:
                self._slots.add(-1, self._base_attributes)
        self._measure(trace, outcome, duration, fetches, resolved_by)
        if trace.ends_with_job:
            trace.finish(outcome, error)

    def job_answered(self, trace: JobTrace, duration: float) -> None:
        # Asked here first: without an SDK this is every generate()'s only telemetry call
        # after its answer, and there is nothing to record.
        if isinstance(trace, _Trace) or self._metering():
            self._measure(trace, "success", duration, 0, "submission")

    def _measure(
        self,
        trace: JobTrace,
        outcome: Outcome,
        duration: float | None,
        fetches: int,
        resolved_by: str | None,
    ) -> None:
        if isinstance(trace, _Trace):
            span = trace.span
            if span.is_recording():
                span.set_attribute("dreambooth.job.fetches", fetches)
                if resolved_by is not None:
                    span.set_attribute("dreambooth.resolved_by", resolved_by)
                    if resolved_by == "webhook":
                        span.add_event("dreambooth.webhook.resolved")
        if not self._metering():
            return
        attributes: dict[str, AttributeValue] = {"dreambooth.api_version": self._api_version}
        if isinstance(trace, _Measured) and trace.model_id is not None:
            attributes["dreambooth.model_id"] = trace.model_id
        attributes["dreambooth.outcome"] = outcome
        if resolved_by is not None:
            attributes["dreambooth.resolved_by"] = resolved_by
        if duration is not None:
            self._duration.record(duration, attributes)
        self._fetches.record(fetches, attributes)
