"""The queue slots a client may hold: one window per API key, shared by every caller of the
client (single ``submit``/``generate`` calls and every batch), and an item's hold on a slot.

The service limits how many jobs an account may have *queued or running* (5, 10 or 15, and the
client is not told which). A job holds its slot from submission until it finishes, so the
client counts slots, not open HTTP requests: a slot is taken before the POST and given back
when the job's result (or error) is in. Callers wait their turn in the window, first come first
served, instead of each racing the service for room.

Adaptive concurrency (``concurrency=None``): start at ``initial_concurrency``, grow by one for
every acceptance that filled the window with nothing else on the wire (slow start: one slot
per round trip) until the first "queue full" answer. That
answer bounds the limit from above by the number of jobs the client has on the service at that
moment (the service counted at least as many), so the window drops straight to it instead of
halving: with other processes on the key, it shrinks to what this process can get. Its message
states the account's limit ("Maximum 5 queued requests"): from then on the window never grows
past it, and room left by others is seen by the account's watcher (``_share``), for free,
instead of probed for by submission. Without a stated limit, it probes one slot higher after a
run of acceptances at a full window (six turns of it), and the run it waits for doubles after
every probe the service refuses: the limit is found in a rejection or two and held with very
few.

A rejected submission provably did not land (the transport's rule), so it is sent again, ahead
of fresh items. ``retry_after`` is the least wait, never a promise of room (RFC 9110 §10.2.3):

- when the client's own jobs fill its window (the refusal is explained by them), the item waits
  for one of them to end, and at least ``retry_after``: whichever is *later*;
- when the service is full while the client holds fewer jobs than its window (someone else
  holds slots), the item backs off from ``retry_after``, doubling up to about a job's length,
  or goes as soon as one of the client's own jobs ends (that slot was ours); while the
  account's watcher reads its count, the item waits for room seen there instead (each try by
  submission on a full account is a refusal), and so does an item that holds a slot of a
  window that shrank before it was sent.

The numbers are :func:`dreambooth_async._backoff.queue_full_wait`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import anyio

from ._backoff import queue_full_wait
from ._keys import KeyRing

__all__ = ["JobTimes", "Slot", "SlotPool", "SlotWindow", "room_wait", "wait_for_room"]

#: The least wait before a turned-away submission is sent again (politeness).
MIN_WAIT = 0.05


class Durations(Protocol):
    """What the client measured of its jobs' durations."""

    def typical(self) -> float | None: ...


class JobTimes(Protocol):
    """What the client knows of its own jobs' timing (the poller)."""

    @property
    def durations(self) -> Durations: ...

    def next_finish(self) -> float | None: ...


