"""Watching a key's account while it is shared with other processes.

A window learns the account's limit from "queue full" answers (their message states it) and
shrinks to what this process can get when others hold slots; but nothing in a submission's
answer says when they leave, and probing by submission costs a refusal each time the account
is still full. The service's ``request_count`` answer does say it, free of refusals: how many
of the account's jobs hold a slot now. So, once the key has been found full (a process alone on
its key never pays for a call), a watcher per key reads it while callers wait for a slot and
the process's own jobs do not fill the account (room seen then could serve nobody):

- read right after a "queue full" answer whose message did not state the limit, the count is
  the account's limit (at least as many jobs were holding slots a moment before);
- read later, the limit minus the count is room nobody holds. Seen on two reads in a row (not
  just jobs that ended a moment ago, whose owners will fill them again), it is taken: the
  items the service turned away go first, and the window becomes what the process has on the
  service plus that room, up to the limit. Another process that saw the same room reads again
  before it takes it, and by then the room is gone.

A process does not give slots up to others: for the account's makespan it does not matter
which process runs a job, and a slot given up waits empty until another process's read sees
it (one that has nothing left to send does not read at all). Measured, giving slots up to a
process that held fewer lengthened the makespan of unequal shards.

Reads come every ``interval`` (two seconds by default), or half a job's length for longer
jobs; the service allows 30 a minute per key, for every process on it. The second look at room
just seen comes after a share of a job (at least a share of the interval): room left by a
process whose work is done is taken within about a read's spacing. (Reads stretched while
the account stays full would keep the allowance for later, but measured, the room a finished
shard leaves then waits longer than the reads saved are worth.) A throttled read waits as long
as the service asks (up to a minute, when other processes used the allowance up); a failed
read doubles the spacing, up to 30 intervals. Meanwhile a window whose callers wait probes for
room by submission, once per job length (slow start: it grows one slot per accepted round
trip until a refusal): blind, it would otherwise stay as small as the account's fullest
moment left it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable

import anyio

from ._errors import RateLimitError
from ._slots import JobTimes, SlotWindow

__all__ = ["AccountWatch"]

logger = logging.getLogger("dreambooth_async")

#: A second look at room seen once comes after this share of a job (or of the read interval):
#: the owner of a job that just ended sees it a moment later (its poller's lag) and fills it.
_CONFIRM_SHARE = 0.1
#: A failed read doubles the interval up to this many read intervals (a minute by default).
_MAX_INTERVALS = 30
#: How often, in read intervals, the watcher looks (no call) whether anyone waits for a slot.
_LOOK_SHARE = 0.125


class AccountWatch:
    """One key's watcher: ``read()`` returns the account's count of jobs holding a slot."""

    def __init__(
        self,
        window: SlotWindow,
        read: Callable[[], Awaitable[int]],
        times: JobTimes,
        *,
        interval: float = 2.0,
    ) -> None:
        self._window = window
        self._read = read
        self._times = times
        #: The least time between two reads (the service allows 30 a minute per key).
        self._interval = interval
        #: When the window last probed for room by submission (reads refused).
        self._probed_at = -float("inf")
        self.reads = 0
        self._full = anyio.Event()
        self._refused = False
        self._seen_free = 0
        window.on_full = self._on_full
        # Reads start at the key's first refusal: from then on, items turned away while
        # others hold slots wait for room seen here (until a read fails).
        window.watched = True

    def __repr__(self) -> str:
        return f"<AccountWatch limit={self.account_limit} reads={self.reads}>"

    @property
    def account_limit(self) -> int | None:
        """The account's limit as stated or measured (None until the key was found full)."""
        return self._window.account_limit

    def _on_full(self) -> None:
        self._refused = True
        self._full.set()

    async def run(self) -> None:
        """Watch until cancelled (the client's task group owns it)."""
        await self._full.wait()
        failures = 0
        pause = 0.0  # what a throttled or failed read asks to wait before the next
        longest = _MAX_INTERVALS * self._interval
        # A refusal that stated the limit needs no read to measure it: the first read comes a
        # spacing later, when the jobs that filled the account may have moved (the key's
        # allowance is shared, and three processes reading at once spent it too early).
        last = -longest if self._window.account_limit is None else anyio.current_time()
        while True:
            # A measured duration bounded to the longest wait here (a hostile answer may say
            # anything about a job's time).
            typical = min(longest, self._times.durations.typical() or self._interval)
            # A second look at room just seen comes soon: the room is only worth taking
            # while it lasts.
            spacing = (
                _CONFIRM_SHARE * max(self._interval, typical)
                if self._seen_free > 0
                else max(self._interval, 0.5 * typical)
            )
            # Wide jitter on a second look: two processes that saw the same room at once do
            # not both take it.
            spread = (0.5, 1.5) if self._seen_free > 0 else (0.9, 1.1)
            due = last + max(spacing, pause) * random.uniform(*spread)
            if pause > 0:
                # A throttled or failed read: the service's pause holds (up to a minute, when
                # other processes on the key spent its allowance), and meanwhile room is
                # probed for by submission.
                await self._probe_blind(due - anyio.current_time(), typical)
            else:
                with anyio.move_on_after(due - anyio.current_time()):
                    # A refusal whose message did not state the limit is read at once: the
                    # count then measures the limit.
                    while not self._to_measure():
                        await self._wait_refusal()
            measure = self._to_measure()
            self._refused = False
            if not (measure or self._window.wants_room):
                self._seen_free = 0  # room seen before nobody waited is old news
                await self._waiters()
                continue
            last = anyio.current_time()
            try:
                count = await self._read()
            except Exception as error:  # a throttled or failed read: only a signal lost
                failures += 1
                self._unwatched()
                # A throttled read says how long until the next is allowed; else back off.
                asked = error.retry_after if isinstance(error, RateLimitError) else None
                pause = min(longest, asked or self._interval * 2 ** min(failures, 16))
                logger.debug("request_count failed (%s); next read in %.1f s", error, pause)
            else:
                failures, pause = 0, 0.0
                self.reads += 1
                self._window.watched = True
                self._saw(count, measure=measure)

    async def _probe_blind(self, seconds: float, typical: float) -> None:
        """While reads are refused, a window whose callers wait probes for room by
        submission, once per job length: it grows again one slot per accepted round trip
        until a refusal ends it (slow start). Without it, a process whose reads the others
        used up would not see room for up to a minute. A throttle that asks for a short wait
        again and again (the key's reads age out one by one) still probes once per job
        length."""
        step = max(self._interval, typical)
        until = anyio.current_time() + seconds
        while True:
            now = anyio.current_time()
            if self._window.wants_room and now - self._probed_at >= step:
                self._probed_at = now
                self._window.probe()
            if until <= now:
                return
            await anyio.sleep(min(step, until - now))

    def _unwatched(self) -> None:
        """Reads fail: items turned away from now on ask the service on their own back-off.
        Those already waiting for room seen here stay parked: the probe that follows wakes
        one, and each of the process's own jobs that ends wakes one (woken all at once, each
        went into the account the last read saw full: a refusal each)."""
        self._window.watched = False

    def _to_measure(self) -> bool:
        return self._refused and self._window.account_limit is None

    async def _wait_refusal(self) -> None:
        self._full = anyio.Event()
        await self._full.wait()

    async def _waiters(self) -> None:
        """Until callers wait for room that others on the key could leave (see
        :attr:`SlotWindow.wants_room`: one of the window's own jobs ending may make it so),
        or the service refuses a submission: a flag is looked at (no call made) a few times
        a second."""
        while not (self._window.wants_room or self._refused):
            with anyio.move_on_after(_LOOK_SHARE * self._interval):
                await self._wait_refusal()

    def _saw(self, count: int, *, measure: bool) -> None:
        window = self._window
        if measure:
            window.learn_limit(count, stated=False)
            self._seen_free = 0
            return
        if window.account_limit is None:
            return
        window.learn_limit(count, stated=False)  # more jobs than a measured limit: it is more
        limit = window.account_limit
        free = limit - count
        # Room seen once may be jobs that ended a moment ago, whose owners (this process
        # too) have not seen it yet and will fill it again: only room seen on two reads in a
        # row is taken to be left by someone.
        confirmed = min(free, self._seen_free)
        self._seen_free = max(0, free)
        if confirmed > 0 and window.wants_room:
            # Items turned away go first (they hold their slots past the window, which grows
            # to take them in), then as many waiting callers as there is room left.
            window.room_seen(confirmed)
            window.grow(confirmed)
            self._seen_free = 0
