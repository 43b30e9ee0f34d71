"""A web app that generates an image per request, sharing one client for its whole life.

    DREAMBOOTH_API_KEY=... python examples/webapp.py --port 8080
    curl -X POST localhost:8080/generate -H 'content-type: application/json' \\
         -d '{"prompt": "a lighthouse at dusk"}'

Against the local emulator (no key, no cost)::

    python -m dreambooth_async.emulator --port 7860 --time-scale 0.05 &
    DREAMBOOTH_API_KEY=emulator-key python examples/webapp.py --base-url http://127.0.0.1:7860

The client is opened in the app's lifespan (aiohttp's ``cleanup_ctx``), not per request: one
HTTP connection pool, one background poller for every pending job, and one place that closes
them when the server stops. Every request handler just awaits ``client.generate``; a hundred
concurrent requests cost a hundred pending jobs in one poller, not a hundred polling loops.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

import dreambooth_async as dba

CLIENT = web.AppKey("dreambooth_client", dba.DreamboothClient)


def build_app(
    *,
    base_url: str = dba.DEFAULT_BASE_URL,
    api_key: str | None = None,
    model_id: str = "midjourney",
    job_timeout: float = 300.0,
    poll: dba.PollPolicy | None = None,
) -> web.Application:
    """The application: ``POST /generate {"prompt": ...}`` answers the image URLs."""
    app = web.Application()

    async def dreambooth_client(app: web.Application) -> AsyncIterator[None]:
        # Everything before `yield` runs at startup, everything after it at shutdown.
        async with dba.DreamboothClient(api_key, base_url=base_url, poll=poll) as client:
            app[CLIENT] = client
            yield

    async def generate(request: web.Request) -> web.Response:
        try:
            body: Any = await request.json()
        except ValueError:
            return _error(400, "the body must be JSON")
        if not isinstance(body, dict):
            return _error(400, 'the body must be an object like {"prompt": "..."}')
        try:
            # Validated here, before any network call: a bad field is the caller's error.
            generation = dba.Text2Img(
                model_id=body.get("model_id", model_id),
                prompt=body.get("prompt"),
                width=body.get("width", 512),
                height=body.get("height", 512),
                seed=body.get("seed"),
            )
        except dba.RequestValidationError as error:
            return _error(400, str(error), field=error.field)
        try:
            result = await request.app[CLIENT].generate(generation, timeout=job_timeout)
        except dba.RateLimitError as error:
            headers = {"Retry-After": f"{error.retry_after:.0f}"} if error.retry_after else None
            return _error(429, "the image service is busy; try again shortly", headers=headers)
        except dba.JobTimeout as error:
            # The job goes on; a client could come back for it by id.
            return _error(504, "the image is taking too long", job_id=error.job_id)
        except dba.DreamboothError as error:
            return _error(502, f"the image service failed: {error}")
        return web.json_response(
            {
                "id": result.id,
                "images": list(result.output),
                "seed": result.seed,
                "generation_time": result.generation_time,
            }
        )

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.cleanup_ctx.append(dreambooth_client)
    app.router.add_post("/generate", generate)
    app.router.add_get("/health", health)
    return app


def _error(
    status: int, message: str, *, headers: dict[str, str] | None = None, **fields: Any
) -> web.Response:
    return web.json_response({"error": message, **fields}, status=status, headers=headers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--base-url",
        default=os.environ.get("DREAMBOOTH_BASE_URL", dba.DEFAULT_BASE_URL),
        help="the service, or an emulator (default: $DREAMBOOTH_BASE_URL or the real service)",
    )
    parser.add_argument("--model-id", default="midjourney")
    args = parser.parse_args(argv)
    # The key comes from DREAMBOOTH_API_KEY: never from the command line, where `ps` shows it.
    app = build_app(base_url=args.base_url, model_id=args.model_id)
    web.run_app(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
