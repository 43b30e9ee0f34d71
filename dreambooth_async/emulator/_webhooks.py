"""Webhook calls when jobs finish: best effort, as documented, with seeded misbehaviour."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from ._config import EmulatorConfig
from ._jobs import Job
from ._stats import EmulatorStats

# Builds the body of a finished job's call; a coroutine, as base64 outputs are rendered for it.
Payload = Callable[[Job], Awaitable[dict[str, Any]]]

# The service gives a receiver 30 s to answer.
_TIMEOUT = aiohttp.ClientTimeout(total=30)


class WebhookSender:
    """One task per job with a webhook: it sleeps until the job's finish time, then posts.

    The farm computes finish times up front (see _jobs.py), so there is no queue to block: a slow
    receiver delays only its own task. Every task is cancelled by ``aclose``.
    """

    def __init__(
        self, config: EmulatorConfig, stats: EmulatorStats, clock: Callable[[], float]
    ) -> None:
        self._config = config
        self._stats = stats
        self._clock = clock
        self._rng = random.Random(f"{config.seed}:webhooks")
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def bind(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    def schedule(self, job: Job, payload: Payload) -> None:
        # Decided at acceptance, in acceptance order, so a seed gives the same choices even when
        # several jobs finish at the same instant.
        drop = self._rng.random() < self._config.webhook_drop_rate
        duplicate = self._rng.random() < self._config.webhook_duplicate_rate
        task = asyncio.create_task(self._deliver(job, payload, drop=drop, duplicate=duplicate))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, job: Job, payload: Payload, *, drop: bool, duplicate: bool) -> None:
        delay = (
            job.scheduled_finish - self._clock() + self._config.scaled(self._config.webhook_delay)
        )
        if delay > 0:
            await asyncio.sleep(delay)
        if drop:
            self._stats.webhooks_dropped += 1
            return
        if duplicate:
            self._stats.webhooks_duplicated += 1
        body = await payload(job)
        for _ in range(2 if duplicate else 1):
            await self._post(job, body)

    async def _post(self, job: Job, body: dict[str, Any]) -> None:
        assert self._session is not None, "bind() a session before jobs finish"
        assert job.params.webhook is not None
        self._stats.webhooks_sent += 1
        job.webhook_deliveries += 1
        job.webhook_posted_at.append(self._clock())
        try:
            async with self._session.post(job.params.webhook, json=body, timeout=_TIMEOUT) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if not ok:
            self._stats.webhooks_failed += 1

    async def drain(self) -> None:
        """Wait until every scheduled delivery is done (sent, dropped or failed)."""
        while self._tasks:
            # wait(), unlike gather(), leaves the tasks running if the caller is cancelled.
            await asyncio.wait(list(self._tasks))

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
