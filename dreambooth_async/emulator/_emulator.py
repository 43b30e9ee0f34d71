"""The emulator as an object that owns its HTTP server: ``async with Emulator(config) as emu:``."""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import AsyncIterator, Mapping

from aiohttp import web

from ._app import build_app
from ._config import EmulatorConfig
from ._jobs import Job
from ._service import Service
from ._stats import EmulatorStats

# How long leaving ``async with`` waits for requests in flight (say, a slow-answer fault) before
# cancelling them.
_SHUTDOWN_GRACE = 1.0


class Emulator:
    """A running emulator on ``config.host``/``config.port`` (port 0 picks a free one)."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.service = Service(self.config)
        self.app = build_app(service=self.service)
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` once started."""
        if self._base_url is None:
            raise RuntimeError("the emulator is not running; use `async with Emulator(...)`")
        return self._base_url

    @property
    def key(self) -> str:
        """An API key the emulator accepts (the first configured)."""
        return self.config.keys[0]

    @property
    def stats(self) -> EmulatorStats:
        return self.service.stats

    @property
    def jobs(self) -> Mapping[int, Job]:
        """Every accepted job by id, read-only."""
        return types.MappingProxyType(self.service.jobs)

    def finished_at(self, job_id: int) -> float | None:
        """``time.monotonic()`` at which the job finished on the server; None if it has not (or
        if there is no such job)."""
        job = self.service.jobs.get(job_id)
        return None if job is None else job.finished_at

    async def wait_finished(self, job_id: int) -> float:
        """Wait until the job has finished on the server (its status is final); returns
        ``finished_at``. Tests use this instead of guessing a sleep: the server knows the time."""
        job = self.service.jobs[job_id]
        remaining = job.scheduled_finish - self.service.clock()
        if remaining > 0:
            # asyncio's timers run on time.monotonic() too and wake at most a clock tick early;
            # the microsecond on top makes the status final when this returns.
            await asyncio.sleep(remaining + 1e-6)
        return job.scheduled_finish

    async def wait_webhooks(self) -> None:
        """Wait until every webhook delivery scheduled so far is done (sent, dropped, failed)."""
        await self.service.webhooks.drain()

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("already started")
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_GRACE
        )
        await runner.setup()
        self._runner = runner
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port)
            await site.start()
        except BaseException:
            await self.aclose()
            raise
        host, port = runner.addresses[0][:2]
        host_text = f"[{host}]" if ":" in host else host
        self._base_url = f"http://{host_text}:{port}"

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        self._base_url = None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.aclose()


@contextlib.asynccontextmanager
async def serve(config: EmulatorConfig | None = None) -> AsyncIterator[str]:
    """``async with serve(config) as base_url:``: an emulator for the duration of the block."""
    async with Emulator(config) as emulator:
        yield emulator.base_url
