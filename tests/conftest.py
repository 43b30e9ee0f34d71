"""Shared pytest configuration: anyio runs every ``@pytest.mark.anyio`` test on asyncio only;
the state folders of URL outputs go to a temporary folder, never the user's own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dreambooth_async.cli.dataset.fsout import STATE_DIR_ENV


@pytest.fixture(autouse=True)
def _state_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    # The environment is inherited by the command lines the tests start, too.
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path_factory.mktemp("state")))
    yield


@pytest.fixture
def anyio_backend() -> str:
    # aiohttp only runs on asyncio, so the trio backend is never requested.
    return "asyncio"
