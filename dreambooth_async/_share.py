"""Watching a key's account while it is shared with other processes.

A window learns the account's limit from "queue full" answers and shrinks to what this process
can get when others hold slots; but nothing in a submission's answer says when they leave, and
probing by submission costs a refusal each time the account is still full. The service's
``request_count`` answer does say it, free of refusals: how many of the account's jobs hold a
slot now. So, once the key has been found full (a process alone on its key never pays for a
call), a watcher per key reads it now and then while callers wait for a slot:

- read right after a "queue full" answer, the count is the account's limit (at least as many
  jobs were holding slots a moment before);
- read later, the limit minus the count is room nobody holds. Seen on two reads in a row (not
  just jobs that ended a moment ago, which their owners will fill again), the window grows by
  half of it (other processes on the key may see the same room) up to the measured limit,
  never past it;
- read while the account is full, a process that holds more than every other together gives
  up one slot of its window (the others take it as their turned-away submissions come back):
  several processes converge on a fair share.

Reads are at most one per job length and never more often than every two seconds (the service
allows 30 a minute per key, for every process on it), but for the second look at room just
seen, which comes after a share of a job (at least 0.3 s); a refused or failed read doubles the
interval up to a minute.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable

import anyio

from ._slots import JobTimes, SlotWindow

__all__ = ["AccountWatch"]

logger = logging.getLogger("dreambooth_async")

#: The least interval between two reads: 30 a minute is the service's allowance per key.
_MIN_INTERVAL = 2.0
_MAX_INTERVAL = 60.0
#: The least wait before the second look at room seen once.
_CONFIRM_AFTER = 0.3


class AccountWatch:
    """One key's watcher: ``read()`` returns the account's count of jobs holding a slot."""

    def __init__(
        self, window: SlotWindow, read: Callable[[], Awaitable[int]], times: JobTimes
    ) -> None:
        self._window = window
        self._read = read
        self._times = times
        #: The account's limit as measured (None until the key was first found full).
        self.account_limit: int | None = None
        self.reads = 0
        self._full = anyio.Event()
        self._refused = False
        self._seen_free = 0
        window.on_full = self._on_full

    def __repr__(self) -> str:
        return f"<AccountWatch limit={self.account_limit} reads={self.reads}>"

    def _on_full(self) -> None:
        self._refused = True
        self._full.set()

    async def run(self) -> None:
        """Watch until cancelled (the client's task group owns it)."""
        await self._full.wait()
        failures = 0
        last = -_MAX_INTERVAL
        while True:
            # A second look at room just seen comes soon: a job's end is seen by its owner a
            # moment after (the poller's lag, a share of the job), and the room is only worth
            # taking while it lasts.
            confirming = self._seen_free > 1 and failures == 0
            # A measured duration bounded to the longest wait here (a hostile answer may say
            # anything about a job's time).
            typical = min(_MAX_INTERVAL, self._times.durations.typical() or _MIN_INTERVAL)
            spacing = (
                max(_CONFIRM_AFTER, 0.15 * typical)
                if confirming
                else min(_MAX_INTERVAL, _MIN_INTERVAL * 2 ** min(failures, 16))
            )
            early = last + spacing - anyio.current_time()
            if early > 0:
                await anyio.sleep(early)
            refused, self._refused = self._refused, False
            if refused or self._window.waiting:
                last = anyio.current_time()
                try:
                    count = await self._read()
                    self._saw(count, refused=refused)
                except Exception as error:  # a throttled or failed read: only a signal lost
                    failures += 1
                    logger.debug("request_count failed (%s); reading less often", error)
                else:
                    failures = 0
                    self.reads += 1
            confirming = self._seen_free > 1 and failures == 0
            length = 0.0 if confirming else max(_MIN_INTERVAL, typical)
            interval = min(_MAX_INTERVAL, length * 2 ** min(failures, 16))
            with anyio.move_on_after(interval * random.uniform(0.9, 1.1)):
                # A new refusal is read as soon as the spacing allows: it measures the limit.
                while not self._refused:
                    await self._wait_refusal()

    async def _wait_refusal(self) -> None:
        self._full = anyio.Event()
        await self._full.wait()

    def _saw(self, count: int, *, refused: bool) -> None:
        if refused:
            self.account_limit = max(self.account_limit or 0, count)
            self._seen_free = 0
            return
        limit = self.account_limit
        if limit is None:
            return
        self.account_limit = limit = max(limit, count)
        free = limit - count
        ours = self._window.jobs
        others = max(0, count - ours)
        # Room seen once may be jobs that ended a moment ago, whose owners (this process
        # too) have not seen it yet and will fill it again: only room seen on two reads in a
        # row is taken to be left by someone.
        confirmed = min(free, self._seen_free)
        self._seen_free = free
        if free > 0:
            # Items turned away go now: a refusal is all a wrong guess costs.
            self._window.room_seen(free)
        if confirmed > 1 and self._window.waiting:
            # Alone now: all of it; else half (the others may be looking at the same room).
            self._window.grow(confirmed if others == 0 else confirmed // 2, ceiling=limit)
            self._seen_free = 0
        elif free <= 0 and others > 0 and ours > others + 1:
            # A full account where this process holds more than everyone else together: give
            # a slot up, so that processes on one key converge on a fair share.
            self._window.shrink(1)
