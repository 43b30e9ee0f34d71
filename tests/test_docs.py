"""The documentation builds with ``mkdocs build --strict``, and every public name has a docstring
that shows up in the generated reference."""

from __future__ import annotations

import html
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import dreambooth_async as dba
import dreambooth_async.emulator as emulator
import dreambooth_async.sync as sync

ROOT = Path(__file__).resolve().parent.parent
PUBLIC: list[tuple[ModuleType, str]] = [
    *((dba, name) for name in dba.__all__),
    *((sync, name) for name in sync.__all__),
    *((emulator, name) for name in emulator.__all__),
]


def own_docstring(obj: object) -> str | None:
    # A class's own docstring, not one inherited from a base (inspect.getdoc would find those).
    if inspect.isclass(obj):
        return obj.__dict__.get("__doc__")
    return getattr(obj, "__doc__", None)


def squashed(text: str) -> str:
    """``text`` without whitespace and inline markup, so that a docstring and the HTML that
    renders it compare equal whatever the tags and line breaks in between."""
    # A reST role shows its target, shortened to the last name with "~" (docs/_griffe_roles.py).
    text = re.sub(
        r":[a-z]+:`(~?)([^`]+)`",
        lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2),
        text,
    )
    return re.sub(r"[\s`*]+", "", text)


def opening(doc: str, words: int = 8) -> str:
    """The docstring's first words, squashed."""
    return squashed(" ".join(doc.split()[:words]))


@pytest.mark.parametrize(
    ("module", "name"),
    [
        (module, name)
        for module, name in PUBLIC
        if inspect.isclass(getattr(module, name)) or inspect.isfunction(getattr(module, name))
    ],
    ids=lambda value: value if isinstance(value, str) else value.__name__,
)
def test_public_classes_and_functions_have_docstrings(module: ModuleType, name: str) -> None:
    doc = own_docstring(getattr(module, name))
    assert doc and doc.strip(), f"{module.__name__}.{name} has no docstring"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (it comes with the `test` extra)")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    yield out


def reference_text(site: Path) -> tuple[str, str]:
    """The reference pages' HTML, and their text without tags, squashed."""
    raw = "".join(page.read_text("utf-8") for page in (site / "reference").rglob("*.html"))
    return raw, squashed(html.unescape(re.sub(r"<[^>]+>", "", raw)))


def test_docs_build_strict_and_document_every_public_name(site: Path) -> None:
    raw, text = reference_text(site)
    missing = []
    undocumented = []
    for module, name in PUBLIC:
        if f'id="{module.__name__}.{name}"' not in raw:
            missing.append(f"{module.__name__}.{name}")
            continue
        doc = own_docstring(getattr(module, name))
        obj = getattr(module, name)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and doc:
            words = opening(doc)
            if words not in text:
                undocumented.append(f"{module.__name__}.{name}: {words!r}")
    assert not missing, f"not in the reference: {missing}"
    assert not undocumented, f"docstrings not shown: {undocumented}"


def test_guide_pages_are_built(site: Path) -> None:
    for page in ("quickstart", "guide/tasks", "guide/errors", "guide/emulator", "changelog"):
        assert (site / page / "index.html").is_file(), page
