"""One conversion of a request field's value to the Python type the request class declares.

Values come as text (a CSV cell, a command-line option, a prompts line), as JSON (a JSONL row,
the ``meta`` of a result) or in the wire form (``"512"``, ``"yes"``): :func:`structure_field`
reads every one of them by the same rules, taken from the field's annotation in ``_models``,
so the command line, the wire reader and anything else agree on what ``"12"`` means for
``steps``. Limits (``steps`` 1..50, a scheduler's name) stay the request class's own checks,
run when the request is built.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from typing import Any

import cattrs

from . import _models
from ._models import GenerationRequest, Img2Img, Inpaint, Scheduler, Text2Img

__all__ = ["REQUEST_CLASSES", "field_types", "structure_field", "value_type"]

#: The request class of each endpoint family, by its ``kind``.
REQUEST_CLASSES: Mapping[str, type[GenerationRequest]] = {
    "text2img": Text2Img,
    "img2img": Img2Img,
    "inpaint": Inpaint,
}

_YES = frozenset({"yes", "true", "1", "on", "y"})
_NO = frozenset({"no", "false", "0", "off", "n"})

# The hooks raise ValueError saying what was expected; structure_field puts the field's name
# in front ("steps: expected an integer, got 'many'").


def _integer(value: Any, _: Any) -> int:
    if isinstance(value, bool):  # JSON true is no number of steps
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected an integer, got {value!r}")


def _number(value: Any, _: Any) -> float:
    if not isinstance(value, bool):
        try:
            if isinstance(value, int | float):
                return float(value)
            if isinstance(value, str):
                return float(value.strip())
        except (ValueError, OverflowError):  # OverflowError: an integer past float's range
            pass
    raise ValueError(f"expected a number, got {value!r}")


def _flag(value: Any, _: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _YES:
            return True
        if word in _NO:
            return False
    raise ValueError(f"expected yes or no, got {value!r}")


def _text(value: Any, _: Any) -> str:
    # A StrEnum (Scheduler) is text too: the request class turns a name into its member and
    # reports a name it does not know.
    if isinstance(value, str):
        return value
    raise ValueError(f"expected text, got {value!r}")


def _text_or_integer(value: Any, _: Any) -> str | int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return _text(value, None)


def _image(value: Any, _: Any) -> str | os.PathLike[str] | bytes:
    # Text is a URL or a path (the request class checks which); bytes come from base64 on the
    # wire, after decoding.
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, bytes | os.PathLike):
        return value
    return _text(value, None)


def _reader() -> cattrs.Converter:
    conv = cattrs.Converter()
    conv.register_structure_hook(int, _integer)
    conv.register_structure_hook(float, _number)
    conv.register_structure_hook(bool, _flag)
    conv.register_structure_hook(str, _text)
    conv.register_structure_hook(Scheduler, _text)
    # Optional[X] goes through X's hook (None stays None); these unions need hooks of their own.
    conv.register_structure_hook(str | int | None, _text_or_integer)
    conv.register_structure_hook(str | os.PathLike[str] | bytes, _image)
    return conv


_READER = _reader()


_FIELD_TYPES: dict[type[GenerationRequest], Mapping[str, Any]] = {}


def field_types(cls: type[GenerationRequest]) -> Mapping[str, Any]:
    """Each field of ``cls`` and its annotation, resolved."""
    types = _FIELD_TYPES.get(cls)
    if types is None:
        # The annotations are strings (postponed) written in _models' namespace; the public
        # classes name ``dreambooth_async`` as their module, which does not import what they
        # name.
        hints = typing.get_type_hints(cls, globalns=vars(_models))
        types = _FIELD_TYPES[cls] = {
            name: hint
            for name, hint in hints.items()
            if typing.get_origin(hint) is not typing.ClassVar
        }
    return types


def value_type(cls: type[GenerationRequest], name: str) -> Any:
    """The type of field ``name`` of ``cls`` without its None (``int`` for ``int | None``)."""
    hint = field_types(cls)[name]
    members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if isinstance(hint, type) or not members:
        return hint
    return members[0] if len(members) == 1 else hint


def structure_field(cls: type[GenerationRequest], name: str, value: Any) -> Any:
    """``value`` as field ``name`` of ``cls`` holds it: ``"512"`` and ``512.0`` as ``512``,
    ``"yes"``/``"no"`` (``true``, ``on``, ``1``...) as a bool, text as text; None stays None.

    Raises ValueError naming the field and what it expected (``steps: expected an integer,
    got 'many'``); KeyError for a name ``cls`` has no field for.
    """
    hint = field_types(cls)[name]
    if value is None:
        return None  # the request class says whether the field may be None
    try:
        return _READER.structure(value, hint)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
