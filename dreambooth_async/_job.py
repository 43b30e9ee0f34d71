"""A submitted job: the handle callers await (:class:`Job`) and the bookkeeping behind it
(:class:`JobState`), which the :class:`~dreambooth_async._poller.Poller` that owns the job
fills in as the service answers. Every handle for one id shares one state and one outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any

from ._errors import JobTimeout
from ._models import GenerationRequest, GenerationResult
from ._telemetry import NO_TRACE, JobTrace

__all__ = ["Job", "JobState", "new_state"]


class JobState:
    """A pending job's bookkeeping, shared by every :class:`Job` handle for the same id."""

    __slots__ = (
        "anchors",
        "deadline",
        "due",
        "eta",
        "failures",
        "fetch_url",
        "fetches",
        "first_fetch",
        "first_unbiased",
        "future",
        "hinted",
        "id",
        "last_fetch",
        "last_processing",
        "measured",
        "meta",
        "nudged",
        "overdue",
        "probe",
        "puzzled",
        "puzzled_age",
        "submitted_at",
        "trace",
        "webhook",
        "zero_at",
    )

    def __init__(self, job_id: str, future: asyncio.Future[GenerationResult]) -> None:
        self.id = job_id
        self.future = future
        self.eta: float | None = None
        self.fetch_url: str | None = None
        self.submitted_at = time.monotonic()
        #: True when ``submitted_at`` is the job's real start (tracked from its submission
        #: answer, not attached by id): then its duration is worth measuring.
        self.measured = False
        self.deadline: float | None = None
        self.due = 0.0
        self.last_fetch: float | None = None
        self.first_fetch: float | None = None
        #: The first fetch came before any finished job was measured (on the prior or the
        #: trends): timed without regard to how fast such jobs really are.
        self.first_unbiased = False
        #: When the service last said "processing" (the midpoint of that exchange).
        self.last_processing: float | None = None
        # (time, eta) for each processing answer with an ETA: material for the ETA model.
        self.anchors: list[tuple[float, float]] = []
        #: When the service last gave an ETA of 0 (it expects the job done by then).
        self.zero_at: float | None = None
        self.meta: Mapping[str, Any] = {}
        self.failures = 0
        self.overdue = 0
        #: Answers in a row that did not say anything about the job ("not found", unknown).
        self.puzzled = 0
        self.puzzled_age: float | None = None
        self.fetches = 0
        #: Fetched early on purpose to teach the ETA model (None: not decided yet).
        self.probe: bool | None = None
        self.webhook = False
        self.nudged = False
        #: A webhook delivery said the job ended; its fetch has not answered yet.
        self.hinted = False
        #: Where this job's fetches and events are reported (the generation call's trace).
        self.trace: JobTrace = NO_TRACE


class Job:
    """A submitted generation. ``await job`` (or ``await job.wait(timeout)``) for its result.

    Every handle for the same id shares one outcome: cancelling one waiter leaves the others
    and the polling alone, and the result is delivered once.
    """

    def __init__(
        self,
        state: JobState,
        *,
        request: GenerationRequest | None = None,
    ) -> None:
        self._state = state
        #: The request that created the job (None when attached by id).
        self.request = request

    def __repr__(self) -> str:
        return f"<Job id={self.id!r} status={self.status!r} eta={self.eta!r}>"

    @property
    def id(self) -> str:
        """The service's job id (a string)."""
        return self._state.id

    @property
    def fetch_url(self) -> str | None:
        """The ``fetch_result`` URL the service gave for this job, if any."""
        return self._state.fetch_url

    @property
    def eta(self) -> float | None:
        """Seconds the service last estimated the job still needs (None when unknown)."""
        return self._state.eta

    @property
    def status(self) -> str:
        """``"processing"``, ``"success"``, ``"failed"`` (any error), or ``"cancelled"``."""
        future = self._state.future
        if not future.done():
            return "processing"
        if future.cancelled():
            return "cancelled"
        return "failed" if future.exception() is not None else "success"

    @property
    def fetches(self) -> int:
        """How many fetch calls this job has cost so far."""
        return self._state.fetches

    def done(self) -> bool:
        """True once the job has a result or an error."""
        return self._state.future.done()

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` in the event loop once the job has a result or an error (soon
        after now when it already has one)."""
        self._state.future.add_done_callback(lambda _future: callback())

    def result(self) -> GenerationResult:
        """The result of a finished job (raises its error, or InvalidStateError if pending)."""
        return self._state.future.result()

    async def wait(self, timeout: float | None = None) -> GenerationResult:
        """Wait for the result. ``timeout`` bounds this waiter only: on expiry it raises
        :class:`JobTimeout` and the job goes on (wait again, or ``client.wait_for(job.id)``)."""
        if timeout is None:
            return await asyncio.shield(self._state.future)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(self._state.future)
        except TimeoutError:
            if self._state.future.done():
                return self._state.future.result()
            raise JobTimeout(self.id, timeout) from None

    def __await__(self) -> Generator[Any, None, GenerationResult]:
        return self.wait().__await__()


def new_state(job_id: str) -> JobState:
    """The bookkeeping of a new job, with its outcome still to come (in the running loop)."""
    future: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()
    future.add_done_callback(_consume_exception)
    return JobState(job_id, future)


def _consume_exception(future: asyncio.Future[Any]) -> None:
    # A job nobody awaits may still fail; reading the exception keeps asyncio from logging
    # "exception was never retrieved" for it.
    if not future.cancelled():
        future.exception()
