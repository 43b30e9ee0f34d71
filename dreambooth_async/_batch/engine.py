"""The batch's state machine: one task group that reads the input lazily, starts a task per
item when a slot (and a task permit) is free, and takes each item from plan to ending.

- A spawner reads the input lazily, one item ahead, and starts a task per item only when a
  slot (and a task permit) is free: tasks alive and memory stay bounded by the concurrency,
  not by the number of requests.
- Cancelling the engine cancels its group. A submission already on the wire is allowed a
  grace period to be answered and recorded, because cutting it off could leave a paid job
  that nobody knows the id of.
- Finished items travel to the consumer (:class:`~.run.BatchRun`) through a memory object
  stream; the engine knows nothing of the consumer-side object.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sized
from typing import TYPE_CHECKING

import anyio

from .._download import SessionSource, writable_folder
from .._errors import AuthenticationError, ClientClosedError, DreamboothError, sole_error
from .._keys import KeyRing
from .._manifest import Manifest
from .._spend import SpendGuard
from .._telemetry import NO_TELEMETRY, NO_TRACE, Telemetry, outcome_of
from .._transport import logger
from .budget import Budget
from .host import BatchHost
from .items import BatchInput, BatchItem
from .options import BatchOptions
from .pacer import Pacer
from .plan import Entry, Planner, prior_key
from .sinks import Endings
from .submit import Submitter
from .tally import Tally
from .window import Slot, SlotPool, SlotWindow

if TYPE_CHECKING:
    from anyio.abc import TaskGroup
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["Engine"]


class Engine:
    """Runs one batch inside its own task group; knows nothing of the consumer-side object."""

    def __init__(
        self,
        client: BatchHost,
        requests: Iterable[BatchInput] | AsyncIterable[BatchInput],
        options: BatchOptions,
        telemetry: Telemetry = NO_TELEMETRY,
        *,
        sessions: SessionSource | None = None,
    ) -> None:
        self.client = client
        self._sessions = sessions
        self.options = options
        self._telemetry = telemetry
        self._requests = requests
        #: The client's key positions (shared: a key refused here is retired for the client).
        self.ring: KeyRing = client.key_ring
        # One window per key: each account has its own queue slots (a fixed concurrency is
        # per key too). By default the client's, shared with its single calls and batches.
        self.slots = (
            client.slot_pool
            if options.shared_window
            else SlotPool(
                [
                    SlotWindow(
                        fixed=options.concurrency,
                        initial=options.initial_concurrency,
                        maximum=options.max_concurrency,
                    )
                    for _ in range(self.ring.count)
                ],
                self.ring,
            )
        )
        self._pacer = Pacer(options.rate_limit)
        self.manifest: Manifest | None = None
        self._budget = Budget(
            max_images=options.max_images,
            max_spend=options.max_spend,
            price_per_image=options.price_per_image,
            track_spend=options.track_spend,
        )
        self.tally = Tally(
            options.on_event, slots=self.slots, key_count=self.ring.count, redact=client.redact
        )
        # Task permits bound the tasks alive (and so memory) whatever the input length.
        permits = max(self.slots.maximum, self.slots.limit) + options.buffer
        self._permits = anyio.Semaphore(permits)
        self.send: MemoryObjectSendStream[BatchItem]
        self.receive: MemoryObjectReceiveStream[BatchItem]
        self.send, self.receive = anyio.create_memory_object_stream[BatchItem](options.buffer)
        self._root = anyio.CancelScope()
        # Cancelled to stop reading input while the items already started run to their end.
        self._spawner = anyio.CancelScope()
        self._submit_scopes: set[anyio.CancelScope] = set()
        self._grace_handle: asyncio.TimerHandle | None = None
        self.error: BaseException | None = None

    @property
    def counts(self) -> dict[str, int]:
        """The run's counters (see ``BatchRun.stats``)."""
        return self.tally.counts

    @property
    def key_counts(self) -> list[dict[str, int]]:
        """The counters per key, by position."""
        return self.tally.key_counts

    @property
    def budget_reached(self) -> bool:
        """True once a budget kept an item from being sent."""
        return self._budget.reached

    @property
    def spend(self) -> SpendGuard | None:
        """The run's spend, when it counts it."""
        return self._budget.spend

    # --- lifecycle ----------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop the batch. Safe from any task, and from ``__del__`` (never raises)."""
        try:
            self._root.cancel()
            if self._submit_scopes and self._grace_handle is None:
                loop = asyncio.get_running_loop()
                self._grace_handle = loop.call_later(
                    self.options.cancel_grace, self._cut_submissions
                )
        except RuntimeError:
            pass  # no running loop: the loop is gone, and the task with it

    def _cut_submissions(self) -> None:
        for scope in list(self._submit_scopes):
            scope.cancel()

    async def run(self) -> None:
        try:
            if not self.client.is_open:
                raise ClientClosedError(
                    "the client is not open (not started, or closed): use it inside "
                    "`async with DreamboothClient(...) as client:`"
                )
            if self.options.download_to is not None:
                # Before anything is paid for: images that cannot be written are money lost.
                writable_folder(self.options.download_to)
            if self.options.manifest is not None:
                self.manifest = Manifest.open(
                    self.options.manifest,
                    redact=self.client.redact,
                    durable=self.options.durable,
                )
            await self._budget.start(self.client, self.manifest)
            endings = Endings(
                self.client,
                manifest=self.manifest,
                tally=self.tally,
                download_to=self.options.download_to,
                sessions=self._sessions,
            )
            submitter = Submitter(
                self.client,
                self.options,
                manifest=self.manifest,
                slots=self.slots,
                pacer=self._pacer,
                tally=self.tally,
                budget=self._budget,
                endings=endings,
                scopes=self._submit_scopes,
                on_stop=self._stop_submitting,
            )
            with self._root:
                async with anyio.create_task_group() as tg:
                    with self._spawner:
                        await self._spawn(tg, endings, submitter)
        except Exception as exc:
            if self.error is None:
                self.error = sole_error(exc)
        finally:
            if self._grace_handle is not None:
                self._grace_handle.cancel()
            self.send.close()
            if self.manifest is not None:
                self.manifest.close()
            if self.options.on_finish is not None:
                try:
                    self.options.on_finish()
                except Exception:
                    # Like an event hook: a broken progress display must not hide the outcome.
                    logger.warning("on_finish hook raised; ignored", exc_info=True)

    def _abort(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.cancel()

    def _stop_submitting(self, error: DreamboothError) -> None:
        """No submission can be accepted any more: read no more input, let accepted jobs
        finish, then raise ``error`` from the iterator."""
        if self.error is None:
            self.error = error
        self._spawner.cancel()

    # --- input --------------------------------------------------------------------------------

    async def _spawn(self, tg: TaskGroup, endings: Endings, submitter: Submitter) -> None:
        planner = Planner(
            self.manifest,
            keys=self.options.keys,
            resubmit_ambiguous=self.options.resubmit_ambiguous,
            retry_failed=self.options.retry_failed,
        )
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
                    entry = planner.entry(index, raw)
                    self.counts["items"] += 1
                    within = entry.plan != "submit" or self._budget.reserve(entry)
                    if within and entry.plan == "submit":
                        if self.manifest is not None and entry.prior is None:
                            self.manifest.pending(entry.key, index)
                        entry.key_index = await self.slots.acquire()
                        await submitter.key_probed(entry.key_index or 0)
                        # The spend is looked at as late as can be: just before sending.
                        within = await self._budget.spend_allows(entry)
                        if not within:
                            self.slots.windows[entry.key_index or 0].release()
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
                        entry.key_index = prior_key(entry.prior, self.ring.count)
                        # The job holds one of its account's slots until it ends.
                        self.slots.force(entry.key_index or 0)
                except BaseException:
                    self._permits.release()
                    raise
                tg.start_soon(
                    self._work, entry, endings, submitter, name=f"dreambooth-batch-item-{index}"
                )
                index += 1
            self._permits.release()  # the one taken for the input that was not there
        finally:
            closer = getattr(async_iterator, "aclose", None)
            if closer is not None:
                with anyio.CancelScope(shield=True):
                    await closer()

    # --- one item -----------------------------------------------------------------------------

    async def _work(self, entry: Entry, endings: Endings, submitter: Submitter) -> None:
        try:
            # One trace per item that goes to the service: its submissions (queue-full answers
            # included), its fetches and its outcome.
            trace = (
                self._telemetry.generation("batch_item", entry.request, index=entry.index)
                if entry.plan in ("submit", "attach")
                else NO_TRACE
            )
            try:
                with trace.active():
                    item = await self._process(entry, endings, submitter)
            except BaseException as error:
                trace.finish(outcome_of(error), error)
                if not isinstance(error, Exception):
                    raise
                # Not an item's error (client closed, manifest unwritable): the batch cannot go
                # on. The first such error wins; siblings are cancelled.
                self._abort(error)
                return
            if item is None:
                trace.finish("unsent")
            else:
                trace.finish(
                    outcome_of(item.error) if item.status != "done" else "success", item.error
                )
            if item is None or (item.job_id is None and item.status != "done"):
                # Never accepted: its images are no longer in flight.
                self._budget.unreserve(entry)
            else:
                self._budget.keep(entry)
            self._budget.spend_settled(entry, accepted=False)  # if it was never answered
            if item is None:
                return  # never sent: the batch stopped submitting (see Submitter._stop)
            self.tally.count(item.status, entry)
            if item.resumed and item.status == "done":
                self.counts["skipped"] += 1
            if self.options.fail_fast and item.status != "done":
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

    async def _process(
        self, entry: Entry, endings: Endings, submitter: Submitter
    ) -> BatchItem | None:
        if entry.plan in ("skip", "ambiguous", "failed"):
            return endings.earlier(entry)
        # The spawner took the slot (or forced it, for "attach").
        slot = Slot(self.slots, entry.key_index or 0)
        try:
            if entry.plan == "attach":
                slot.running()  # its job is on the service (the spawner forced the slot)
                prior = entry.prior
                assert prior is not None and prior.job_id is not None
                if entry.key_index is None:
                    return endings.unfetchable(entry, self.ring.count)
                job = self.client.attach(
                    prior.job_id,
                    timeout=self.options.job_timeout,
                    fetch_url=prior.fetch_url,
                    key_index=entry.key_index if self.ring.several else None,
                )
                self.tally.count("attached", entry)
                self.tally.emit("attached", entry, job_id=job.id)
            else:
                outcome = await submitter.submit(entry, slot)
                if outcome is None or isinstance(outcome, BatchItem):
                    return outcome
                job = outcome
            try:
                result = await job.wait()
            except AuthenticationError as error:
                if not self.ring.several:
                    raise  # the only key is refused: nothing can go on
                # One key refused on a fetch: retire it; the job, paid for, stays in the
                # manifest for a rerun with a key that works.
                self.ring.retire(slot.index, error)
                slot.release()
                return endings.failed(entry, error, job_id=job.id)
            except ClientClosedError:
                raise
            except DreamboothError as error:
                slot.release()
                return endings.failed(entry, error, job_id=job.id)
            slot.release()
        finally:
            slot.release()
        return await endings.done(entry, job.id or result.id, result)
