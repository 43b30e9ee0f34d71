"""A FastAPI app that generates an image per request, with the webhook receiver mounted in the
same app and OpenTelemetry wired.

    pip install "dreambooth-async[otel]" fastapi uvicorn
    DREAMBOOTH_API_KEY=... DREAMBOOTH_PUBLIC_URL=https://images.example.com \\
        python examples/fastapi_app.py --port 8000
    curl -X POST localhost:8000/generate -H 'content-type: application/json' \\
         -d '{"prompt": "a lighthouse at dusk"}'

Against the local emulator (no key, no cost; the emulator calls webhooks on loopback)::

    python -m dreambooth_async.emulator --port 7860 --time-scale 0.05 &
    DREAMBOOTH_API_KEY=emulator-key python examples/fastapi_app.py \\
        --base-url http://127.0.0.1:7860 --public-url http://127.0.0.1:8000 --otel-console

- One client for the app's life, opened in its lifespan: one connection pool and one poller
  for every pending job, whatever the number of concurrent requests.
- The webhook receiver is mounted at its path in this same app (``app.mount(receiver.path,
  receiver.asgi())``), so the service's completion calls reach the server that already has a
  public URL; each call only makes the client fetch that job now (the fetch is the service's
  word), and polling stays the fallback.
- Telemetry: the client reports spans and metrics to OpenTelemetry's global providers. Set them
  up however your platform does (``opentelemetry-instrument``, an OTLP exporter...);
  ``--otel-console`` prints them, for a look. Inside an instrumented request the generation
  span is a child of the request's span, so a slow request shows the job it waited on.

In production run one client per worker process (each uvicorn worker runs this lifespan): the
account's queue slots are shared by every worker and replica on the same key.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import dreambooth_async as dba


class GenerateBody(BaseModel):
    """What ``POST /generate`` takes."""

    prompt: Any = None
    model_id: str | None = None
    width: int = 512
    height: int = 512
    seed: int | None = None


def create_app(
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    public_url: str | None = None,
    model_id: str = "midjourney",
    job_timeout: float = 300.0,
    poll: dba.PollPolicy | None = None,
    telemetry: bool | dba.TelemetryOptions = True,
) -> FastAPI:
    """The application. ``public_url`` is where the service can reach this app (None: no
    webhooks, polling only)."""
    receiver = (
        dba.WebhookReceiver(serve=False, public_url=public_url) if public_url is not None else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with dba.DreamboothClient(
            api_key, base_url=base_url, poll=poll, webhooks=receiver, telemetry=telemetry
        ) as client:
            app.state.dreambooth = client
            yield

    app = FastAPI(lifespan=lifespan)
    if receiver is not None:
        # The receiver answers on its own path of this app; it needs no route of FastAPI's.
        app.mount(receiver.path, receiver.asgi())
        app.state.webhooks = receiver

    @app.post("/generate")
    async def generate(body: GenerateBody, request: Request) -> Any:
        client: dba.DreamboothClient = request.app.state.dreambooth
        try:
            # Validated here, before any network call: a bad field is the caller's error.
            generation = dba.Text2Img(
                model_id=body.model_id or model_id,
                prompt=body.prompt,
                width=body.width,
                height=body.height,
                seed=body.seed,
            )
        except dba.RequestValidationError as error:
            return _error(400, str(error), field=error.field)
        try:
            result = await client.generate(generation, timeout=job_timeout)
        except dba.RateLimitError as error:
            headers = {"Retry-After": f"{error.retry_after:.0f}"} if error.retry_after else None
            return _error(429, "the image service is busy; try again shortly", headers=headers)
        except dba.JobTimeout as error:
            # The job goes on; a client could come back for it by id.
            return _error(504, "the image is taking too long", job_id=error.job_id)
        except dba.DreamboothError as error:
            return _error(502, f"the image service failed: {error}")
        return {
            "id": result.id,
            "images": list(result.output),
            "seed": result.seed,
            "generation_time": result.generation_time,
        }

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    return app


def _error(
    status: int, message: str, *, headers: dict[str, str] | None = None, **fields: Any
) -> JSONResponse:
    return JSONResponse({"error": message, **fields}, status_code=status, headers=headers)


def print_telemetry() -> None:
    """Set OpenTelemetry's global providers to print spans and metrics (needs
    ``opentelemetry-sdk``): for a look, not for production."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    reader = PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=10_000)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--base-url",
        default=os.environ.get("DREAMBOOTH_BASE_URL", dba.DEFAULT_BASE_URL),
        help="the service, or an emulator (default: $DREAMBOOTH_BASE_URL or the real service)",
    )
    parser.add_argument(
        "--public-url",
        default=os.environ.get("DREAMBOOTH_PUBLIC_URL"),
        help="where the service can reach this app, for webhooks (default: "
        "$DREAMBOOTH_PUBLIC_URL; none: polling only)",
    )
    parser.add_argument("--model-id", default="midjourney")
    parser.add_argument(
        "--otel-console", action="store_true", help="print spans and metrics on stdout"
    )
    args = parser.parse_args(argv)
    if args.otel_console:
        print_telemetry()
    # The key comes from DREAMBOOTH_API_KEY: never from the command line, where `ps` shows it.
    app = create_app(base_url=args.base_url, public_url=args.public_url, model_id=args.model_id)
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