class SlotWindow:
    """How many queue slots the client may hold on one key, and who is waiting for one.

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
        #: Slots held by jobs the service accepted and that have not ended (see
        #: :meth:`Slot.running`): an item that holds a slot but waits to be sent is not one.
        self.running = 0
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
        #: "Queue full" answers since the last acceptance: the back-off grows with them,
        #: whichever item they turned away.
        self.refusals = 0
        #: Told of every "queue full" answer (the account's watcher: see ``_share``).
        self.on_full: Callable[[], None] | None = None
        #: The account's queue limit, once known: stated by a "queue full" answer, or
        #: measured by the account's watcher. The window never grows past it, and does not
        #: probe for room by submission once it is known (the watcher sees room for free).
        self.account_limit: int | None = None
        self._stated = False
        #: The account's count of jobs is being read (see ``_share``): an item turned away
        #: while others hold slots waits for room seen there rather than asking again.
        self.watched = False
        #: The service said the account is full while none of the window's jobs held a slot
        #: (and none was accepted since): the window has no slot of its own on the account.
        self._shut_out = False

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

    @property
    def has_waiters(self) -> bool:
        """Someone waits for a slot of this window."""
        return bool(self._priority or self._normal)

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

    async def park(self, timeout: float, *, least: float = 0.0) -> None:
        """Wait, keeping the slot, until another slot is given back (one of the client's jobs
        ended) or ``timeout`` passes, and in any case ``least`` seconds (the service's
        ``retry_after``: the least wait it asked for). Each item parked ahead adds one
        ``timeout``, so that a service's ``retry_after`` does not send them all back into the
        same free slot; each given-back slot wakes one parked item, first in first out."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ahead = sum(not waiting.done() for waiting in self._parked)
        self._parked.append(future)
        self.parked += 1
        started = anyio.current_time()
        try:
            with anyio.move_on_after(max(least, timeout * (ahead + 1))):
                await future
            rest = least - (anyio.current_time() - started)
            if rest > 0:
                await anyio.sleep(rest)
        finally:
            self.parked -= 1
            if not future.done():
                future.cancel()
                with contextlib.suppress(ValueError):
                    self._parked.remove(future)

    @property
    def waiting(self) -> bool:
        """True when callers wait for a slot of this window, or turned-away items for room."""
        return self.parked > 0 or any(
            not future.done() for queue in (self._priority, self._normal) for future in queue
        )

    @property
    def wants_room(self) -> bool:
        """Callers wait for a slot (or turned-away items for room) while the window's own jobs
        do not fill the account: room left by others on the key would serve them. (Once its
        own jobs fill the account, the next slot is the one its next job to end gives back.)"""
        if not self.waiting:
            return False
        return self.account_limit is None or self.running + self.submitting < self.account_limit

    def learn_limit(self, limit: int, *, stated: bool) -> None:
        """The account's limit: ``stated`` by the service (trusted as it is), or measured (a
        count of jobs seen on a full account: the limit is at least that)."""
        if stated:
            self.account_limit, self._stated = limit, True
        elif not self._stated:
            self.account_limit = max(self.account_limit or 0, limit)

    def grow(self, slots: int) -> None:
        """Room was seen on the account (others on the key left): the window becomes what
        this client has on the service (jobs and submissions on the wire) and ``slots`` more,
        at most the account's limit."""
        self.refusals = 0  # the account is not full to us now
        self._shut_out = False
        if self.adaptive:
            self.slow_start = False
            self._set_limit(self.running + self.submitting + slots)

    def probe(self) -> None:
        """Room to be found out by submission (the account's count cannot be read now): one
        slot more, and one more per acceptance after it (slow start) until a "queue full"
        answer takes the window back to the jobs it holds."""
        self._shut_out = False
        if self.adaptive:
            self.slow_start = True
            self._set_limit(self.limit + 1)
            self.room_seen(1)  # an item turned away goes too: it may be all that waits

    def room_seen(self, slots: int) -> None:
        """The account was seen with ``slots`` free: up to as many items turned away go again
        now rather than at the end of their back-off."""
        for parked in list(self._parked):
            if slots <= 0:
                break
            if not parked.done():
                parked.set_result(None)
                slots -= 1

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
        ceiling = (
            self.maximum if self.account_limit is None else min(self.maximum, self.account_limit)
        )
        self.limit = max(1, min(ceiling, limit))
        self.peak = max(self.peak, self.limit)
        self._wake()

    def on_accepted(self, *, final: bool = False) -> None:
        """A submission was accepted (its slot is still counted in ``held``). ``final``: the
        answer was the result itself, so the job never sat in the account's queue."""
        self.refusals = 0
        self._shut_out = False
        if not self.adaptive or self.held < self.limit:
            return  # only an acceptance at a full window says anything about a bigger one
        if self._probe_level is not None and self.held >= self._probe_level:
            self._refused_probes = 0  # the probed slot was granted: the limit is higher
            self._probe_level = None
        if self.slow_start:
            # One slot more per acceptance with nothing else on the wire: the window grows by
            # one per round trip, so that when the account fills at most one submission more
            # than it holds is on its way (growing per acceptance would double the window per
            # round trip and send as many as the account holds past it).
            # A final answer held no queue slot: growing on it cannot overshoot the account,
            # and without it a client of fast jobs would keep every call waiting in a window of
            # its first size (its submissions are always on the wire together).
            if (self.submitting == 0 or final) and self.limit < self.maximum:
                self._set_limit(self.limit + 1)
            return
        if self.account_limit is not None:
            return  # the limit is known: room left by others is the watcher's to see
        self._streak += 1
        # Probe after a run of full-window acceptances, six turns of the window (a probe the
        # service refuses costs a rejected submission); the run doubles per refused probe.
        if self._streak >= max(4, 6 * self.limit) * 2 ** min(self._refused_probes, 4):
            self._streak = 0
            self._probe_level = self.limit + 1
            self._set_limit(self.limit + 1)

    @property
    def over(self) -> bool:
        """More slots are held by items not turned away than the window has: it shrank after
        they took theirs (the service said the account is full), so the next to be sent
        waits for room instead. A window is at least one slot, but one whose account was
        found full while it held no job (and whose watcher looks for room) has none: one
        that held jobs keeps the slot each of them gives back (the room was its own)."""
        allowed = 0 if self._shut_out and self.watched else self.limit
        return self.held - self.parked > allowed

    def on_queue_full(self, stated_limit: int | None = None) -> bool:
        """The service said the queue is full (the rejected submission still holds its slot,
        and is still counted in ``submitting``). True when the client's own jobs fill its
        window (the refusal is explained by them), False when it held fewer jobs than its
        window: someone else holds slots of the account. ``stated_limit``: the account's
        limit, where the answer's message states it.

        The service was counting at least the client's accepted jobs, so the limit is at most
        that many: drop the window there. Submissions on the wire and items already turned
        away are not jobs the service counts.
        """
        self.refusals += 1
        if not self.running:
            self._shut_out = True
        if stated_limit is not None:
            self.learn_limit(stated_limit, stated=True)
        if self.on_full is not None:
            self.on_full()
        others = self.running
        if self.account_limit is not None:
            # At most this many of ours may hold slots now (submissions of ours on the wire
            # beside the refused one may have landed): fewer than the account's limit, and
            # someone else holds the rest.
            own_full = others + self.submitting - 1 >= self.account_limit
        else:
            # While the window still grows (slow start) nothing says anyone else is there.
            own_full = self.slow_start or others + 1 >= self.limit
        if not self.adaptive:
            return own_full
        if self._probe_level is not None:
            self._refused_probes += 1
            self._probe_level = None
        self.slow_start = False
        self._streak = 0
        self._set_limit(min(self.limit, others))
        return own_full


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

    def any_live(self, but: int | None = None) -> bool:
        """True when a key (other than ``but``) is not retired."""
        return any(index != but for index in self._keys.live())

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

    def try_acquire(self, key_index: int | None = None, *, priority: bool = False) -> int | None:
        """A slot at once, on key ``key_index``'s window (any key's when None), if one is free
        and nobody waits ahead (``priority``: it may pass the pool's waiters that are not);
        None otherwise. The common case costs no wait and no timer."""
        if self._priority or (self._normal and not priority):
            return None
        if key_index is not None or len(self.windows) == 1:
            index = 0 if key_index is None else key_index
            window = self.windows[index]
            if window.held >= window.limit or window.has_waiters:
                return None
            window.held += 1
            return self._took(index)
        free = self._free()
        if free is None:
            return None
        self.windows[free].held += 1
        return self._took(free)

    async def acquire(self, *, priority: bool = False) -> int:
        """Wait for a slot on some key; returns the key's index."""
        index = self.try_acquire(priority=priority)
        if index is not None:
            return index
        if self.single:
            await self.windows[0].acquire(priority=priority)
            return self._took(0)
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


