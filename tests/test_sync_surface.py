"""The blocking facade keeps the asyncio client's surface: the same constructor parameters and
defaults, and every public method under the same name with the same parameters."""

from __future__ import annotations

import inspect

import dreambooth_async as dba
from dreambooth_async import sync

# Lifecycle differs by design (``with`` and ``close()`` instead of ``async with``/``aclose()``),
# recover() needs a webhook receiver's event loop, and an aiohttp session belongs to one loop.
ASYNC_ONLY_METHODS = {"aclose", "start", "recover", "on_retry"}
ASYNC_ONLY_PARAMETERS = {"http_session"}


def _parameters(func: object) -> dict[str, object]:
    signature = inspect.signature(func)  # type: ignore[arg-type]
    return {
        name: parameter.default
        for name, parameter in signature.parameters.items()
        if name != "self"
    }


def test_the_constructors_take_the_same_parameters_and_defaults() -> None:
    asynchronous = _parameters(dba.DreamboothClient.__init__)
    blocking = _parameters(sync.DreamboothClient.__init__)
    for name in ASYNC_ONLY_PARAMETERS:
        asynchronous.pop(name)
    assert blocking == asynchronous


def test_every_public_method_has_a_blocking_twin_with_the_same_parameters() -> None:
    for name, method in inspect.getmembers(dba.DreamboothClient, inspect.isfunction):
        if name.startswith("_") or name in ASYNC_ONLY_METHODS:
            continue
        twin = getattr(sync.DreamboothClient, name, None)
        assert twin is not None, f"sync.DreamboothClient has no {name}()"
        assert list(_parameters(twin)) == list(_parameters(method)), name
