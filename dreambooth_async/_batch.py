"""Batch fan-out: many requests under the account's queue-slot limit, resumable from a manifest.

The service limits how many jobs an account may have *queued or running* (5, 10 or 15, and the
client is not told which). A job holds its slot from submission until it finishes, so the
scheduler counts slots, not open HTTP requests: a slot is taken before the POST and given back
when the job's result (or error) is in.

Shape (structured concurrency without yielding from inside a task group):

- :class:`BatchRun`, what ``client.map()`` returns, is both an async iterator and an async
  context manager. On first use it starts one background task that owns an anyio task group;
  finished items travel to the consumer through a memory object stream.
- Leaving ``async with`` (or ``aclose()``, or the iterator being dropped after a ``break``)
  cancels the group and waits for it. A submission already on the wire is allowed a grace
  period to be answered and recorded, because cutting it off could leave a paid job that
  nobody knows the id of.
- A spawner reads the input lazily, one item ahead, and starts a task per item only when a
  slot (and a task permit) is free: tasks alive and memory stay bounded by the concurrency,
  not by the number of requests.

Adaptive concurrency (``concurrency=None``): start at ``initial_concurrency``, grow by one for
every acceptance that filled the window (slow start) until the first "queue full" answer. That
answer bounds the limit from above by the number of jobs the batch has on the service at that
moment (the service counted at least as many), so the window drops straight to it instead of
halving. From then on it probes one slot higher after a run of acceptances at a full window
(six turns of it), and the run it waits for doubles after every probe the service refuses: the
limit is found in a rejection or two and held with very few.
A rejected submission provably did not land (the transport's rule), so it is sent again, ahead
of fresh items, as soon as the service has room: when one of the batch's own jobs ends (the
client sees it) or the service's ``retry_after`` passes, whichever comes first; without either,
when the client expects its next job to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import os
import random
import re
import shutil
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sized
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeAlias, TypedDict

import anyio
import attrs

from ._download import writable_folder
from ._errors import (
    AuthenticationError,
    ClientClosedError,
    DreamboothError,
    InsufficientCredits,
    RateLimitError,
    ServerError,
    TransportError,
)
from ._events import BatchEvent, EventHook, EventKind, emit
from ._keys import KeyRing, pinned
from ._manifest import ItemState, Manifest
from ._models import GenerationRequest, GenerationResult, Img2Img, Inpaint, Text2Img
from ._poller import Job
from ._spend import SpendGuard
from ._transport import logger

if TYPE_CHECKING:
    from anyio.abc import TaskGroup
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from ._client import DreamboothClient

__all__ = [
    "AmbiguousSubmission",
    "BatchInput",
    "BatchItem",
    "BatchRun",
    "SlotPool",
    "SlotWindow",
    "map_requests",
    "request_key",
]

#: One input of a batch: a request, or a ``(key, request)`` pair that names its key.
BatchInput: TypeAlias = GenerationRequest | tuple[str, GenerationRequest]

#: How a batch item ended.
ItemOutcome: TypeAlias = Literal["done", "failed", "ambiguous"]


class AmbiguousSubmission(DreamboothError):
    """A submission may or may not have been accepted (and billed): the connection broke after
    the request was sent, a proxy answered 5xx, or a batch died between sending it and hearing
    back. The item is reported rather than sent again, which could pay twice; pass
    ``resubmit_ambiguous=True`` to send it anyway. ``cause`` is the error seen, when there was
    one in this run."""

    def __init__(self, key: str | None, detail: str, cause: BaseException | None = None) -> None:
        self.key = key
        self.cause = cause
        super().__init__(detail)


@attrs.frozen(kw_only=True)
class BatchItem:
    """One request of a batch and how it ended: ``result`` when done, ``error`` otherwise.

    ``key`` is the item's stable key (derived from the request unless given). ``job_id`` is the
    service's id once it accepted the item. ``files`` are the images written when the batch
    downloads (``download_to=``). ``resumed`` is True for an item a manifest showed done in an
    earlier run: its ``result`` is rebuilt from the manifest (id, output URLs, seed).
    ``ambiguous`` is True when the submission may or may not have landed (see
    :class:`AmbiguousSubmission`).
    """

    index: int
    request: GenerationRequest
    result: GenerationResult | None = None
    error: BaseException | None = None
    key: str | None = None
    job_id: str | None = None
    files: tuple[Path, ...] = ()
    resumed: bool = False
    ambiguous: bool = False

    @property
    def status(self) -> ItemOutcome:
        """``"done"``, ``"failed"`` or ``"ambiguous"``."""
        if self.result is not None and self.error is None:
            return "done"
        return "ambiguous" if self.ambiguous else "failed"

    @property
    def ok(self) -> bool:
        """True when the item is done."""
        return self.status == "done"


# --- keys -------------------------------------------------------------------------------------


def _canonical_value(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, os.PathLike):
        return {"path": os.fspath(value)}
    if isinstance(value, dict):
        return {str(k): _canonical_value(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_canonical_value(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def request_key(request: GenerationRequest) -> str:
    """A stable key for ``request``: a hash of its kind and every field.

    Independent of the API version, of the request's position in a batch and of the process,
    so the same request gets the same key in a rerun. Images given as bytes count by content,
    as paths by path.
    """
    fields = attrs.asdict(request, recurse=False)
    canonical = {"kind": request.kind, **{k: _canonical_value(v) for k, v in fields.items()}}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=10).hexdigest()


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _file_stem(key: str) -> str:
    """A file-name stem for ``key``; keys that needed cleaning get a hash so they stay unique."""
    stem = _UNSAFE.sub("_", key).strip("._")[:80]
    if stem != key or not stem:
        stem = f"{stem[:60]}_{hashlib.blake2b(key.encode(), digest_size=5).hexdigest()}"
    return stem


# --- the slot window --------------------------------------------------------------------------


class SlotWindow:
    """How many queue slots the batch may hold, and who is waiting for one.

    Fixed (``fixed=N``) or adaptive (see the module docstring). ``held`` counts slots taken:
    jobs accepted and not finished, plus submissions on the wire. Waiters are served first in
    first out, items sent back by the service ahead of fresh ones.
    """

    def __init__(self, *, fixed: int | None, initial: int, maximum: int) -> None:
        self.adaptive = fixed is None
        self.maximum = maximum if fixed is None else fixed
        self.limit = fixed if fixed is not None else max(1, min(initial, maximum))
        self.held = 0
        self.submitting = 0
        self.peak = self.limit
        self.slow_start = self.adaptive
        self._streak = 0
        self._refused_probes = 0
        self._probe_level: int | None = None
        self._normal: deque[asyncio.Future[None]] = deque()
        self._priority: deque[asyncio.Future[None]] = deque()
        #: Items the service turned away for a full queue, waiting (with their slots) for one
        #: of the batch's jobs to end: first in, first out.
        self.parked = 0
        self._parked: deque[asyncio.Future[None]] = deque()
        #: Told whenever a slot may have come free (a pool of several keys' windows hands
        #: slots out itself: see :class:`SlotPool`).
        self.on_room: Callable[[], None] | None = None

    def __repr__(self) -> str:
        mode = "adaptive" if self.adaptive else "fixed"
        return f"<SlotWindow {mode} limit={self.limit} held={self.held}>"

    async def acquire(self, *, priority: bool = False) -> None:
        """Wait for a slot. ``priority``: ahead of every non-priority waiter."""
        if self.held < self.limit and not self._priority and (priority or not self._normal):
            self.held += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._priority if priority else self._normal
        queue.append(future)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release()  # handed a slot just as we were cancelled: give it back
            else:
                future.cancel()
                with contextlib.suppress(ValueError):
                    queue.remove(future)
            raise

    def force(self) -> None:
        """Take a slot past the limit: a job from an earlier run is already on the service."""
        self.held += 1

    def release(self) -> None:
        """Give a slot back. The service counts one job of ours fewer: the first parked item
        may go again."""
        self.held -= 1
        while self._parked:
            parked = self._parked.popleft()
            if not parked.done():
                parked.set_result(None)
                break
        self._wake()

    async def park(self, timeout: float) -> None:
        """Wait, keeping the slot, until another slot is given back (one of the batch's jobs
        ended) or ``timeout`` passes; each item parked ahead adds one ``timeout``, so that a
        service's ``retry_after`` does not send them all back into the same free slot."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ahead = sum(not waiting.done() for waiting in self._parked)
        self._parked.append(future)
        self.parked += 1
        try:
            with anyio.move_on_after(timeout * (ahead + 1)):
                await future
        finally:
            self.parked -= 1
            if not future.done():
                future.cancel()
                with contextlib.suppress(ValueError):
                    self._parked.remove(future)

    def _wake(self) -> None:
        while self.held < self.limit:
            queue = self._priority or self._normal
            if not queue:
                break
            future = queue.popleft()
            if future.done():
                continue
            future.set_result(None)
            self.held += 1  # handed over now, so that nobody can take it in between
        if self.on_room is not None:
            self.on_room()

    def _set_limit(self, limit: int) -> None:
        self.limit = max(1, min(self.maximum, limit))
        self.peak = max(self.peak, self.limit)
        self._wake()

    def on_accepted(self) -> None:
        """A submission was accepted (its slot is still counted in ``held``)."""
        if not self.adaptive or self.held < self.limit:
            return  # only an acceptance at a full window says anything about a bigger one
        if self._probe_level is not None and self.held >= self._probe_level:
            self._refused_probes = 0  # the probed slot was granted: the limit is higher
            self._probe_level = None
        if self.slow_start:
            self._set_limit(self.limit + 1)
            return
        self._streak += 1
        # Probe after a run of full-window acceptances, six turns of the window (a probe the
        # service refuses costs a rejected submission); the run doubles per refused probe.
        if self._streak >= max(4, 6 * self.limit) * 2 ** min(self._refused_probes, 4):
            self._streak = 0
            self._probe_level = self.limit + 1
            self._set_limit(self.limit + 1)

    def on_queue_full(self) -> None:
        """The service said the queue is full (the rejected submission still holds its slot,
        and is still counted in ``submitting``).

        The service was counting at least the batch's accepted jobs, so the limit is at most
        that many: drop the window there. Submissions on the wire and items already turned
        away are not jobs the service counts.
        """
        if not self.adaptive:
            return
        others = self.held - self.submitting - self.parked
        if self._probe_level is not None:
            self._refused_probes += 1
            self._probe_level = None
        self.slow_start = False
        self._streak = 0
        self._set_limit(min(self.limit, others))


