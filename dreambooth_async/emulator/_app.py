"""HTTP: the service's routes, request-level faults, and the ``/_emulator/`` admin routes."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler as WebHandler

from . import _bodies as bodies
from ._config import EmulatorConfig
from ._jobs import BASE64_SUFFIX
from ._params import Kind, Version
from ._service import Reply, Service

SERVICE = web.AppKey("dreambooth_emulator_service", Service)

#: One INFO line per request served (``-v``), DEBUG details of the faults and replies (``-vv``).
#: Never a body, a header or a query string: the API key travels in those.
log = logging.getLogger("dreambooth_async.emulator")

_NOT_JSON = object()

Handler = Callable[[Service, web.Request, Any], Awaitable[Reply]]


def retry_after_header(seconds: float) -> str:
    """Whole seconds when whole, else decimals: under a time scale waits are fractions of a
    second, and rounding them up to 1 would make every test wait for nothing. A client should
    parse the header as a float."""
    if seconds >= 1 or seconds == 0:
        return str(math.ceil(seconds - 1e-9))
    return f"{max(seconds, 0.001):.3f}"


async def _read_json(request: web.Request, *, empty_ok: bool = False) -> Any:
    raw = await request.read()
    if empty_ok and not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _NOT_JSON


def _key_from_request(request: web.Request, body: Any, *, header: bool, query: bool) -> Any:
    """The body, with the key taken from the ``key`` header (v7) or the ``?key=`` query (GET
    request_count) when the body has none. A key in the body always wins."""
    if not isinstance(body, dict) or body.get("key") is not None:
        return body
    key = request.headers.get("key") if header else None
    if key is None and query and request.method == "GET":
        key = request.query.get("key")
    return body if key is None else {**body, "key": key}


def _abort(request: web.Request) -> web.Response:
    transport = request.transport
    if transport is not None:
        transport.abort()
    # Never written: the connection is gone. aiohttp needs a return value all the same.
    return web.Response(status=500)


def _path(request: web.Request) -> str:
    # As sent, percent-encoded: a decoded path could carry a newline into the log. Without the
    # query string, where GET request_count takes the key.
    return request.rel_url.raw_path


@web.middleware
async def _log_requests(request: web.Request, handler: WebHandler) -> web.StreamResponse:
    if not log.isEnabledFor(logging.INFO):
        return await handler(request)
    started = time.perf_counter()
    status = "500"
    try:
        response = await handler(request)
        transport = request.transport
        # The drop faults abort the connection and hand aiohttp a response it never writes.
        if transport is None or transport.is_closing():
            status = "- (connection dropped)"
        else:
            status = str(response.status)
        return response
    except web.HTTPException as exc:
        status = str(exc.status)
        raise
    except asyncio.CancelledError:
        status = "- (client went away)"
        raise
    finally:
        elapsed = (time.perf_counter() - started) * 1000
        log.info("%s %s %s %.1f ms", request.method, _path(request), status, elapsed)


def _log_details(request: web.Request, fault: str | None, reply: Reply | None) -> None:
    """``-vv``: which fault was drawn and what the service answered, by its status and job id
    only (service texts can quote fields of the request)."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    body = reply.body if reply is not None and isinstance(reply.body, dict) else {}
    answer = body.get("status")
    job_id = body.get("id")
    log.debug(
        "%s %s: fault=%s answer=%s id=%s",
        request.method,
        _path(request),
        fault or "none",
        answer if isinstance(answer, str) else "-",
        job_id if isinstance(job_id, int) else "-",
    )


def _respond(service: Service, reply: Reply) -> web.Response:
    status = 200
    headers: dict[str, str] = {}
    if service.config.http_errors and reply.error_status is not None:
        status = reply.error_status
        if status == 429 and reply.retry_after is not None:
            headers["Retry-After"] = retry_after_header(reply.retry_after)
    return web.json_response(reply.body, status=status, headers=headers)


def _api(
    handler: Handler,
    *,
    counted: str | None = None,
    faulty: bool = False,
    key_header: bool = False,
    key_query: bool = False,
) -> WebHandler:
    """Wrap a service call: count it, inject request-level faults, render the reply.

    ``faulty`` marks the submissions and fetches, the only calls request-level faults hit.
    ``key_header`` (v7) and ``key_query`` (GET request_count) let the key come from elsewhere
    when the body has none; those endpoints also take an empty body as ``{}``.
    """

    async def handle(request: web.Request) -> web.StreamResponse:
        service = request.app[SERVICE]
        stats = service.stats
        if counted == "submission":
            stats.submissions_received += 1
        elif counted == "fetch":
            stats.fetches += 1
        fault = service.faults.draw_request() if faulty else None
        if fault is not None:
            stats.faults[fault] += 1
            if fault in ("5xx", "drop_before", "429"):
                _log_details(request, fault, None)
        if fault == "5xx":
            status = service.faults.last_5xx_status
            return web.Response(
                status=status, text=bodies.html_error(status), content_type="text/html"
            )
        if fault == "drop_before":
            return _abort(request)
        if fault == "429":
            wait = service.config.scaled(service.config.faults.retry_after_429)
            return web.json_response(
                bodies.too_many_requests(wait),
                status=429,
                headers={"Retry-After": retry_after_header(wait)},
            )
        body = await _read_json(request, empty_ok=key_header or key_query)
        if key_header or key_query:
            body = _key_from_request(request, body, header=key_header, query=key_query)
        if body is _NOT_JSON:
            reply = Reply(bodies.INVALID_JSON, 400)
            if counted == "submission":
                stats.rejected_invalid += 1
        else:
            reply = await handler(service, request, body)
        _log_details(request, fault, reply)
        if fault == "drop_after":
            return _abort(request)
        if fault == "slow":
            await asyncio.sleep(service.config.scaled(service.config.faults.slow_delay))
        return _respond(service, reply)

    return handle


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _own_port(request: web.Request) -> int | None:
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    return int(sockname[1]) if isinstance(sockname, tuple) and len(sockname) >= 2 else None