class Slot:
    """One item's hold on a slot of key ``index``'s window; release is idempotent."""

    __slots__ = ("_held", "_pool", "_running", "index")

    def __init__(self, pool: SlotPool, index: int) -> None:
        self._pool = pool
        self.index = index
        self._held = True
        self._running = False

    @property
    def window(self) -> SlotWindow:
        return self._pool.windows[self.index]

    def running(self) -> None:
        """The slot is held by a job on the service now (accepted, attached, recovered)."""
        if self._held and not self._running:
            self._running = True
            self.window.running += 1

    def release(self) -> None:
        if self._held:
            self._held = False
            window = self.window
            if self._running:
                self._running = False
                window.running -= 1
            window.release()

    def take(self, index: int) -> None:
        # Called right after pool.acquire() returned ``index``: the slot is already counted.
        self.index = index
        self._held = True
        self._running = False


def room_wait(
    hint: float | None,
    *,
    own_full: bool,
    turned_away: int,
    times: JobTimes,
    cap: float,
    window: SlotWindow | None = None,
) -> tuple[float, float]:
    """``(least, most)`` seconds before a submission turned away as "queue full" goes again
    (see :func:`dreambooth_async._backoff.queue_full_wait`), from the client's own jobs.
    ``turned_away`` counts this item's refusals; the window's run of refusals since its last
    acceptance counts too, whichever is longer."""
    next_finish = times.next_finish()
    streak = max(turned_away, window.refusals if window is not None else 0)
    return queue_full_wait(
        hint,
        own_full=own_full,
        turned_away=streak,
        until_next=None if next_finish is None else next_finish - time.monotonic(),
        typical=times.durations.typical(),
        floor=MIN_WAIT,
        cap=cap,
        watched=window is not None and window.watched,
    )


async def wait_for_room(pool: SlotPool, slot: Slot, least: float, most: float) -> None:
    """Wait until a submission turned away as "queue full" may go again.

    The item keeps its slot (the window already dropped to the client's jobs, so it goes
    next, ahead of fresh items: were it given back, a fresh item would take it and be turned
    away in its turn) and is woken when one of those jobs ends, not before ``least``, at the
    latest after ``most``.
    """
    await slot.window.park(most, least=least)
