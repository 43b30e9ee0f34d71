"""Rich display of results in Jupyter: an HTML summary with the images, and a PNG fallback.

IPython calls the ``_repr_*_`` methods synchronously, in the kernel's main thread, while the
kernel's event loop is running there; so fetching uses blocking ``urllib`` with a short timeout
(never the client's aiohttp session, which belongs to some event loop) and gives up quietly:
a display must never raise. Fetched images are cached by URL, so showing a result again costs
nothing; the cache is bounded.
"""

from __future__ import annotations

import collections
import html
import threading
import urllib.request
from collections.abc import Mapping
from typing import Any, Protocol

from ._urls import is_http_url

__all__ = ["clear_cache", "fetch_png", "result_html"]


class Shown(Protocol):
    """What the display reads of a result (a :class:`GenerationResult` has it all)."""

    @property
    def id(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def output(self) -> tuple[str, ...]: ...
    @property
    def generation_time(self) -> float | None: ...
    @property
    def meta(self) -> Mapping[str, Any]: ...
    @property
    def nsfw_content_detected(self) -> bool | None: ...


#: Seconds a display waits for an image before showing nothing.
FETCH_TIMEOUT = 10.0
#: Largest image the display fetches.
MAX_IMAGE_BYTES = 32 * 1024 * 1024
#: How many fetched images are kept.
CACHE_SIZE = 64

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    # urllib would follow a redirect to ftp:, too; an image URL has no reason to leave http(s).
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not is_http_url(newurl):
            return None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_HttpOnlyRedirects)
_cache: collections.OrderedDict[str, bytes] = collections.OrderedDict()
_cache_lock = threading.Lock()

# What the summary shows from ``meta``, in this order, when present.
_META_FIELDS = (
    "model_id",
    "prompt",
    "negative_prompt",
    "W",
    "H",
    "steps",
    "guidance_scale",
    "scheduler",
    "seed",
)


def fetch_png(url: str, *, timeout: float = FETCH_TIMEOUT) -> bytes | None:
    """The PNG at ``url``, fetched once and cached; None when it is not a PNG or cannot be had.

    Only http(s) URLs are fetched (a result's URLs come from the service, and ``file:`` or other
    schemes have no business in a display).
    """
    if not is_http_url(url):
        return None
    with _cache_lock:
        cached = _cache.get(url)
        if cached is not None:
            _cache.move_to_end(url)
            return cached
    try:
        request = urllib.request.Request(url, headers={"Accept": "image/png,image/*"})
        with _opener.open(request, timeout=timeout) as response:
            data: bytes = response.read(MAX_IMAGE_BYTES + 1)
    except Exception:
        # Expired output, no network, a slow CDN, a broken answer: a display must not raise;
        # the HTML view still shows the rest of the result.
        return None
    if len(data) > MAX_IMAGE_BYTES or not data.startswith(_PNG_SIGNATURE):
        return None
    with _cache_lock:
        _cache[url] = data
        _cache.move_to_end(url)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return data


def clear_cache() -> None:
    """Forget every fetched image."""
    with _cache_lock:
        _cache.clear()


def _text(value: Any, limit: int = 160) -> str:
    shown = str(value)
    if len(shown) > limit:
        shown = shown[: limit - 1] + "…"
    return html.escape(shown, quote=True)


def _summary(result: Shown) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [("id", str(result.id)), ("status", result.status)]
    if result.generation_time is not None:
        rows.append(("generation time", f"{result.generation_time:.2f} s"))
    meta: Mapping[str, Any] = result.meta if isinstance(result.meta, Mapping) else {}
    for name in _META_FIELDS:
        value = meta.get(name)
        if value not in (None, ""):
            rows.append((name, str(value)))
    if result.nsfw_content_detected:
        rows.append(("nsfw content detected", "yes"))
    return rows


def result_html(result: Shown, *, thumbnail: int = 256) -> str:
    """An HTML fragment: one ``<img>`` per output URL, then a table of what the service said.

    Every value is escaped; only http(s) URLs become image sources (anything else is listed as
    text).
    """
    images = []
    others = []
    for index, url in enumerate(result.output):
        if is_http_url(url):
            src = html.escape(url, quote=True)
            images.append(
                f'<a href="{src}" target="_blank" rel="noopener noreferrer">'
                f'<img src="{src}" alt="output {index}" loading="lazy" '
                f'style="max-width:{thumbnail}px;max-height:{thumbnail}px;margin:2px"></a>'
            )
        else:
            others.append(f"<li><code>{_text(url)}</code></li>")
    rows = "".join(
        f'<tr><th style="text-align:left;padding-right:1em">{_text(name)}</th>'
        f'<td style="text-align:left">{_text(value)}</td></tr>'
        for name, value in _summary(result)
    )
    parts = ['<div class="dreambooth-result">']
    if images:
        parts.append(f"<div>{''.join(images)}</div>")
    elif not others:
        parts.append("<div><em>no output images</em></div>")
    if others:
        parts.append(f"<ul>{''.join(others)}</ul>")
    parts.append(f"<table>{rows}</table></div>")
    return "".join(parts)
