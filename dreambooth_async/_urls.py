"""URL predicates shared by the requests' validators, the wire converter, inline images, the
notebook display and downloads: the lowest floor, importing nothing of the package."""

from __future__ import annotations

import urllib.parse

__all__ = ["is_http_url", "looks_like_url"]


def is_http_url(value: str) -> bool:
    """True for an absolute http(s) URL with a host (and a valid port, if it names one)."""
    # urlsplit silently drops tabs and newlines, so look for whitespace and controls first.
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return False
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def looks_like_url(value: object) -> bool:
    """True for a string that claims to be an http(s) URL (scheme in any case): such a value
    is checked and sent as a URL, never read as a local path."""
    return isinstance(value, str) and value[:8].lower().startswith(("http://", "https://"))
