"""Which service a ``generate`` run talks to, with which key or keys: the real one (checked
before anything is written) or the embedded emulator; and the webhook receiver, when the
service can reach one."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator

import attrs

from .._client import (
    API_KEY_ENV,
    API_KEY_ENV_FALLBACK,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    api_keys_from_env,
)
from .._urls import is_http_url
from .._webhooks import WebhookReceiver
from .common import CLI_EXTRA, InputError, require_emulator

__all__ = ["Service", "api_keys", "checked_base_url", "service", "webhook_receiver"]


@attrs.frozen
class Service:
    """The service a run talks to."""

    base_url: str | None
    key: str | list[str]
    #: The emulator's time scale (polling follows it), None for the real service.
    scale: float | None = None
    #: The embedded emulator's wallets have no limit: their balance says nothing.
    unlimited_wallet: bool = False


def checked_base_url(args: argparse.Namespace) -> str:
    """The service root the run will use, checked (the client would refuse it later)."""
    if args.base_url:
        url, origin = args.base_url, "--base-url"
    else:
        url = os.environ.get(BASE_URL_ENV, "").strip()
        origin = f"${BASE_URL_ENV}"
        if not url:
            return DEFAULT_BASE_URL
    if not is_http_url(url):
        raise InputError(f"{origin} {url!r} is not an http:// or https:// URL")
    return str(url)


def api_keys(args: argparse.Namespace) -> str | list[str]:
    """The key, or the keys (``--api-key`` repeated, or commas in the variable)."""
    given = args.api_key or []
    keys = [part.strip() for value in given for part in str(value).split(",") if part.strip()]
    keys = keys or api_keys_from_env()
    if not keys:
        raise InputError(
            f"no API key: pass --api-key or set {API_KEY_ENV} or {API_KEY_ENV_FALLBACK} "
            "(or use --emulator)"
        )
    if len(set(keys)) < len(keys):
        raise InputError("--api-key: the same key is given twice (name each account once)")
    return keys[0] if len(keys) == 1 else keys


@contextlib.asynccontextmanager
async def service(args: argparse.Namespace) -> AsyncIterator[Service]:
    """The service to use: the embedded emulator (served meanwhile) or the real one."""
    if not args.emulator:
        yield Service(args.base_url, api_keys(args), args.poll_scale)
        return
    require_emulator("--emulator", CLI_EXTRA)
    from ..emulator import DEFAULT_KEY, EmulatorConfig, serve

    scale = args.emulator_time_scale
    config = EmulatorConfig(
        time_scale=scale, queue_limit=args.emulator_queue_limit, workers=args.emulator_workers
    )
    async with serve(config) as url:
        yield Service(url, DEFAULT_KEY, scale, unlimited_wallet=config.wallet is None)


def webhook_receiver(args: argparse.Namespace) -> WebhookReceiver | None:
    """A receiver when the service can reach us: given a public URL, or the local emulator
    (which calls loopback webhooks). It resolves jobs early and names the job of a
    submission whose answer was lost, so that image is not lost."""
    if not (args.webhook_url or args.webhook_listen or args.emulator):
        return None
    host, _, port = (args.webhook_listen or "127.0.0.1:0").rpartition(":")
    try:
        port_number = int(port)
    except ValueError:
        raise InputError(f"--webhook-listen wants HOST:PORT, not {args.webhook_listen!r}") from None
    return WebhookReceiver(host=host or "127.0.0.1", port=port_number, public_url=args.webhook_url)
