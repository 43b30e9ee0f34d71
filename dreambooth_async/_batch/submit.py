"""Sending one item until the service accepts it: the pacing, "queue full" and other rate
limits, keys refused mid-run, answers lost on the wire (recovered from a webhook or reported
ambiguous), and the service being unreachable."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import anyio
import attrs

from .._backoff import blind, retry_after, room_expected
from .._errors import (
    AuthenticationError,
    DreamboothError,
    InsufficientCredits,
    RateLimitError,
    ServerError,
    TransportError,
)
from .._job import Job
from .._keys import KeyRing
from .._manifest import Manifest
from .._models import CachedResult
from .._transport import logger
from .absence import UNREACHABLE_AFTER, Absence, is_absence
from .budget import Budget
from .host import BatchHost
from .items import AmbiguousSubmission, BatchItem
from .options import BatchOptions
from .pacer import Pacer
from .plan import Entry
from .probe import KeyProbe
from .sinks import Endings
from .tally import Tally
from .window import MIN_WAIT, Slot, SlotPool, room_wait, wait_for_room

__all__ = ["UNREACHABLE_AFTER", "Submitter"]

# Errors after which no submission of this batch can be accepted: stop submitting, keep the
# rest pending in the manifest, and report why.
_STOPS_SUBMITTING = (AuthenticationError, InsufficientCredits)

#: The least wait before a turned-away item is sent again (politeness).
_MIN_WAIT = MIN_WAIT

#: The jitter on the service's ``retry_after``: only ever later, a little.
_RETRY_AFTER_JITTER = (1.0, 1.05)


class Submitter:
    """Submits the batch's items, each holding a slot, until accepted or settled otherwise."""

    def __init__(
        self,
        client: BatchHost,
        options: BatchOptions,
        *,
        manifest: Manifest | None,
        slots: SlotPool,
        pacer: Pacer,
        tally: Tally,
        budget: Budget,
        endings: Endings,
        scopes: set[anyio.CancelScope],
        on_stop: Callable[[DreamboothError], None],
    ) -> None:
        self._client = client
        self._options = options
        self._manifest = manifest
        self._ring: KeyRing = client.key_ring
        self._slots = slots
        self._pacer = pacer
        self._tally = tally
        self._budget = budget
        self._endings = endings
        #: The shields of submissions on the wire: the engine cuts them when the grace ends.
        self._scopes = scopes
        self._on_stop = on_stop
        # Submissions handle "queue full" themselves; every other retry stays the client's.
        self._retry = attrs.evolve(client.retry_policy, retry_rate_limited=False)
        self._stopped: DreamboothError | None = None
        self._absence = Absence(client.base_url)
        self._probe = KeyProbe()

    def _stop(self, error: DreamboothError) -> None:
        """No submission can be accepted any more (bad key, no credits, unreachable): send
        nothing more; the engine reads no more input and raises ``error`` at the end."""
        if self._stopped is None:
            self._stopped = error
            # Not a warning: the error ends the iteration, and that is where it is reported
            # (the command line's summary says it once).
            logger.info(
                "batch stops submitting: %s: %s; items not sent stay pending for a rerun",
                type(error).__name__,
                self._client.redact(str(error)),
            )
        self._on_stop(error)

    async def key_probed(self, key: int) -> None:
        """Until the service answered the submission probing key ``key``, if one is on the
        wire: a budget's look at the wallet before the next item then sees what it cost."""
        await self._probe.wait(key)

    async def submit(self, entry: Entry, slot: Slot) -> Job | BatchItem | None:
        """Submit until accepted; a BatchItem when the item ends here instead, None when the
        batch stopped submitting before this item was sent (it stays pending)."""
        attempt = 0
        turned_away = 0
        while True:
            await self._pacer.wait()
            if self._stopped is not None:
                slot.release()
                self._tally.counts["unsent"] += 1
                return None
            if slot.index in self._ring.retired and self._ring.live():
                await self._move(entry, slot)  # its key was retired meanwhile
                continue
            turn = self._probe.turn(slot.index)
            if isinstance(turn, anyio.Event):
                await turn.wait()  # the key's first answer decides whether this item goes
                continue
            if slot.window.over:
                # The window shrank (the account is full) after this item took its slot: it
                # waits for room as if turned away, rather than be turned away.
                least, most = room_wait(
                    None,
                    own_full=False,
                    turned_away=0,
                    times=self._client.poller,
                    cap=self._retry.max_retry_after,
                    window=slot.window,
                )
                await wait_for_room(self._slots, slot, least, most)
                continue
            attempt += 1
            if self._manifest is not None:
                self._manifest.submitting(entry.key, attempt)
            job, error, own_full = await self._submit_probing(entry, slot, probing=turn)
            if job is not None:
                return job
            assert error is not None
            if not is_absence(error):
                self._absence.answered()
            if isinstance(error, RateLimitError):
                turned_away += 1
                if self._manifest is not None:
                    self._manifest.not_landed(entry.key, _reason(error))
                if error.queue_full:
                    least, most = room_wait(
                        error.retry_after,
                        own_full=own_full,
                        turned_away=turned_away,
                        times=self._client.poller,
                        cap=self._retry.max_retry_after,
                        window=slot.window,
                    )
                    self._tally.emit("rate_limited", entry, eta=most, detail=str(error))
                    await wait_for_room(self._slots, slot, least, most)
                    entry.key_index = slot.index
                    continue
                delay = self._rate_limited(error, turned_away)
                if turned_away > self._options.max_rate_limited:
                    slot.release()
                    return self._endings.failed(entry, error)
                self._tally.emit("rate_limited", entry, eta=delay, detail=str(error))
                slot.release()
                await anyio.sleep(delay)
                entry.key_index = await self._slots.acquire(priority=True)
                slot.take(entry.key_index)
                continue
            if isinstance(error, _STOPS_SUBMITTING):
                # Every other submission with this key would be refused the same way. Nothing
                # was accepted. With another key live, the key is retired and the item goes
                # again, first in line; otherwise it stays pending for a rerun (after topping
                # up, or with a good key); jobs already accepted finish and are collected.
                if self._manifest is not None:
                    self._manifest.not_landed(entry.key, type(error).__name__)
                if self._ring.retire(slot.index, error):
                    await self._move(entry, slot)
                    continue
                slot.release()
                self._stop(error)
                self._slots.wake()  # items waiting for a slot go on to find the batch stopped
                return None
            if isinstance(error, AmbiguousSubmission | TransportError | ServerError) and (
                isinstance(error, AmbiguousSubmission) or error.may_have_landed
            ):
                recovered = await self._recover(entry, error, slot)
                if recovered is not None:
                    return recovered
                detail = str(error)
                if self._manifest is not None:
                    self._manifest.ambiguous(entry.key, error, detail=detail)
                if self._options.resubmit_ambiguous:
                    self._tally.emit("retried", entry, detail=f"resubmitting after: {detail}")
                    await anyio.sleep(blind(attempt))
                    continue
                slot.release()
                wrapped = (
                    error
                    if isinstance(error, AmbiguousSubmission)
                    else AmbiguousSubmission(entry.key, detail, error)
                )
                return self._endings.ambiguous(entry, wrapped)
            slot.release()
            if is_absence(error):
                # Never connected (the transport had retried), or no such path there: nothing
                # landed, so the item stays pending for a rerun whatever retry_failed says.
                if self._manifest is not None:
                    reason = "unreachable" if isinstance(error, TransportError) else "not_found"
                    self._manifest.not_landed(entry.key, reason)
                stop = self._absence.absent(error)
                if stop is not None:
                    # Nothing listening, DNS, a firewall, a base URL that is not the API's:
                    # stop rather than spend minutes failing every item the same way.
                    self._stop(stop)
                    return None
                return self._endings.failed(entry, error, recorded=True)
            return self._endings.failed(entry, error)

    async def _move(self, entry: Entry, slot: Slot) -> None:
        """Give back the slot of a retired key and wait, first in line, for one on a live
        key."""
        slot.release()
        self._slots.wake()  # the retired key's waiters move on too
        entry.key_index = await self._slots.acquire(priority=True)
        slot.take(entry.key_index)

    async def _submit_probing(
        self, entry: Entry, slot: Slot, *, probing: bool
    ) -> tuple[Job | None, DreamboothError | None, bool]:
        """``_submit_once``; when this submission probes its key (``probing``), its answer
        lets the key's other items go, or keeps them to one at a time."""
        key = slot.index
        job: Job | None = None
        error: DreamboothError | None = None
        own_full = False
        try:
            job, error, own_full = await self._submit_once(entry, slot)
        finally:
            if probing:
                # Set before the caller handles a refusal: that has no await, so the items
                # woken here find the key retired (or the batch stopped) when they run.
                refused = error is not None and (
                    is_absence(error) or isinstance(error, _STOPS_SUBMITTING)
                )
                self._probe.answered(key, proven=job is not None or not refused)
        return job, error, own_full

    async def _recover(self, entry: Entry, error: DreamboothError, slot: Slot) -> Job | None:
        """The job of a submission whose answer was lost, if the service's webhook call
        names it in time (only with a webhook receiver)."""
        wait = self._options.recover_ambiguous
        if wait <= 0 or error.webhook_token is None:
            return None
        self._tally.emit(
            "retried", entry, detail="answer lost: waiting for the webhook to name the job"
        )
        # The slot is given back meanwhile: most such submissions never landed, and a wait that
        # held it would starve the batch. If this one did land, the service may turn the next
        # submission away as "queue full", which the window handles.
        slot.release()
        sent_with = slot.index
        job = await self._client.recover(
            error, timeout=wait, key_index=sent_with if self._ring.several else None
        )
        if job is None:
            entry.key_index = await self._slots.acquire(priority=True)
        else:
            entry.key_index = sent_with
            self._slots.force(sent_with)  # the job holds one of the account's slots until it ends
        slot.take(entry.key_index)
        if job is None:
            return None
        slot.running()
        self._tally.counts["recovered"] += 1
        if self._manifest is not None:
            self._manifest.submitted(
                entry.key, job.id, fetch_url=None, eta=None, key_index=self._paid_with(slot)
            )
        self._tally.emit(
            "submitted", entry, job_id=job.id, detail="recovered from its webhook call"
        )
        return job

    def _paid_with(self, slot: Slot) -> int | None:
        # Recorded only with several keys: a single-key manifest reads as it always did.
        return slot.index if self._ring.several else None

    async def _submit_once(
        self, entry: Entry, slot: Slot
    ) -> tuple[Job | None, DreamboothError | None, bool]:
        """(the job, or the error; whether a "queue full" refusal was explained by the
        client's own jobs filling its window)."""
        # Shielded: once the POST may be on the wire, a cancelled batch still waits (for up to
        # cancel_grace) for the answer and records the job id, so a rerun can attach to it.
        scope = anyio.CancelScope(shield=True)
        # A measurement of the price per image may hold the submission a few milliseconds
        # (see .._spend); it is cancellable, the POST is not.
        bracket = await self._budget.before_post(slot.index)
        self._scopes.add(scope)
        self._tally.count("submissions", entry)
        own_full = False
        window = slot.window
        window.submitting += 1
        job: Job | None = None
        try:
            with scope:
                try:
                    # The submission goes out with the key whose slot the item holds; its retries
                    # are this item's.
                    job = await self._client.submit(
                        entry.request,
                        retry=self._retry,
                        wait_for_slot=False,  # the item holds its slot already
                        timeout=self._options.job_timeout,
                        key_index=slot.index,
                        on_retry=partial(self._tally.retried, entry),
                    )
                except DreamboothError as error:
                    if isinstance(error, RateLimitError):
                        if error.queue_full:
                            self._tally.count("rejected_queue_full", entry)
                            own_full = window.on_queue_full(error.queue_limit)
                        else:
                            self._tally.count("rejected_other", entry)
                    return None, error, own_full
                finally:
                    window.submitting -= 1
                    # Before the job is counted: the price is known before the next goes.
                    accepted = job is not None and not _from_cache(job)
                    await self._budget.after_post(bracket, entry, accepted=accepted)
                self._absence.answered()
                from_cache = _from_cache(job)
                self._budget.spend_settled(entry, accepted=not from_cache)
                if from_cache:
                    # Nothing was sent (a stored result) or paid by this run (another's job,
                    # followed): not a submission, and no image spent from the budget.
                    self._tally.count("submissions", entry, -1)
                    self._tally.count("cache_hits" if job.done() else "attached", entry)
                    self._budget.unreserve(entry)
                else:
                    self._tally.count("accepted", entry)
                    self._tally.count("images", entry, entry.request.samples)
                    window.on_accepted()
                    slot.running()
                if self._manifest is not None:
                    self._manifest.submitted(
                        entry.key,
                        job.id,
                        fetch_url=job.fetch_url,
                        eta=job.eta,
                        key_index=self._paid_with(slot),
                    )
        finally:
            self._scopes.discard(scope)
        if job is None:
            # The grace period ran out with the POST unanswered.
            return (
                None,
                AmbiguousSubmission(
                    entry.key, "the batch was cancelled while the submission was unanswered"
                ),
                False,
            )
        self._tally.emit("submitted", entry, job_id=job.id)
        if not job.done():
            self._tally.emit("queued", entry, job_id=job.id, eta=job.eta)
        return job, None, False

    def _rate_limited(self, error: RateLimitError, turned_away: int) -> float:
        """Seconds to wait before sending an item turned away by a rate limit that is not
        "queue full" (those wait for room: :func:`.._slots.room_wait`).

        The service's ``retry_after`` when it gave one. Otherwise the time scale is the
        client's own jobs: until the next of them should end (a queue slot frees when one of
        *our* jobs finishes), or a share of the durations measured; a blind back-off only when
        nothing is known yet (the arithmetic is :func:`.._backoff.room_expected`).
        """
        cap = self._retry.max_retry_after
        if error.retry_after is not None:
            delay = retry_after(error.retry_after, cap=cap, jitter=_RETRY_AFTER_JITTER)
        else:
            poller = self._client.poller
            typical = poller.durations.typical()
            next_finish = poller.next_finish()
            until_next = None if next_finish is None else next_finish - time.monotonic()
            room = room_expected(
                turned_away, until_next=until_next, typical=typical, floor=_MIN_WAIT
            )
            delay = min(cap, room)
        if not error.queue_full and not _is_spam(error):
            # A rate limit on requests, not slots: hold back every submission, not just this.
            self._pacer.pause(delay)
        return delay


def _from_cache(job: Job) -> bool:
    """True when the client's result cache answered: a stored result, or a job another
    process paid for (attached by id, so it has no request of ours)."""
    if job.request is None:
        return True
    if job.status != "success":
        return False
    return isinstance(job.result(), CachedResult)


def _is_spam(error: RateLimitError) -> bool:
    text = f"{error.message} {error.tip or ''}".lower()
    return "same request" in text or error.message.strip().lower() == "rate limit exceeded"


def _reason(error: RateLimitError) -> str:
    if error.queue_full:
        return "queue_full"
    return "spam_filter" if _is_spam(error) else "rate_limited"
