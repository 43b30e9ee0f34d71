"""Stable names for batch items: the key of a request, and a file-name stem for a key.

A key is the hash of the request's canonical JSON: ``{"kind": ..., <every field>}`` with the
keys sorted, compact separators, images given as bytes replaced by their SHA-256 and paths by
``{"path": ...}``. Manifests on disk hold these keys, so the text hashed must never change;
:func:`request_key` builds the very same text as the first, field-by-field implementation did
(``tests/test_planning.py`` holds the two side by side), only without the per-field work for
the fields that are plain JSON already (all of them, in the usual request).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from operator import attrgetter
from typing import Any

import attrs

from ._models import GenerationRequest, Img2Img, Inpaint, Text2Img

__all__ = ["KEY_DIGEST_SIZE", "PartialKey", "file_stem", "request_digest", "request_key"]

#: Bytes of a request's digest (its key is their hex: 20 characters).
KEY_DIGEST_SIZE = 10


def _canonical_value(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, os.PathLike):
        return {"path": os.fspath(value)}
    if isinstance(value, dict):
        return {str(k): _canonical_value(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_canonical_value(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _encode_other(value: Any) -> str:
    return _ENCODE(_canonical_value(value))


def _encode_float(value: float) -> str:
    # json writes a finite float as repr() does; NaN and the infinities its own way.
    return float.__repr__(value) if math.isfinite(value) else _ENCODE(value)


def _encode_mapping(value: Any) -> str:
    return "{}" if not value else _encode_other(value)  # ``extra``, empty in most requests


def _encode_bool(value: bool) -> str:
    return "true" if value else "false"


# How the canonical text writes a value of each exact type; any other type (an enum member, a
# path, bytes, a list) goes through _canonical_value and the encoder, as it always did.
_ENCODERS: dict[type, Callable[[Any], str]] = {
    str: encode_basestring_ascii,
    int: int.__repr__,
    bool: _encode_bool,
    float: _encode_float,
    dict: _encode_mapping,
}


#: The text around a request's values: literal pieces, and between them an encoder per value
#: (the value's position, and how it is written).
_Shape = tuple[tuple[str, ...], tuple[tuple[int, Callable[[Any], str]], ...]]


class _Layout:
    """One request class's canonical text, precomputed: the field names in sorted order (with
    ``kind``) and a getter reading every field at once; ``texts`` writes the text of a value
    for every field."""

    def __init__(self, cls: type[GenerationRequest]) -> None:
        self.names = tuple(sorted(a.name for a in attrs.fields(cls)))
        self.kind = json.dumps(cls.kind)
        self.get = attrgetter(*self.names)
        self.texts = _Texts(self, self.names, {})


class _Texts:
    """The canonical text of a layout's requests whose fields ``given`` hold the values passed
    (in that order), every other field its value in ``defaults``: for each combination of the
    given values' types (the fields left None, mostly) the text between them is made once."""

    def __init__(self, layout: _Layout, given: tuple[str, ...], defaults: dict[str, Any]) -> None:
        self._layout = layout
        self._given = {name: i for i, name in enumerate(given)}
        self._defaults = defaults
        self._shapes: dict[tuple[type, ...], _Shape] = {}

    def text(self, values: tuple[Any, ...]) -> str:
        types = tuple(map(type, values))
        pieces, holes = self._shapes.get(types) or self._shape(types)
        parts = [pieces[0]]
        for (position, encode), piece in zip(holes, pieces[1:], strict=True):
            parts.append(encode(values[position]))
            parts.append(piece)
        return "".join(parts)

    def _shape(self, types: tuple[type, ...]) -> _Shape:
        """The literal pieces (the names, the values that are None, the defaults) and the
        holes between them for values of these types."""
        layout = self._layout
        pieces: list[str] = []
        holes: list[tuple[int, Callable[[Any], str]]] = []
        pending = "{"
        for n, name in enumerate(sorted([*layout.names, "kind"])):
            pending += ("," if n else "") + json.dumps(name) + ":"
            if name == "kind":
                pending += layout.kind
                continue
            at = self._given.get(name)
            if at is None:
                value = self._defaults[name]
                kind = type(value)
                pending += "null" if value is None else _ENCODERS.get(kind, _encode_other)(value)
                continue
            kind = types[at]
            if kind is type(None):
                pending += "null"
                continue
            pieces.append(pending)
            pending = ""
            holes.append((at, _ENCODERS.get(kind, _encode_other)))
        pieces.append(pending + "}")
        if len(self._shapes) > 64:  # requests of many shapes: keep the cache small
            self._shapes.clear()
        found = (tuple(pieces), tuple(holes))
        self._shapes[types] = found
        return found


_LAYOUTS = {cls: _Layout(cls) for cls in (Text2Img, Img2Img, Inpaint)}
# json.dumps(..., sort_keys=True, separators=(",", ":"), default=str) for one value (its
# mappings are sorted by _canonical_value already).
_ENCODE = json.JSONEncoder(separators=(",", ":"), default=str).encode


def _canonical_text(request: GenerationRequest) -> str:
    layout = _LAYOUTS.get(type(request))
    if layout is None:  # a subclass of a request class: the general path
        fields = attrs.asdict(request, recurse=False)
        canonical = {"kind": request.kind, **{k: _canonical_value(v) for k, v in fields.items()}}
        return json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    return layout.texts.text(layout.get(request))


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=KEY_DIGEST_SIZE).digest()


def request_digest(request: GenerationRequest) -> bytes:
    """The raw digest behind :func:`request_key` (:data:`KEY_DIGEST_SIZE` bytes): what a
    batch keeps in memory for each item, where the hex text would cost several times more."""
    return _digest(_canonical_text(request))


class PartialKey:
    """:func:`request_digest` of the requests of class ``cls`` (exactly one of the request
    classes, not a subclass) whose fields are ``defaults`` but for ``names``, given as values
    the instance would hold (converted), without building them: the text between the given
    values is made once for each combination of their types."""

    def __init__(
        self, cls: type[GenerationRequest], names: tuple[str, ...], defaults: dict[str, Any]
    ) -> None:
        layout = _LAYOUTS[cls]
        self.names = names
        self._texts = _Texts(
            layout, names, {n: defaults[n] for n in layout.names if n not in names}
        )

    def digest(self, values: tuple[Any, ...]) -> bytes:
        """The digest of the request whose fields ``names`` hold ``values``."""
        return _digest(self._texts.text(values))


def request_key(request: GenerationRequest) -> str:
    """A stable key for ``request``: a hash of its kind and every field.

    Independent of the API version, of the request's position in a batch and of the process,
    so the same request gets the same key in a rerun. Images given as bytes count by content,
    as paths by path.
    """
    return request_digest(request).hex()


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def file_stem(key: str) -> str:
    """A file-name stem for ``key``; keys that needed cleaning get a hash so they stay unique."""
    stem = _UNSAFE.sub("_", key).strip("._")[:80]
    if stem != key or not stem:
        stem = f"{stem[:60]}_{hashlib.blake2b(key.encode(), digest_size=5).hexdigest()}"
    return stem
