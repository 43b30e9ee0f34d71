"""A griffe extension for the docs build: the package's docstrings use reST roles
(``:class:`Job```, ``:meth:`~x.Y.z```), which Markdown would show literally. This turns each
into inline code naming the target (``Job``, ``z``), and a paragraph-ending ``::`` into ``:``
(a ``::`` alone on its line goes: the indented block after it is code in Markdown too).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|exc|mod|data|obj|const):`(~?)([^`]+)`")
_LITERAL = re.compile(r"(?m)(\S)::$")
_LITERAL_ALONE = re.compile(r"(?m)^[ \t]*::[ \t]*\n")


def _role(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRoles(griffe.Extension):
    """Rewrite reST roles in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = _ROLE.sub(_role, obj.docstring.value)
            text = _LITERAL_ALONE.sub("", text)
            obj.docstring.value = _LITERAL.sub(r"\1:", text)
