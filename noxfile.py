"""Developer sessions.

``nox -s lint typecheck tests``; ``nox -s bench -- --quick``; ``nox -s chaos``.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite, warnings as errors (configured in pyproject.toml)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint (SLF001 included: no private reads across objects), import order, format."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install("-e", ".[test]", "mypy>=1.10")
    session.run("mypy", "--strict", "dreambooth_async")


@nox.session(python=PYTHON)
def chaos(session: nox.Session) -> None:
    """The long fault-injection and kill/restart runs (marker ``slow``)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "-m", "slow", "--timeout=1800", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Every benchmark, each against its own emulator process (``-- --quick``: a short run)."""
    # The peers of the overhead benchmark: httpx (with sniffio, without which httpcore retries
    # a failed import on every request), and the official SDK, whose client module imports
    # `requests` without declaring it.
    session.install("-e", ".[test]", "httpx>=0.27", "sniffio", "modelslab-py", "requests")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The guide and API reference, built strictly (broken references fail)."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "-d", "site")
