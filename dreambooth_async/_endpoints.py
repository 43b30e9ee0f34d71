"""Where each call goes: paths per API version, the fetch target, and the origin rules that keep
the key (it travels in the body) from going anywhere but the service."""

from __future__ import annotations

import ipaddress
import urllib.parse
import warnings
from collections.abc import Mapping
from typing import Any

from ._models import ApiVersion
from ._transport import logger
from ._urls import is_http_url

__all__ = [
    "MODEL_LIST",
    "MODEL_RELOAD",
    "PATHS",
    "REQUEST_COUNT",
    "SYSTEM_LOAD",
    "WALLET_BALANCE",
    "fetch_target",
    "is_loopback",
    "same_origin",
    "warn_if_plain_http",
]

# Paths per API version (docs/protocol.md, "Base URL and API versions").
PATHS: Mapping[ApiVersion, Mapping[str, str]] = {
    "v3": {
        "text2img": "/api/v3/dreambooth",
        "img2img": "/api/v3/dreambooth/img2img",
        "inpaint": "/api/v3/dreambooth/inpaint",
        "fetch": "/api/v3/dreambooth/fetch/{id}",
    },
    "v4": {
        "text2img": "/api/v4/dreambooth",
        "img2img": "/api/v4/dreambooth/img2img",
        "inpaint": "/api/v4/dreambooth/inpaint",
        "fetch": "/api/v4/dreambooth/fetch",
    },
    "v6": {
        "text2img": "/api/v6/images/text2img",
        "img2img": "/api/v6/images/img2img",
        "inpaint": "/api/v6/images/inpaint",
        "fetch": "/api/v6/images/fetch",
    },
    "v7": {
        "text2img": "/api/v7/images/text-to-image",
        "img2img": "/api/v7/images/image-to-image",
        "inpaint": "/api/v7/images/inpaint",
        "fetch": "/api/v7/images/fetch/{id}",
    },
}
REQUEST_COUNT = "/api/v6/processing/request_count"
WALLET_BALANCE = "/api/wallet_balance"
SYSTEM_LOAD = "/api/v3/system_load"
MODEL_LIST = "/api/v4/dreambooth/model_list"
MODEL_RELOAD = "/api/v4/dreambooth/model_reload"


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    # "https://host" and "https://host:443" are the same origin.
    return scheme, parts.hostname, parts.port or _DEFAULT_PORTS.get(scheme)


def same_origin(a: str, b: str) -> bool:
    return _origin(a) == _origin(b)


def fetch_target(
    base_url: str, version: ApiVersion, job_id: str, fetch_url: str | None
) -> tuple[str, dict[str, Any]]:
    """The URL and body (beyond the key) of a fetch call for ``job_id``.

    Follows the service's ``fetch_result`` URL (it may name another version's path), but only
    on the client's own origin: the key travels in the body, so it must go nowhere else.
    """
    if fetch_url and is_http_url(fetch_url) and same_origin(fetch_url, base_url):
        url = fetch_url
    else:
        if fetch_url:
            logger.warning("not following fetch_result on another origin: %s", fetch_url)
        # Quoted: the id comes from the service or the caller, not from this library.
        quoted = urllib.parse.quote(job_id, safe="")
        url = base_url + PATHS[version]["fetch"].format(id=quoted)
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/"))
    # An id in the path (v3, v7, and fetch_result URLs) is the whole request; otherwise the
    # body names it (v4, v6).
    body: dict[str, Any] = {} if path.endswith("/" + job_id) else {"request_id": job_id}
    return url, body


def is_loopback(host: str) -> bool:
    # An address, not a prefix: "127.0.0.1.nip.io" is a name anyone can point anywhere.
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_plain_http(base_url: str) -> None:
    parts = urllib.parse.urlsplit(base_url)
    host = parts.hostname or ""
    if parts.scheme == "http" and not is_loopback(host):
        warnings.warn(
            f"base_url {base_url!r} is plain http: the API key would travel unencrypted",
            stacklevel=3,
        )
