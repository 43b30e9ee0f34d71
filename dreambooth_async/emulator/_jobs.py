"""Jobs and the simulated GPU farm.

The farm is computed, not simulated step by step: jobs run first in first out on ``workers``
identical workers, and each job's duration is known when it is accepted, so the scheduler assigns
it at once to the worker that frees first and fixes its start and finish times. A job's status is
then a pure function of the clock. That keeps a request's cost independent of how many jobs are
queued (no worker tasks to wake), and makes the finish time exact for the benchmarks that measure
how late a client notices it.

All times here are real ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any, Literal

import attrs

from ._faults import JobFaults
from ._params import GenerationParams

Status = Literal["queued", "processing", "success", "failed"]
#: How the finished job gives its images: links to the files, or (asked with ``base64: "yes"``)
#: data URLs, bare base64 strings, or links to ``.base64`` text files.
OutputStyle = Literal["url", "data_url", "bare", "link"]
BASE64_SUFFIX = ".base64"
ModelStatus = Literal["model_ready", "model_loading", "model_unloaded"]


@attrs.define(eq=False, kw_only=True)
class Job:
    """One accepted generation request, as the server sees it."""

    id: int
    key: str
    params: GenerationParams
    seed: int  # the one used: the requested seed, or a random one for ``null``
    file_prefix: str
    origin: str  # scheme://host:port the client used, for the URLs in answers and webhooks
    extension: str
    created_at: float
    started_at: float
    scheduled_finish: float  # when it really ends (stuck jobs included)
    expected_finish: float  # what its ETAs aim at (a stuck job overruns it)
    run_seconds: float  # real seconds on the worker: the reported generationTime
    faults: JobFaults
    output_404_until: float | None = None
    init_digest: str | None = None
    mask_digest: str | None = None
    webhook_deliveries: int = 0
    #: When each webhook delivery for this job was posted, and when each fetch of it (by its
    #: own key) was answered: clock times, for tests that ask what resolved a job.
    webhook_posted_at: list[float] = attrs.field(factory=list)
    fetched_at: list[float] = attrs.field(factory=list)
    output_style: OutputStyle = "url"
    clock: Callable[[], float] = attrs.field(repr=False)

    @property
    def track_id(self) -> Any:
        return self.params.track_id

    @property
    def failed(self) -> bool:
        return self.faults.failed

    def status_at(self, now: float) -> Status:
        if now < self.started_at:
            return "queued"
        if now < self.scheduled_finish:
            return "processing"
        return "failed" if self.faults.failed else "success"

    @property
    def status(self) -> Status:
        return self.status_at(self.clock())

    @property
    def finished_at(self) -> float | None:
        """``time.monotonic()`` when the job finished on the server, or None while it runs."""
        return self.scheduled_finish if self.clock() >= self.scheduled_finish else None

    def output_names(self) -> list[str]:
        return [f"{self.file_prefix}-{n}.{self.extension}" for n in range(self.params.samples)]

    def output_urls(self) -> list[str]:
        """Links to the image files (whatever the output style: the files are always there)."""
        return [f"{self.origin}/generations/{name}" for name in self.output_names()]

    def base64_link_urls(self) -> list[str]:
        """Links to the images as base64 text: ``<file link>.base64``."""
        return [url + BASE64_SUFFIX for url in self.output_urls()]

    def future_links(self) -> list[str]:
        """Where the outputs will appear: the ``.base64`` links in that style, else the files."""
        return self.base64_link_urls() if self.output_style == "link" else self.output_urls()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "api_version": self.params.version,
            "kind": self.params.kind,
            "model_id": self.params.model_id,
            "prompt": self.params.prompt,
            "seed": self.seed,
            "track_id": self.track_id,
            "webhook": self.params.webhook,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "expected_finish": self.expected_finish,
            "scheduled_finish": self.scheduled_finish,
            "finished_at": self.finished_at,
            "generation_time": self.run_seconds,
            "faults": self.faults.kinds(),
            "output": self.output_urls(),
            "output_style": self.output_style,
            "webhook_deliveries": self.webhook_deliveries,
            "webhook_posted_at": list(self.webhook_posted_at),
            "fetches": len(self.fetched_at),
            "fetched_at": list(self.fetched_at),
        }


@attrs.define
class _Model:
    # None: cold and not loading. Otherwise the clock time from which it is warm.
    warm_at: float | None


class Farm:
    """Workers, per-key queue slots and model warmth. Not thread-safe: one event loop drives it."""

    def __init__(
        self, *, workers: int, models: tuple[str, ...], cold_models: tuple[str, ...]
    ) -> None:
        self._free_at = [0.0] * workers  # a heap: when each worker is next idle
        heapq.heapify(self._free_at)
        self._pending_starts: list[float] = []  # heap of start times not yet reached
        self._active_by_key: dict[str, list[float]] = {}  # heap of finish times per key
        self._models = {m: _Model(warm_at=None if m in cold_models else 0.0) for m in models}

    # -- queue slots -------------------------------------------------------------------------

    def _active(self, key: str, now: float) -> list[float]:
        finishes = self._active_by_key.setdefault(key, [])
        while finishes and finishes[0] <= now:
            heapq.heappop(finishes)
        return finishes

    def slots_in_use(self, key: str, now: float) -> int:
        """Jobs of this key queued or running: each holds a slot until it finishes."""
        return len(self._active(key, now))

    def next_slot_free_in(self, key: str, now: float) -> float:
        finishes = self._active(key, now)
        return max(0.0, finishes[0] - now) if finishes else 0.0

    # -- workers -----------------------------------------------------------------------------

    def place(
        self, *, key: str, model_id: str, run: float, overrun: float, now: float
    ) -> tuple[float, float]:
        """Give the job the worker that frees first; returns (start, finish) of its run.

        The run starts once the worker is idle and the model is warm: a job for a model that is
        loading holds its worker while it waits, as the load happens on that worker. ``overrun``
        is time the job takes beyond what the farm expected (the stuck fault); the worker and
        the key's slot stay busy for it too.
        """
        model = self._models[model_id]
        if model.warm_at is None:
            raise RuntimeError("begin_load() must be called for a cold model first")
        worker_free = heapq.heappop(self._free_at)
        start = max(now, worker_free, model.warm_at)
        finish = start + run + overrun
        heapq.heappush(self._free_at, finish)
        if start > now:
            heapq.heappush(self._pending_starts, start)
        heapq.heappush(self._active_by_key.setdefault(key, []), finish)
        return start, finish

    def queue_num(self, now: float) -> int:
        """Jobs accepted but not started yet, all keys together."""
        while self._pending_starts and self._pending_starts[0] <= now:
            heapq.heappop(self._pending_starts)
        return len(self._pending_starts)

    def queue_time(self, now: float) -> float:
        """How long a job submitted now would wait for a worker."""
        return max(0.0, self._free_at[0] - now)

    # -- models ------------------------------------------------------------------------------

    def knows(self, model_id: str) -> bool:
        return model_id in self._models

    def model_ids(self) -> list[str]:
        return list(self._models)

    def model_status(self, model_id: str, now: float) -> ModelStatus:
        warm_at = self._models[model_id].warm_at
        if warm_at is None:
            return "model_unloaded"
        return "model_ready" if now >= warm_at else "model_loading"

    def begin_load(self, model_id: str, now: float, load_time: float) -> None:
        """Start loading the model unless it is warm or already loading."""
        model = self._models[model_id]
        if model.warm_at is None:
            model.warm_at = now + load_time

    def reload(self, model_id: str, now: float, load_time: float) -> float:
        """Unload and load again; returns when it will be warm. Queued jobs keep their times."""
        model = self._models[model_id]
        model.warm_at = now + load_time
        return model.warm_at
