"""Outputs that carry the image itself: base64, as the service answers to ``"base64": "yes"``.

The docs say only that the output "is base64 string"; seen in the wild are data URLs
(``data:image/png;base64,...``), bare base64 strings, and links ending in ``.base64`` whose body
is base64 text (sometimes itself a data URL). Every decoded image is checked by its magic bytes,
so that text which merely looks like base64 is never saved as an image.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse

from ._urls import looks_like_url

__all__ = ["decode_base64_image", "image_extension", "inline_image", "is_base64_link"]

_DATA_URL = re.compile(r"^data:([\w.+/-]*)((?:;[\w.+-]+=[^;,]*)*)(;base64)?,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
# Bare base64 is told from a relative link or a file name by its alphabet alone.
_BASE64_ALPHABET = re.compile(r"^[A-Za-z0-9+/_-]+={0,2}$")


def image_extension(data: bytes) -> str | None:
    """``.png``, ``.jpg``, ``.webp`` or ``.gif`` by the file's magic bytes; None otherwise."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    return None


def decode_base64_image(text: str | bytes) -> bytes | None:
    """The image in ``text`` (a data URL or bare base64), or None when it holds no image."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    text = text.strip()
    match = _DATA_URL.match(text)
    if match is not None:
        if not match.group(3):
            return None  # a percent-encoded data URL: not an image encoding the service uses
        text = text[match.end() :]
    compact = _WHITESPACE.sub("", urllib.parse.unquote(text) if "%" in text else text)
    if not compact or not _BASE64_ALPHABET.match(compact):
        return None
    padded = compact + "=" * (-len(compact) % 4)
    try:
        if "-" in padded or "_" in padded:
            data = base64.urlsafe_b64decode(padded)
        else:
            data = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if image_extension(data) is not None else None


def inline_image(output: str) -> bytes | None:
    """The image an ``output`` entry holds in itself; None for a link (fetched by download)."""
    if looks_like_url(output):
        return None
    return decode_base64_image(output)


def is_base64_link(url: str) -> bool:
    """True for a link whose body is base64 text rather than the image (``.../x.base64``)."""
    return urllib.parse.urlsplit(url).path.lower().endswith(".base64")