class SlotPool:
    """The slot windows of a batch, one per API key: each account has its own queue slots.

    With one key this is that key's :class:`SlotWindow`, unchanged. With several, a slot is
    taken on the live key with a free slot and the fewest held (so the work spreads across
    the keys and each window learns its own account's limit); waiters are served first in
    first out, items sent back by the service ahead of fresh ones. A retired key hands out
    no more slots; once every key is retired, waiters are let through so that they see the
    batch has stopped.
    """

    def __init__(self, windows: list[SlotWindow], keys: KeyRing) -> None:
        self.windows = windows
        self._keys = keys
        self._normal: deque[asyncio.Future[int]] = deque()
        self._priority: deque[asyncio.Future[int]] = deque()
        #: The most slots each key held at once (jobs, submissions on the wire, parked items).
        self.peak_held = [0] * len(windows)
        if len(windows) > 1:
            for window in windows:
                window.on_room = self.wake

    def __repr__(self) -> str:
        return f"<SlotPool keys={len(self.windows)} limit={self.limit} held={self.held}>"

    @property
    def single(self) -> bool:
        return len(self.windows) == 1

    @property
    def limit(self) -> int:
        """Slots the batch may hold now: the sum over the live keys."""
        if self.single:
            return self.windows[0].limit
        live = self._keys.live()
        return sum(self.windows[index].limit for index in live) if live else 0

    @property
    def held(self) -> int:
        return sum(window.held for window in self.windows)

    @property
    def peak(self) -> int:
        if self.single:
            return self.windows[0].peak
        return sum(window.peak for window in self.windows)

    @property
    def maximum(self) -> int:
        return sum(window.maximum for window in self.windows)

    def _took(self, index: int) -> int:
        self.peak_held[index] = max(self.peak_held[index], self.windows[index].held)
        return index

    def _free(self) -> int | None:
        live = self._keys.live()
        if not live:
            return 0  # every key is retired: the waiter goes on to find the batch stopped
        room = [index for index in live if self.windows[index].held < self.windows[index].limit]
        if not room:
            return None
        return min(room, key=lambda index: (self.windows[index].held, index))

    async def acquire(self, *, priority: bool = False) -> int:
        """Wait for a slot on some key; returns the key's index."""
        if self.single:
            await self.windows[0].acquire(priority=priority)
            return self._took(0)
        if not self._priority and (priority or not self._normal):
            index = self._free()
            if index is not None:
                self.windows[index].held += 1
                return self._took(index)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        queue = self._priority if priority else self._normal
        queue.append(future)
        try:
            return self._took(await future)
        except BaseException:
            if future.done() and not future.cancelled():
                self.windows[future.result()].release()  # handed a slot as we were cancelled
            else:
                future.cancel()
                with contextlib.suppress(ValueError):
                    queue.remove(future)
            raise

    def wake(self) -> None:
        """Hand free slots to waiters (a slot came back, a limit grew, a key was retired)."""
        while True:
            queue = self._priority or self._normal
            if not queue:
                return
            if queue[0].done():
                queue.popleft()
                continue
            index = self._free()
            if index is None:
                return
            queue.popleft().set_result(index)
            self.windows[index].held += 1  # handed over now: nobody can take it in between

    def force(self, index: int) -> None:
        """Take a slot of key ``index`` past its limit (a job already on the service)."""
        self.windows[index].force()
        self._took(index)


class _Pacer:
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


# --- the engine -------------------------------------------------------------------------------

#: (engine, entry) of the item whose task is running: lets the client's retry hook tell which
#: item a transport retry belongs to.
_CURRENT: contextvars.ContextVar[tuple[_Engine, _Entry] | None] = contextvars.ContextVar(
    "dreambooth_batch_item", default=None
)

# Strong references to running engine tasks: asyncio keeps only weak ones, and an abandoned
# BatchRun must not let its task be collected half-way through cleaning up.
_LIVE_TASKS: set[asyncio.Task[None]] = set()

# The only error after which a job recorded in a manifest is not fetched again by id: the service
# said that job failed. Every other ending (timeout, download, a shape the client did not expect,
# the process dying) leaves a paid job that a rerun fetches rather than pays for again.
_JOB_ENDED_FAILED = frozenset({"GenerationFailed"})

