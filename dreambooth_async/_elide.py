"""Short reprs of values that can be huge: an output image sent inline as base64 is tens of
kilobytes of text, which nobody wants in a traceback, a log line or a notebook cell."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ELIDE_AFTER", "elided", "elided_strings"]

#: Strings longer than this many characters are shown by their start and their length.
ELIDE_AFTER = 80
_SHOWN = 48


def elided(text: str) -> str:
    """``repr(text)``, or for a long ``text`` its start and length:
    ``'data:image/png;base64,iVBORw0KGgo...' (13402 chars)``."""
    if len(text) <= ELIDE_AFTER:
        return repr(text)
    return f"{text[:_SHOWN]!r}... ({len(text)} chars)"


def elided_strings(values: Iterable[str]) -> str:
    """A tuple of strings as ``repr`` shows it, each long one :func:`elided`."""
    items = [elided(value) for value in values]
    if len(items) == 1:
        return f"({items[0]},)"
    return f"({', '.join(items)})"
