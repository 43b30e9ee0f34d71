"""What a batch needs of the client that runs it (:class:`BatchHost`), declared here so that
no module of the batch imports the client: the client implements it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from .._errors import DreamboothError
from .._eta import DurationModel
from .._fetch_timing import PollPolicy
from .._job import Job
from .._keys import KeyRing
from .._models import GenerationRequest, GenerationResult
from .._slots import SlotPool
from .._spend import Wallets
from .._transport import RetryHook, RetryPolicy

__all__ = ["BatchHost", "SlotHints"]


class SlotHints(Protocol):
    """What the poller knows of the client's own jobs, which tells a batch turned away by a
    full queue when a slot should free. Implemented by the client's
    :class:`~.._poller.Poller`."""

    @property
    def durations(self) -> DurationModel: ...

    def next_finish(self) -> float | None: ...


class BatchHost(Wallets, Protocol):
    """The client as a batch sees it: submit, attach and recover jobs, the key ring shared with
    the client, its retry policy, defaults and origin, downloads, the poller's slot hints, and
    (for ``max_spend`` and the run's spend) the wallets (:class:`~.._spend.Wallets`).
    Implemented by :class:`~dreambooth_async.DreamboothClient`."""

    @property
    def is_open(self) -> bool: ...
    @property
    def base_url(self) -> str: ...
    @property
    def max_concurrency(self) -> int: ...
    @property
    def poll_policy(self) -> PollPolicy: ...
    @property
    def retry_policy(self) -> RetryPolicy: ...
    @property
    def key_ring(self) -> KeyRing: ...
    @property
    def poller(self) -> SlotHints: ...
    @property
    def slot_pool(self) -> SlotPool: ...

    def redact(self, text: str) -> str: ...

    async def submit(
        self,
        request: GenerationRequest,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        key_index: int | None = None,
        on_retry: RetryHook | None = None,
        wait_for_slot: bool = True,
    ) -> Job: ...

    def attach(
        self,
        job_id: str | int,
        *,
        timeout: float | None = None,
        fetch_url: str | None = None,
        key_index: int | None = None,
    ) -> Job: ...

    async def recover(
        self, error: DreamboothError, *, timeout: float, key_index: int | None = None
    ) -> Job | None: ...

    async def download(
        self, result: GenerationResult, directory: str | os.PathLike[str]
    ) -> list[Path]: ...