# Errors after which no submission of this batch can be accepted: stop submitting, keep the
# rest pending in the manifest, and report why.
_STOPS_SUBMITTING = (AuthenticationError, InsufficientCredits)

#: Consecutive submissions that could not connect (each after the transport's own retries)
#: after which a batch stops: the service is unreachable.
UNREACHABLE_AFTER = 3

_Plan: TypeAlias = Literal["submit", "attach", "skip", "ambiguous", "failed"]

#: What the run counts for each key.
_KEY_COUNTS = (
    "submissions",
    "accepted",
    "images",
    "rejected_queue_full",
    "rejected_other",
    "retried",
    "attached",
    "cache_hits",
    "done",
    "failed",
    "ambiguous",
)


@attrs.define(slots=True)
class _Entry:
    index: int
    key: str
    request: GenerationRequest
    prior: ItemState | None
    plan: _Plan
    #: The key (0-based) whose slot the item holds, once it has one.
    key_index: int | None = None


class _Engine:
    """Runs one batch inside its own task group; knows nothing of the consumer-side object."""

    def __init__(
        self,
        client: DreamboothClient,
        requests: Iterable[BatchInput] | AsyncIterable[BatchInput],
        *,
        concurrency: int | None,
        max_concurrency: int,
        initial_concurrency: int,
        fail_fast: bool,
        rate_limit: float | None,
        manifest: str | os.PathLike[str] | None,
        keys: Callable[[int, GenerationRequest], str] | None,
        on_event: tuple[EventHook, ...],
        download_to: str | os.PathLike[str] | None,
        resubmit_ambiguous: bool,
        retry_failed: bool,
        job_timeout: float | None,
        max_rate_limited: int,
        buffer: int,
        cancel_grace: float,
        durable: bool,
        on_finish: Callable[[], None] | None = None,
        recover_ambiguous: float | None = None,
        max_images: int | None = None,
        max_spend: float | None = None,
    ) -> None:
        self.client = client
        self._on_finish = on_finish
        self._requests = requests
        self._ring: KeyRing = client._keys
        # One window per key: each account has its own queue slots (a fixed concurrency is
        # per key too).
        self.slots = SlotPool(
            [
                SlotWindow(fixed=concurrency, initial=initial_concurrency, maximum=max_concurrency)
                for _ in range(self._ring.count)
            ],
            self._ring,
        )
        self._fail_fast = fail_fast
        self._pacer = _Pacer(rate_limit)
        self._manifest_path = manifest
        self.manifest: Manifest | None = None
        self._keys = keys
        self._hooks = on_event
        self._download_to = Path(download_to).resolve() if download_to is not None else None
        self._resubmit_ambiguous = resubmit_ambiguous
        # A job's webhook comes when it finishes: allow ten of the poller's longest waits.
        self._recover_ambiguous = (
            recover_ambiguous
            if recover_ambiguous is not None
            else 10 * client.poll_policy.max_interval
        )
        self._retry_failed = retry_failed
        self._job_timeout = job_timeout
        self._max_rate_limited = max_rate_limited
        self._cancel_grace = cancel_grace
        self._durable = durable
        # Submissions handle "queue full" themselves; every other retry stays the client's.
        self._retry = attrs.evolve(client._transport.retry, retry_rate_limited=False)
        # Task permits bound the tasks alive (and so memory) whatever the input length.
        permits = max(self.slots.maximum, self.slots.limit) + buffer
        self._permits = anyio.Semaphore(permits)
        self.send: MemoryObjectSendStream[BatchItem]
        self.receive: MemoryObjectReceiveStream[BatchItem]
        self.send, self.receive = anyio.create_memory_object_stream[BatchItem](buffer)
        self._root = anyio.CancelScope()
        # Cancelled to stop reading input while the items already started run to their end.
        self._spawner = anyio.CancelScope()
        self._stopped: DreamboothError | None = None
        self._connect_failures = 0
        self._submit_scopes: set[anyio.CancelScope] = set()
        self._grace_handle: asyncio.TimerHandle | None = None
        self._occurrences: dict[str, int] = {}
        self._explicit_keys: set[str] = set()
        # The budget: images (samples) paid for or in flight, those reserved by each item.
        self._max_images = max_images
        self._images = 0
        self._reserved: dict[int, int] = {}
        self._over_budget = False
        # The spend budget: the wallets are read when the run starts (see _spend).
        self._max_spend = max_spend
        self._spend: SpendGuard | None = None
        self._spend_held: dict[int, int] = {}  # item index -> images let through, unanswered
        self.error: BaseException | None = None
        #: Counters for reports and benchmarks.
        self.counts: dict[str, int] = {
            "items": 0,
            "submissions": 0,
            "accepted": 0,
            "rejected_queue_full": 0,
            "rejected_other": 0,
            "done": 0,
            "failed": 0,
            "ambiguous": 0,
            "recovered": 0,
            "skipped": 0,
            "attached": 0,
            "unsent": 0,
            "cache_hits": 0,
            "retried": 0,
            "images": 0,
        }
        #: The same per key (by position), for the run's accounting.
        self.key_counts: list[dict[str, int]] = [
            dict.fromkeys(_KEY_COUNTS, 0) for _ in range(self._ring.count)
        ]

    # --- lifecycle ----------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop the batch. Safe from any task, and from ``__del__`` (never raises)."""
        try:
            self._root.cancel()
            if self._submit_scopes and self._grace_handle is None:
                loop = asyncio.get_running_loop()
                self._grace_handle = loop.call_later(self._cancel_grace, self._cut_submissions)
        except RuntimeError:
            pass  # no running loop: the loop is gone, and the task with it

    def _cut_submissions(self) -> None:
        for scope in list(self._submit_scopes):
            scope.cancel()

    async def run(self) -> None:
        try:
            self.client._check_open()
            self.client.on_retry(self._on_retry)
            if self._download_to is not None:
                # Before anything is paid for: images that cannot be written are money lost.
                writable_folder(self._download_to)
            if self._manifest_path is not None:
                self.manifest = Manifest.open(
                    self._manifest_path,
                    redact=self.client._transport.redact,
                    durable=self._durable,
                )
                if self._max_images is not None:
                    self._images = _images_paid(self.manifest)
            if self._max_spend is not None:
                self._spend = SpendGuard(self.client, self._max_spend)
                await self._spend.start()
            with self._root:
                async with anyio.create_task_group() as tg:
                    with self._spawner:
                        await self._spawn(tg)
        except Exception as exc:
            if self.error is None:
                self.error = _unwrap(exc)
        finally:
            if self._grace_handle is not None:
                self._grace_handle.cancel()
            self.send.close()
            if self.manifest is not None:
                self.manifest.close()
            with contextlib.suppress(ValueError):
                self.client._retry_listeners.remove(self._on_retry)
            if self._on_finish is not None:
                try:
                    self._on_finish()
                except Exception:
                    # Like an event hook: a broken progress display must not hide the outcome.
                    logger.warning("on_finish hook raised; ignored", exc_info=True)

    def _abort(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.cancel()

    def _stop_submitting(self, error: DreamboothError) -> None:
        """No submission can be accepted any more (bad key, no credits): read no more input,
        send nothing more, let accepted jobs finish, then raise ``error`` from the iterator."""
        if self._stopped is None:
            self._stopped = error
            logger.warning(
                "batch stops submitting: %s: %s; items not sent stay pending for a rerun",
                type(error).__name__,
                self.client._transport.redact(str(error)),
            )
        if self.error is None:
            self.error = error
        self._spawner.cancel()

    # --- events -------------------------------------------------------------------------------

    def _emit(self, kind: EventKind, entry: _Entry, **fields: Any) -> None:
        if self._hooks:
            if fields.get("detail"):
                # Error texts come from the service, which may echo what it was sent.
                fields["detail"] = self.client._transport.redact(fields["detail"])
            emit(
                self._hooks,
                BatchEvent(
                    kind=kind,
                    index=entry.index,
                    key=entry.key,
                    concurrency=self.slots.limit,
                    in_flight=self.slots.held,
                    **fields,
                ),
            )

    def _count(self, name: str, entry: _Entry, amount: int = 1) -> None:
        """Count ``name`` for the run and for the key ``entry`` holds, if any."""
        self.counts[name] += amount
        if entry.key_index is not None:
            self.key_counts[entry.key_index][name] += amount

    def _on_retry(self, attempt: int, error: Exception, delay: float) -> None:
        current = _CURRENT.get()
        if current is not None and current[0] is self:
            self._count("retried", current[1])
            self._emit("retried", current[1], eta=delay, detail=f"attempt {attempt}: {error}")

    # --- input --------------------------------------------------------------------------------

    def _entry(self, index: int, raw: BatchInput) -> _Entry:
        if isinstance(raw, tuple):
            if len(raw) != 2 or not isinstance(raw[0], str) or not raw[0]:
                raise TypeError(f"batch input {index}: expected (key, request), got {raw!r}")
            key, request = raw
            explicit = True
        else:
            request = raw
            key = ""
            explicit = False
        if not isinstance(request, Text2Img | Img2Img | Inpaint):
            raise TypeError(
                f"batch input {index}: expected a Text2Img, Img2Img or Inpaint, got {request!r}"
            )
        if not explicit and self._keys is not None:
            key = self._keys(index, request)
            explicit = True
        if not explicit:
            key = request_key(request)
            if self.manifest is not None:
                # Identical requests (same prompt, seed None, say) are separate items: number
                # the repeats so that each has a key of its own in the manifest.
                seen = self._occurrences.get(key, 0) + 1
                self._occurrences[key] = seen
                if seen > 1:
                    key = f"{key}.{seen}"
        elif self.manifest is not None:
            if key in self._explicit_keys:
                raise ValueError(f"batch input {index}: duplicate key {key!r}")
            self._explicit_keys.add(key)
        prior = self.manifest.get(key) if self.manifest is not None else None
        return _Entry(index, key, request, prior, self._plan(prior))

    def _plan(self, prior: ItemState | None) -> _Plan:
        if prior is None:
            return "submit"
        status = prior.status
        if status == "done":
            return "skip"
        if status == "submitted":
            return "attach"
        if status in ("submitting", "ambiguous"):
            return "submit" if self._resubmit_ambiguous else "ambiguous"
        if status == "failed":
            if prior.job_id is not None and prior.error not in _JOB_ENDED_FAILED:
                return "attach"  # the job exists on the service; fetch it, do not pay again
            return "submit" if self._retry_failed else "failed"
        return "submit"  # pending, not_landed: never accepted

    async def _spawn(self, tg: TaskGroup) -> None:
        # The input is stepped by hand rather than through an async generator of our own, so
        # that an early stop closes the user's async iterator here and now, not at GC time.
        source = self._requests
        async_iterator: AsyncIterator[BatchInput] | None = None
        sync_iterator: Iterator[BatchInput] | None = None
        if isinstance(source, AsyncIterable):
            async_iterator = aiter(source)
        else:
            sync_iterator = iter(source)
        index = 0
        try:
            while True:
                await self._permits.acquire()
                try:
                    if async_iterator is not None:
                        try:
                            raw = await anext(async_iterator)
                        except StopAsyncIteration:
                            break
                    else:
                        assert sync_iterator is not None
                        try:
                            raw = next(sync_iterator)
                        except StopIteration:
                            break
                    entry = self._entry(index, raw)
                    self.counts["items"] += 1
                    within = entry.plan != "submit" or self._within_budget(entry)
                    if within and entry.plan == "submit":
                        if self.manifest is not None and entry.prior is None:
                            self.manifest.pending(entry.key, index)
                        entry.key_index = await self.slots.acquire()
                        # The spend is looked at as late as can be: just before sending.
                        within = await self._spend_allows(entry)
                    if not within:
                        self.counts["unsent"] += 1
                        written = entry.key_index is not None  # pending, before its slot
                        if self.manifest is not None and entry.prior is None and not written:
                            self.manifest.pending(entry.key, index)
                        self._permits.release()
                        if not isinstance(source, Sized):
                            break  # a stream may never end: stop reading at the budget
                        index += 1
                        continue
                    if entry.plan == "attach":
                        assert entry.prior is not None
                        entry.key_index = self._prior_key(entry.prior)
                        # The job holds one of its account's slots until it ends.
                        self.slots.force(entry.key_index or 0)
                except BaseException:
                    self._permits.release()
                    raise
                tg.start_soon(self._work, entry, name=f"dreambooth-batch-item-{index}")
                index += 1
            self._permits.release()  # the one taken for the input that was not there
        finally:
            closer = getattr(async_iterator, "aclose", None)
            if closer is not None:
                with anyio.CancelScope(shield=True):
                    await closer()

    def _prior_key(self, prior: ItemState) -> int | None:
        """The key (0-based) that paid for an earlier run's job; None when this run has no
        key at that position."""
        index = prior.key_index
        if not isinstance(index, int) or isinstance(index, bool):
            return 0
        return index if 0 <= index < self._ring.count else None

    async def _spend_allows(self, entry: _Entry) -> bool:
        """Under ``max_spend``, let ``entry`` (holding a slot) be sent, or not: then its slot
        and its images reserved under ``max_images`` are given back."""
        if self._spend is None:
            return True
        samples = entry.request.samples
        if await self._spend.allows(samples):
            self._spend_held[entry.index] = samples
            return True
        self._over_budget = True
        self.slots.windows[entry.key_index or 0].release()
        self._images -= self._reserved.pop(entry.index, 0)
        return False

    def _spend_settled(self, entry: _Entry, *, accepted: bool) -> None:
        """The submission ``max_spend`` let through was answered (or will never be)."""
        samples = self._spend_held.pop(entry.index, None)
        if samples is not None and self._spend is not None:
            self._spend.settled(samples, accepted=accepted)

    def _within_budget(self, entry: _Entry) -> bool:
        """Reserve ``entry``'s images under ``max_images``; False once the budget is spent
        (the item is not sent, and stays pending for a rerun with a larger budget)."""
        if self._spend is not None and self._spend.exhausted:
            return False
        if self._max_images is None:
            return True
        samples = entry.request.samples
        if self._over_budget or self._images + samples > self._max_images:
            if not self._over_budget:
                self._over_budget = True
                logger.info(
                    "batch stops submitting: max_images=%d reached (%d paid for or in flight)",
                    self._max_images,
                    self._images,
                )
            return False
        self._images += samples
        self._reserved[entry.index] = samples
        return True

    # --- one item -----------------------------------------------------------------------------

    async def _work(self, entry: _Entry) -> None:
        _CURRENT.set((self, entry))
        try:
            try:
                item = await self._process(entry)
            except Exception as error:
                # Not an item's error (client closed, manifest unwritable): the batch cannot go
                # on. The first such error wins; siblings are cancelled.
                self._abort(error)
                return
            if item is None or (item.job_id is None and item.status != "done"):
                # Never accepted: its images are no longer in flight.
                self._images -= self._reserved.pop(entry.index, 0)
            self._spend_settled(entry, accepted=False)  # if it was never answered
            if item is None:
                return  # never sent: the batch stopped submitting (see _stop_submitting)
            self._count(item.status, entry)
            if item.resumed and item.status == "done":
                self.counts["skipped"] += 1
            if self._fail_fast and item.status != "done":
                assert item.error is not None
                item.error.add_note(
                    f"batch item {entry.index} (key {entry.key}) failed; fail_fast cancelled "
                    "the rest of the batch"
                )
                self._abort(item.error)
                return
            try:
                await self.send.send(item)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.cancel()  # the consumer has gone: nobody wants the rest
        finally:
            self._permits.release()

    async def _process(self, entry: _Entry) -> BatchItem | None:
        plan = entry.plan
        if plan == "skip":
            return self._resumed(entry)
        if plan == "ambiguous":
            prior = entry.prior
            assert prior is not None
            detail = (
                "an earlier run sent this submission and died before hearing back: it may or "
                "may not have been accepted"
                if prior.status == "submitting"
                else (prior.message or "the submission may or may not have been accepted")
            )
            if prior.status == "submitting" and self.manifest is not None:
                self.manifest.ambiguous(entry.key, None, detail=detail)
            return self._ambiguous(entry, AmbiguousSubmission(entry.key, detail))
        if plan == "failed":
            prior = entry.prior
            assert prior is not None
            error = DreamboothError(
                f"failed in an earlier run ({prior.error}: {prior.message}); "
                "pass retry_failed=True to try again"
            )
            self._emit("failed", entry, job_id=prior.job_id, detail=str(error))
            return BatchItem(
                index=entry.index,
                request=entry.request,
                key=entry.key,
                error=error,
                job_id=prior.job_id,
                resumed=True,
            )
        # The spawner took the slot (or forced it, for "attach").
        slot = _Slot(self.slots, entry.key_index or 0)
        try:
            if plan == "attach":
                prior = entry.prior
                assert prior is not None and prior.job_id is not None
                if entry.key_index is None:
                    # Fetching with another account's key would find no such job.
                    error = DreamboothError(
                        f"job {prior.job_id} was paid for with key #{prior.key_index + 1} "
                        f"(manifest), and this run has {self._ring.count} key(s): run with "
                        "the same keys, in the same order, to fetch it"
                        if isinstance(prior.key_index, int)
                        else f"job {prior.job_id}: no key to fetch it with"
                    )
                    self._emit("failed", entry, job_id=prior.job_id, detail=str(error))
                    return BatchItem(
                        index=entry.index,
                        request=entry.request,
                        key=entry.key,
                        error=error,
                        job_id=prior.job_id,
                        resumed=True,
                    )
                job = self.client.attach(
                    prior.job_id,
                    timeout=self._job_timeout,
                    fetch_url=prior.fetch_url,
                    key_index=entry.key_index if self._ring.several else None,
                )
                self._count("attached", entry)
                self._emit("attached", entry, job_id=job.id)
            else:
                outcome = await self._submit(entry, slot)
                if outcome is None or isinstance(outcome, BatchItem):
                    return outcome
                job = outcome
            try:
                result = await job.wait()
            except AuthenticationError as error:
                if not self._ring.several:
                    raise  # the only key is refused: nothing can go on
                # One key refused on a fetch: retire it; the job, paid for, stays in the
                # manifest for a rerun with a key that works.
                self._ring.retire(slot.index, error)
                slot.release()
                return self._failed(entry, error, job_id=job.id)
            except ClientClosedError:
                raise
            except DreamboothError as error:
                slot.release()
                return self._failed(entry, error, job_id=job.id)
            slot.release()
        finally:
            slot.release()
        return await self._finish(entry, job.id or result.id, result)

    async def _submit(self, entry: _Entry, slot: _Slot) -> Job | BatchItem | None:
        """Submit until accepted; a BatchItem when the item ends here instead, None when the
        batch stopped submitting before this item was sent (it stays pending)."""
        attempt = 0
        turned_away = 0
        while True:
            await self._pacer.wait()
            if self._stopped is not None:
                slot.release()
                self.counts["unsent"] += 1
                return None
            if slot.index in self._ring.retired and self._ring.live():
                await self._move(entry, slot)  # its key was retired meanwhile
                continue
            attempt += 1
            if self.manifest is not None:
                self.manifest.submitting(entry.key, attempt)
            job, error = await self._submit_once(entry, slot)
            if job is not None:
                return job
            assert error is not None
            if isinstance(error, RateLimitError):
                turned_away += 1
                if self.manifest is not None:
                    self.manifest.not_landed(entry.key, _reason(error))
                delay = self._rate_limited(error, turned_away)
                if not error.queue_full and turned_away > self._max_rate_limited:
                    slot.release()
                    return self._failed(entry, error)
                self._emit("rate_limited", entry, eta=delay, detail=str(error))
                window = slot.window
                if error.queue_full and window.held - 1 - window.submitting - window.parked > 0:
                    # The batch has jobs on the service: when one of them ends, the service
                    # has room. The item keeps its slot meanwhile (the window already dropped to
                    # the jobs), so it goes next, ahead of fresh items.
                    await window.park(delay)
                    continue
                slot.release()
                await anyio.sleep(delay)
                entry.key_index = await self.slots.acquire(priority=True)
                slot.take(entry.key_index)
                continue
            if isinstance(error, _STOPS_SUBMITTING):
                # Every other submission with this key would be refused the same way. Nothing
                # was accepted. With another key live, the key is retired and the item goes
                # again, first in line; otherwise it stays pending for a rerun (after topping
                # up, or with a good key); jobs already accepted finish and are collected.
                if self.manifest is not None:
                    self.manifest.not_landed(entry.key, type(error).__name__)
                if self._ring.retire(slot.index, error):
                    await self._move(entry, slot)
                    continue
                slot.release()
                self._stop_submitting(error)
                self.slots.wake()  # items waiting for a slot go on to find the batch stopped
                return None
            if isinstance(error, AmbiguousSubmission | TransportError | ServerError) and (
                isinstance(error, AmbiguousSubmission) or error.may_have_landed
            ):
                recovered = await self._recover(entry, error, slot)
                if recovered is not None:
                    return recovered
                detail = str(error)
                if self.manifest is not None:
                    self.manifest.ambiguous(entry.key, error, detail=detail)
                if self._resubmit_ambiguous:
                    self._emit("retried", entry, detail=f"resubmitting after: {detail}")
                    await anyio.sleep(_backoff(attempt))
                    continue
                slot.release()
                wrapped = (
                    error
                    if isinstance(error, AmbiguousSubmission)
                    else AmbiguousSubmission(entry.key, detail, error)
                )
                return self._ambiguous(entry, wrapped)
            slot.release()
            if isinstance(error, TransportError):
                # Never connected (the transport had retried): nothing landed, so the item stays
                # pending for a rerun whatever retry_failed says.
                if self.manifest is not None:
                    self.manifest.not_landed(entry.key, "unreachable")
                if self._unreachable(error):
                    # Nothing listening, DNS, a firewall: stop rather than spend minutes
                    # failing every item the same way.
                    self._stop_submitting(error)
                    return None
                return self._failed(entry, error, recorded=True)
            return self._failed(entry, error)

    async def _move(self, entry: _Entry, slot: _Slot) -> None:
        """Give back the slot of a retired key and wait, first in line, for one on a live
        key."""
        slot.release()
        self.slots.wake()  # the retired key's waiters move on too
        entry.key_index = await self.slots.acquire(priority=True)
        slot.take(entry.key_index)

    def _unreachable(self, error: TransportError) -> bool:
        """True once ``UNREACHABLE_AFTER`` submissions in a row could not connect at all
        (the transport had already retried each)."""
        self._connect_failures = self._connect_failures + 1 if not error.may_have_landed else 0
        return self._connect_failures >= UNREACHABLE_AFTER

    async def _recover(self, entry: _Entry, error: DreamboothError, slot: _Slot) -> Job | None:
        """The job of a submission whose answer was lost, if the service's webhook call
        names it in time (only with a webhook receiver)."""
        if self._recover_ambiguous <= 0 or getattr(error, "webhook_token", None) is None:
            return None
        self._emit("retried", entry, detail="answer lost: waiting for the webhook to name the job")
        # The slot is given back meanwhile: most such submissions never landed, and a wait that
        # held it would starve the batch. If this one did land, the service may turn the next
        # submission away as "queue full", which the window handles.
        slot.release()
        sent_with = slot.index
        job = await self.client.recover(
            error,
            timeout=self._recover_ambiguous,
            key_index=sent_with if self._ring.several else None,
        )
        if job is None:
            entry.key_index = await self.slots.acquire(priority=True)
        else:
            entry.key_index = sent_with
            self.slots.force(sent_with)  # the job holds one of the account's slots until it ends
        slot.take(entry.key_index)
        if job is None:
            return None
        self.counts["recovered"] += 1
        if self.manifest is not None:
            self.manifest.submitted(
                entry.key, job.id, fetch_url=None, eta=None, key_index=self._paid_with(slot)
            )
        self._emit("submitted", entry, job_id=job.id, detail="recovered from its webhook call")
        return job

    def _paid_with(self, slot: _Slot) -> int | None:
        # Recorded only with several keys: a single-key manifest reads as it always did.
        return slot.index if self._ring.several else None

    async def _submit_once(
        self, entry: _Entry, slot: _Slot
    ) -> tuple[Job | None, DreamboothError | None]:
        # Shielded: once the POST may be on the wire, a cancelled batch still waits (for up to
        # cancel_grace) for the answer and records the job id, so a rerun can attach to it.
        scope = anyio.CancelScope(shield=True)
        self._submit_scopes.add(scope)
        self._count("submissions", entry)
        window = slot.window
        window.submitting += 1
        job: Job | None = None
        try:
            with scope:
                try:
                    # The submission goes out with the key whose slot the item holds.
                    with pinned(slot.index):
                        job = await self.client.submit(
                            entry.request, retry=self._retry, timeout=self._job_timeout
                        )
                except DreamboothError as error:
                    if isinstance(error, RateLimitError):
                        if error.queue_full:
                            self._count("rejected_queue_full", entry)
                            window.on_queue_full()
                        else:
                            self._count("rejected_other", entry)
                    return None, error
                finally:
                    window.submitting -= 1
                self._connect_failures = 0
                from_cache = _from_cache(job)
                self._spend_settled(entry, accepted=not from_cache)
                if from_cache:
                    # Nothing was sent (a stored result) or paid by this run (another's job,
                    # followed): not a submission, and no image spent from the budget.
                    self._count("submissions", entry, -1)
                    self._count("cache_hits" if job.done() else "attached", entry)
                    self._images -= self._reserved.pop(entry.index, 0)
                else:
                    self._count("accepted", entry)
                    self._count("images", entry, entry.request.samples)
                    window.on_accepted()
                if self.manifest is not None:
                    self.manifest.submitted(
                        entry.key,
                        job.id,
                        fetch_url=job._state.fetch_url,
                        eta=job.eta,
                        key_index=self._paid_with(slot),
                    )
        finally:
            self._submit_scopes.discard(scope)
        if job is None:
            # The grace period ran out with the POST unanswered.
            return None, AmbiguousSubmission(
                entry.key, "the batch was cancelled while the submission was unanswered"
            )
        self._emit("submitted", entry, job_id=job.id)
        if not job.done():
            self._emit("queued", entry, job_id=job.id, eta=job.eta)
        return job, None

    def _rate_limited(self, error: RateLimitError, turned_away: int) -> float:
        """Seconds to wait, at most, before sending a turned-away item again.

        The service's ``retry_after`` when it gave one. Otherwise the time scale is the
        client's own jobs: until the next of them should end (a queue slot frees when one of
        *our* jobs finishes), or a share of the durations measured; a blind back-off only when
        nothing is known yet.
        """
        cap = self._retry.max_retry_after
        if error.retry_after is not None:
            delay = min(error.retry_after, cap) * random.uniform(1.0, 1.05)
        else:
            delay = min(cap, self._expected_room(turned_away))
        if not error.queue_full and not _is_spam(error):
            # A rate limit on requests, not slots: hold back every submission, not just this.
            self._pacer.pause(delay)
        return delay

    def _expected_room(self, turned_away: int) -> float:
        """Seconds until the service should have room, from what the client knows of its jobs
        (see :meth:`_rate_limited`); longer with every refusal in a row."""
        poller = self.client.poller
        growth = 1.5 ** max(0, turned_away - 1)
        typical = poller.durations.typical()
        next_finish = poller.next_finish()
        if next_finish is not None:
            wait = max(0.0, next_finish - time.monotonic())
            # A job past its estimate is still running: a share of a job's length more.
            share = 0.1 * (typical if typical is not None else wait)
            return max(_MIN_WAIT, wait + share * growth)
        if typical is not None:
            return max(_MIN_WAIT, 0.25 * typical * growth) * random.uniform(0.9, 1.1)
        return _backoff(turned_away)

    async def _finish(
        self, entry: _Entry, job_id: str | None, result: GenerationResult
    ) -> BatchItem:
        files: tuple[Path, ...] = ()
        if self._download_to is not None:
            try:
                files = await self._download(entry, result)
            except (DreamboothError, OSError) as error:
                return self._failed(entry, error, job_id=job_id)
        if self.manifest is not None:
            self.manifest.done(
                entry.key,
                job_id=job_id,
                files=[path.name for path in files],
                output=list(result.output),
                seed=result.seed if result.seed is not None else entry.request.seed,
            )
        self._emit("done", entry, job_id=job_id)
        return BatchItem(
            index=entry.index,
            request=entry.request,
            result=result,
            key=entry.key,
            job_id=job_id,
            files=files,
        )

    async def _download(self, entry: _Entry, result: GenerationResult) -> tuple[Path, ...]:
        # Into a staging folder first, then renamed to names derived from the key: a crash
        # leaves nothing half-written under a final name, and a rerun writes the same names.
        assert self._download_to is not None
        folder = self._download_to
        stem = _file_stem(entry.key)
        staging = folder / ".partial" / stem
        shutil.rmtree(staging, ignore_errors=True)
        try:
            paths = await self.client.download(result, staging)
            final: list[Path] = []
            for number, path in enumerate(paths):
                target = folder / f"{stem}-{number}{path.suffix.lower()}"
                os.replace(path, target)
                final.append(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):
                staging.parent.rmdir()  # only when no other item is downloading
        return tuple(final)

    # --- endings ------------------------------------------------------------------------------

    def _resumed(self, entry: _Entry) -> BatchItem:
        prior = entry.prior
        assert prior is not None
        meta = {"seed": prior.seed} if prior.seed is not None else {}
        result = GenerationResult(
            id=prior.job_id, status="success", output=prior.output, meta=meta, client=self.client
        )
        folder = self._download_to
        files = tuple((folder / name) if folder else Path(name) for name in prior.files)
        self._emit("skipped", entry, job_id=prior.job_id)
        return BatchItem(
            index=entry.index,
            request=entry.request,
            result=result,
            key=entry.key,
            job_id=prior.job_id,
            files=files,
            resumed=True,
        )

    def _failed(
        self,
        entry: _Entry,
        error: BaseException,
        *,
        job_id: str | None = None,
        recorded: bool = False,
    ) -> BatchItem:
        """The item ends failed; ``recorded`` when the manifest already holds its state."""
        if self.manifest is not None and not recorded:
            self.manifest.failed(entry.key, error, job_id=job_id)
        self._emit("failed", entry, job_id=job_id, detail=f"{type(error).__name__}: {error}")
        return BatchItem(
            index=entry.index, request=entry.request, key=entry.key, error=error, job_id=job_id
        )

    def _ambiguous(self, entry: _Entry, error: AmbiguousSubmission) -> BatchItem:
        self._emit("ambiguous", entry, detail=str(error))
        return BatchItem(
            index=entry.index,
            request=entry.request,
            key=entry.key,
            error=error,
            ambiguous=True,
            resumed=entry.plan == "ambiguous",
        )


class _Slot:
    """One item's hold on a slot of key ``index``'s window; release is idempotent."""

    __slots__ = ("_held", "_pool", "index")

    def __init__(self, pool: SlotPool, index: int) -> None:
        self._pool = pool
        self.index = index
        self._held = True

    @property
    def window(self) -> SlotWindow:
        return self._pool.windows[self.index]

    def release(self) -> None:
        if self._held:
            self._held = False
            self.window.release()

    def take(self, index: int) -> None:
        # Called right after pool.acquire() returned ``index``: the slot is already counted.
        self.index = index
        self._held = True


def _from_cache(job: Job) -> bool:
    """True when the client's result cache answered: a stored result, or a job another
    process paid for (attached by id, so it has no request of ours)."""
    if job.request is None:
        return True
    future = job._state.future
    if not future.done() or future.cancelled() or future.exception() is not None:
        return False
    from ._cache import CachedResult

    return isinstance(job.result(), CachedResult)


def _is_spam(error: RateLimitError) -> bool:
    text = f"{error.message} {error.tip or ''}".lower()
    return "same request" in text or error.message.strip().lower() == "rate limit exceeded"


def _reason(error: RateLimitError) -> str:
    if error.queue_full:
        return "queue_full"
    return "spam_filter" if _is_spam(error) else "rate_limited"


#: The least wait before a turned-away item is sent again (politeness).
_MIN_WAIT = 0.05


def _backoff(attempt: int) -> float:
    """A blind back-off, for when nothing is known of how long the service's jobs take."""
    return random.uniform(0.5, 1.0) * min(10.0, 0.25 * 2.0 ** max(0, attempt - 1))


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


# --- the consumer side ------------------------------------------------------------------------


class BatchRun(AsyncIterator[BatchItem]):
    """What ``client.map()`` returns: an async iterator of :class:`BatchItem` as they complete,
    and an async context manager that guarantees cleanup.

    ::

        async with client.map(requests) as items:
            async for item in items:
                ...

    Leaving the block (or calling :meth:`aclose`) cancels whatever is still running and waits
    until it has stopped. A bare ``async for`` works too; when the loop is left early, the run
    is cancelled as soon as the iterator is dropped, and finishes stopping in the background.
    The batch starts on first use, not when this object is created.
    """

    def __init__(self, engine: _Engine) -> None:
        self._engine = engine
        self._receive = engine.receive
        self._task: asyncio.Task[None] | None = None
        self._finished = False

    def __repr__(self) -> str:
        state = "finished" if self._finished else ("running" if self._task else "not started")
        return f"<BatchRun {state} concurrency={self._engine.slots.limit}>"

    # --- introspection ------------------------------------------------------------------------

    @property
    def concurrency(self) -> int:
        """The current slot limit (it moves while an adaptive batch learns the account's);
        with several keys, the sum over the live keys."""
        return self._engine.slots.limit

    @property
    def stats(self) -> dict[str, int]:
        """Counters: items, submissions (sent to the service), accepted, images (samples of
        the accepted jobs), rejected_queue_full, rejected_other, retried (calls the transport
        tried again), done, failed, ambiguous, recovered (named by a webhook after a lost
        answer), skipped, attached, cache_hits (answered by the client's result cache, not
        sent), unsent (left pending by a budget or a stop), and peak_concurrency /
        concurrency."""
        return {
            **self._engine.counts,
            "concurrency": self._engine.slots.limit,
            "peak_concurrency": self._engine.slots.peak,
        }

    @property
    def key_stats(self) -> list[dict[str, Any]]:
        """The same counters per API key, in the order of the client's keys (never the keys
        themselves): ``key`` (``"#1"``...), ``key_index`` (0-based), submissions, accepted,
        images, rejected_queue_full, rejected_other, retried, attached, done, failed,
        ambiguous, ``retired`` (the error's type name, or None), ``concurrency`` (its
        window's limit) and ``peak_in_flight`` (the most slots it held at once)."""
        engine = self._engine
        return [
            {
                "key": f"#{index + 1}",
                "key_index": index,
                **counts,
                "retired": engine._ring.retired.get(index),
                "concurrency": engine.slots.windows[index].limit,
                "peak_in_flight": engine.slots.peak_held[index],
            }
            for index, counts in enumerate(engine.key_counts)
        ]

    # --- lifecycle ----------------------------------------------------------------------------

    def _start(self) -> None:
        if self._task is None and not self._finished:
            task = asyncio.get_running_loop().create_task(
                self._engine.run(), name="dreambooth-batch"
            )
            _LIVE_TASKS.add(task)
            task.add_done_callback(_LIVE_TASKS.discard)
            task.add_done_callback(_retrieve)
            self._task = task

    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel what is still running and wait until it has stopped."""
        self._engine.cancel()
        self._receive.close()
        if self._task is None:
            self._engine.send.close()
        else:
            with anyio.CancelScope(shield=True):
                await asyncio.wait({self._task})
        self._finished = True

    def __del__(self) -> None:
        # Reached when a bare `async for` was left early and nothing else holds the run.
        if not self._finished:
            self._engine.cancel()
            self._receive.close()
            if self._task is None:
                self._engine.send.close()

    # --- iteration ----------------------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> BatchItem:
        if self._finished:
            raise StopAsyncIteration
        self._start()
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            pass
        # The engine closed the stream: it is ending; wait for it, then report how it ended.
        assert self._task is not None
        with anyio.CancelScope(shield=True):
            await asyncio.wait({self._task})
        self._finished = True
        self._receive.close()
        error = self._engine.error
        if error is not None:
            raise error
        raise StopAsyncIteration


def _images_paid(manifest: Iterable[ItemState]) -> int:
    """Images a manifest says earlier runs paid for: outputs of done items, one per job
    still in flight (its samples are not recorded)."""
    total = 0
    for state in manifest:
        if state.status == "done":
            total += max(1, len(state.output))
        elif state.status == "submitted":
            total += 1
    return total


def _retrieve(task: asyncio.Task[None]) -> None:
    # The engine stores its own errors; this only keeps asyncio from logging a native
    # cancellation or an escaped BaseException as "never retrieved".
    if not task.cancelled():
        task.exception()


class MapOptions(TypedDict, total=False):
    """The keyword options of ``client.map`` / ``client.gather`` (see :func:`map_requests`)."""

    max_concurrency: int | None
    initial_concurrency: int
    fail_fast: bool
    rate_limit: float | None
    manifest: str | os.PathLike[str] | None
    keys: Callable[[int, GenerationRequest], str] | None
    on_event: EventHook | Iterable[EventHook] | None
    download_to: str | os.PathLike[str] | None
    resubmit_ambiguous: bool
    recover_ambiguous: float | None
    retry_failed: bool
    job_timeout: float | None
    max_rate_limited: int
    buffer: int
    cancel_grace: float
    durable: bool
    on_finish: Callable[[], None] | None
    max_images: int | None
    max_spend: float | None


def map_requests(
    client: DreamboothClient,
    requests: Iterable[BatchInput] | AsyncIterable[BatchInput],
    concurrency: int | None = None,
    *,
    max_concurrency: int | None = None,
    initial_concurrency: int = 2,
    fail_fast: bool = False,
    rate_limit: float | None = None,
    manifest: str | os.PathLike[str] | None = None,
    keys: Callable[[int, GenerationRequest], str] | None = None,
    on_event: EventHook | Iterable[EventHook] | None = None,
    download_to: str | os.PathLike[str] | None = None,
    resubmit_ambiguous: bool = False,
    recover_ambiguous: float | None = None,
    retry_failed: bool = True,
    job_timeout: float | None = None,
    max_rate_limited: int = 20,
    buffer: int = 16,
    cancel_grace: float = 10.0,
    durable: bool = True,
    on_finish: Callable[[], None] | None = None,
    max_images: int | None = None,
    max_spend: float | None = None,
) -> BatchRun:
    """Run many generation requests under the account's queue-slot limit.

    Returns a :class:`BatchRun`: iterate it for :class:`BatchItem` s as they complete (use it
    as ``async with`` for guaranteed cleanup). The input is any iterable or async iterable of
    requests, or of ``(key, request)`` pairs, and is read lazily, at most a few items ahead of
    the slots.

    :param concurrency: a fixed number of slots; ``None`` (the default) finds the account's
        limit (see :class:`SlotWindow`), starting at ``initial_concurrency``.
    :param max_concurrency: the adaptive ceiling (default: ``client.max_concurrency``).
    :param fail_fast: on the first item that fails, cancel the rest and raise its error from
        the iterator. By default an item's error stays in its item and the batch goes on.
    :param rate_limit: at most this many submissions per second.
    :param manifest: a JSONL file recording every item's state; a rerun with the same manifest
        skips done items, attaches to accepted ones by id and submits only the rest.
    :param keys: ``keys(index, request) -> str`` gives each item's key (default: a hash of
        the request; repeats of an identical request are numbered ``<hash>.2``, ... when a
        manifest is used).
    :param on_event: a callable (or several) receiving a :class:`BatchEvent` per state change.
    :param download_to: download each result's images into this folder, named
        ``<key>-<n>.<ext>``, before the item counts as done.
    :param recover_ambiguous: with a client that has a :class:`WebhookReceiver`, how long to
        wait for the service's webhook call to name the job of a submission whose answer was
        lost (default: ten times the poll policy's ``max_interval``, 300 s; 0 turns it off).
        A named job is attached to and counts as submitted, so a paid-for image is not lost;
        otherwise the item ends ambiguous.
    :param resubmit_ambiguous: send again a submission that may have landed (risks paying
        twice). By default such items end as ambiguous (:class:`AmbiguousSubmission`).
    :param retry_failed: on resume, submit again items that failed in an earlier run (jobs that
        exist on the service, say after a timeout, are attached to instead).
    :param job_timeout: bound each job's wait (default: the client's poll policy).
    :param max_rate_limited: how many times an item turned away by a rate limit that is not
        "queue full" (spam filter, 429) is retried before it fails.
    :param buffer: finished items held for a slow consumer; extra task permits.
    :param cancel_grace: seconds a cancelled batch waits for submissions already sent.
    :param durable: fsync the manifest where it matters (turn off only for throwaway runs).
    :param on_finish: called once in the event loop when the batch has stopped, however it
        ended (``client.map(progress=True)`` closes its progress display with it).
    :param max_images: a budget: submit no more once this many images (``samples`` count)
        are paid for or in flight; with a manifest, images done in earlier runs count too.
        Items past it are not sent, end quietly (no error) and stay pending in the manifest
        (``run.stats["unsent"]`` counts them), so a rerun with a larger budget continues. A
        sized input (a list) is read to its end, so done items are still reported; a stream
        is read no further.
    :param max_spend: a budget in the wallet's currency: the balance of every key is read
        when the batch starts (it raises if none can be read) and again now and then (every
        5 s or 10 submissions, and before a submission the measured price per image says
        would pass the budget); no submission is sent once the balances have dropped by this
        much, or would. The rest stays pending, as with ``max_images``.
    """
    if concurrency is not None and concurrency < 1:
        raise ValueError("concurrency must be at least 1, or None to adapt")
    ceiling = max_concurrency if max_concurrency is not None else client.max_concurrency
    if ceiling < 1:
        raise ValueError("max_concurrency must be at least 1")
    if initial_concurrency < 1:
        raise ValueError("initial_concurrency must be at least 1")
    if max_images is not None and (isinstance(max_images, bool) or max_images < 0):
        raise ValueError("max_images must be a number of images (0 or more), or None")
    if max_spend is not None and (
        isinstance(max_spend, bool) or not isinstance(max_spend, int | float) or not max_spend > 0
    ):
        raise ValueError("max_spend must be an amount above 0, or None")
    hooks: tuple[EventHook, ...]
    if on_event is None:
        hooks = ()
    elif callable(on_event):
        hooks = (on_event,)
    else:
        hooks = tuple(on_event)
    engine = _Engine(
        client,
        requests,
        concurrency=concurrency,
        max_concurrency=ceiling,
        initial_concurrency=initial_concurrency,
        fail_fast=fail_fast,
        rate_limit=rate_limit,
        manifest=manifest,
        keys=keys,
        on_event=hooks,
        download_to=download_to,
        resubmit_ambiguous=resubmit_ambiguous,
        recover_ambiguous=recover_ambiguous,
        retry_failed=retry_failed,
        job_timeout=job_timeout,
        max_rate_limited=max_rate_limited,
        buffer=max(0, buffer),
        cancel_grace=cancel_grace,
        durable=durable,
        on_finish=on_finish,
        max_images=max_images,
        max_spend=max_spend,
    )
    return BatchRun(engine)