def _submission(kind: Kind, version: Version) -> WebHandler:
    async def call(service: Service, request: web.Request, body: Any) -> Reply:
        return await service.submit(
            body, kind=kind, version=version, origin=_origin(request), own_port=_own_port(request)
        )

    return _api(call, counted="submission", faulty=True, key_header=version == "v7")


def _fetch(version: Version) -> WebHandler:
    async def call(service: Service, request: web.Request, body: Any) -> Reply:
        return await service.fetch(body, version=version, path_id=request.match_info.get("id"))

    return _api(call, counted="fetch", faulty=True, key_header=version == "v7")


def _call(method: Callable[[Service, Any], Reply]) -> Handler:
    async def call(service: Service, request: web.Request, body: Any) -> Reply:
        return method(service, body)

    return call


def _plain(method: Callable[[Service, Any], Reply]) -> WebHandler:
    return _api(_call(method))


async def _generation(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    data = await request.app[SERVICE].output_file(name)
    if data is None:
        raise web.HTTPNotFound(text="Not Found")
    if name.endswith(BASE64_SUFFIX):
        content_type = "text/plain"
    elif name.endswith(".png"):
        content_type = "image/png"
    else:
        content_type = "image/jpeg"
    return web.Response(body=data, content_type=content_type)


async def _sample(request: web.Request) -> web.StreamResponse:
    data = request.app[SERVICE].images.sample(request.match_info["name"])
    if data is None:
        raise web.HTTPNotFound(text="Not Found")
    return web.Response(body=data, content_type="image/png")


async def _admin_stats(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[SERVICE].stats.to_json())


async def _admin_job(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    try:
        job = service.jobs.get(int(request.match_info["id"]))
    except ValueError:
        job = None
    if job is None:
        raise web.HTTPNotFound(text="no such job")
    return web.json_response(job.to_json())


async def _start(app: web.Application) -> None:
    await app[SERVICE].start()


async def _close(app: web.Application) -> None:
    await app[SERVICE].aclose()


def build_app(
    config: EmulatorConfig | None = None, *, service: Service | None = None
) -> web.Application:
    """The emulator as an aiohttp application, for ``web.run_app``, an ``AppRunner`` or
    aiohttp's test client. Pass ``service`` to keep a handle on its state (``Emulator`` does)."""
    if service is None:
        service = Service(config or EmulatorConfig())
    elif config is not None and config is not service.config:
        raise ValueError("pass either config or service, not both")
    app = web.Application(
        client_max_size=service.config.max_body_bytes, middlewares=[_log_requests]
    )
    app[SERVICE] = service
    app.on_startup.append(_start)
    app.on_cleanup.append(_close)
    add = app.router.add_post
    families: tuple[tuple[Version, str], ...] = (
        ("v3", "/api/v3/dreambooth"),
        ("v4", "/api/v4/dreambooth"),
    )
    for version, prefix in families:
        add(prefix, _submission("text2img", version))
        add(f"{prefix}/img2img", _submission("img2img", version))
        add(f"{prefix}/inpaint", _submission("inpaint", version))
        add(f"{prefix}/fetch/{{id}}", _fetch(version))
    add("/api/v4/dreambooth/fetch", _fetch("v4"))
    add("/api/v4/dreambooth/model_reload", _plain(Service.model_reload))
    add("/api/v4/dreambooth/model_list", _plain(Service.model_list))
    add("/api/v3/system_load", _plain(Service.system_load))
    add("/api/v6/images/text2img", _submission("text2img", "v6"))
    add("/api/v6/images/img2img", _submission("img2img", "v6"))
    add("/api/v6/images/inpaint", _submission("inpaint", "v6"))
    add("/api/v6/images/fetch", _fetch("v6"))
    add("/api/v6/images/fetch/{id}", _fetch("v6"))
    add("/api/v7/images/text-to-image", _submission("text2img", "v7"))
    add("/api/v7/images/image-to-image", _submission("img2img", "v7"))
    add("/api/v7/images/inpaint", _submission("inpaint", "v7"))
    add("/api/v7/images/fetch/{id}", _fetch("v7"))
    add("/api/wallet_balance", _plain(Service.wallet_balance))
    # The page says GET with the key in a JSON body, its OpenAPI file says POST: both answer.
    request_count = _api(_call(Service.request_count), key_query=True)
    add("/api/v6/processing/request_count", request_count)
    app.router.add_get("/api/v6/processing/request_count", request_count)
    app.router.add_get("/generations/{name}", _generation)
    app.router.add_get("/samples/{name}", _sample)
    app.router.add_get("/_emulator/stats", _admin_stats)
    app.router.add_get("/_emulator/jobs/{id}", _admin_job)
    return app
