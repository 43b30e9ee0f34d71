"""Shared pytest configuration: anyio runs every ``@pytest.mark.anyio`` test on asyncio only."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # aiohttp only runs on asyncio, so the trio backend is never requested.
    return "asyncio"
