"""When the next submission may go: an optional requests-per-second limit, plus the pauses a
rate-limited answer (429) asks of every submission."""

from __future__ import annotations

import time

import anyio

__all__ = ["Pacer"]


class Pacer:
    """An optional requests-per-second limit on submissions, plus pauses a 429 asks for."""

    def __init__(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate_limit must be a positive number of requests per second")
        self._interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._paused_until = 0.0

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def wait(self) -> None:
        while True:
            now = time.monotonic()
            start = max(now, self._paused_until)
            if self._interval:
                start = max(start, self._next)
                self._next = start + self._interval  # reserve the moment before sleeping
            if start > now:
                await anyio.sleep(start - now)
            if time.monotonic() >= self._paused_until - 1e-6:
                return
