"""A single submission's turn in the client's slot window.

``submit``/``generate`` calls that run at once (a web app serving a burst of requests) would
otherwise race each other for the account's queue slots: each is sent at once, most are
turned away as "queue full", and each retries on its own clock. Here a call first waits for a
slot of the window its batch siblings use too (first come, first served, within the call's own
timeout), holds it while its job is on the service, and gives it back when the job ends. A
"queue full" answer provably did not land, so the call waits for room (see
:mod:`dreambooth_async._slots`) and is sent again; an accepted job is never sent again.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

from ._errors import AuthenticationError, InsufficientCredits, RateLimitError
from ._job import Job
from ._models import GenerationResult
from ._slots import JobTimes, Slot, SlotPool, room_wait, wait_for_room

__all__ = ["in_turn", "try_turn", "turn_taken"]

#: Sends the submission with key ``index``, the job bounded by ``timeout`` seconds (None:
#: the poll policy's bound); raises what the service answered.
SendWith = Callable[[int, float | None], Awaitable[GenerationResult | Job]]


def try_turn(pool: SlotPool, key_index: int | None) -> int | None:
    """The common case of a turn: a slot free at once (on key ``key_index``'s window, or the
    pool's choice), its index; None when the caller must wait its turn in :func:`in_turn`.
    The submission the caller now sends counts as on the wire until :func:`turn_taken` (or
    :func:`in_turn`, given the error) hears of its answer."""
    index = pool.try_acquire(key_index)
    if index is not None:
        pool.windows[index].submitting += 1
    return index


def turn_taken(
    pool: SlotPool, index: int, answer: GenerationResult | Job
) -> GenerationResult | Job:
    """The service accepted the submission sent on key ``index``'s slot: the job holds the slot
    until it ends; a final answer gives it back now. Returns ``answer``."""
    window = pool.windows[index]
    window.submitting -= 1
    if isinstance(answer, Job) and not answer.done():
        window.on_accepted(final=False)
        # The job holds its slot on the service until it ends.
        slot = Slot(pool, index)
        slot.running()
        answer.add_done_callback(slot.release)
    else:
        window.on_accepted(final=True)
        window.release()
    return answer


async def in_turn(
    pool: SlotPool,
    send: SendWith,
    *,
    key_index: int | None,
    timeout: float | None,
    times: JobTimes,
    cap: float,
    on_wait: Callable[[int, Exception, float], None],
    resend_when_full: bool = True,
    started: float | None = None,
    held: int | None = None,
    refused: BaseException | None = None,
) -> GenerationResult | Job:
    """Send one submission in its turn: wait for a slot (on key ``key_index``'s window, or the
    pool's choice), send, and on "queue full" wait for room and send again.

    ``timeout`` bounds the whole call, from ``started`` (the loop's clock; default now): the
    wait for a slot counts against it, and the job gets what is left. When it passes before a
    slot came free, :class:`RateLimitError` (queue full) says so; nothing was sent. Other rate
    limits (the spam filter) are the retry policy's. ``on_wait(attempt, error, delay)`` hears
    of each wait for room, as of a retry. ``resend_when_full=False`` (a retry policy that
    allows no retries) raises the first "queue full" answer instead: the caller asked for no
    second sending.

    ``held`` and ``refused``: the caller took key ``held``'s slot with :func:`try_turn` and
    its sending raised ``refused``; the turn goes on from there (the slot is this call's).
    """
    # The loop's clock (asyncio's is time.monotonic), read directly: anyio.current_time()
    # looks up the backend on each call, and this runs on every submission.
    began = time.monotonic() if started is None else started

    def left() -> float | None:
        return None if timeout is None else timeout - (time.monotonic() - began)

    slot = Slot(pool, await _acquire(pool, key_index, left()) if held is None else held)
    turned_away = 0
    try:
        while True:
            window = slot.window
            if refused is None:
                window.submitting += 1
                try:
                    answer = await send(slot.index, left())
                except BaseException as caught:
                    refused = caught
                else:
                    return turn_taken(pool, slot.index, answer)
            error, refused = refused, None
            if isinstance(error, RateLimitError) and error.queue_full:
                # Told while the refused submission still counts as on the wire (not a job).
                own_full = window.on_queue_full(error.queue_limit)
                window.submitting -= 1
                turned_away += 1
                least, most = room_wait(
                    error.retry_after,
                    own_full=own_full,
                    turned_away=turned_away,
                    times=times,
                    cap=cap,
                    window=window,
                )
                remaining = left()
                if not resend_when_full:
                    raise error
                if remaining is not None and remaining <= least:
                    raise error  # the call's own timeout does not allow another try
                on_wait(turned_away, error, most)
                with anyio.move_on_after(remaining) as scope:
                    await wait_for_room(pool, slot, least, most)
                if scope.cancelled_caught:
                    raise error
                continue
            window.submitting -= 1
            if isinstance(error, AuthenticationError | InsufficientCredits):
                # The key was retired by the send (with several keys): another may take it.
                if key_index is not None or not pool.any_live(slot.index):
                    raise error
                slot.release()
                pool.wake()
                slot.take(await _acquire(pool, None, left()))
                continue
            raise error  # other rate limits included: the retry policy had its turns at it
    except BaseException:
        slot.release()
        raise


async def _acquire(pool: SlotPool, key_index: int | None, timeout: float | None) -> int:
    """A slot on key ``key_index``'s window (any key's when None), waiting at most ``timeout``
    seconds."""
    index = pool.try_acquire(key_index)
    if index is not None:
        return index
    with anyio.move_on_after(timeout if timeout is not None else float("inf")):
        if key_index is None:
            return await pool.acquire()
        await pool.windows[key_index].acquire()
        return key_index
    raise RateLimitError(
        f"no queue slot of this client came free within the call's timeout ({timeout:.0f} s); "
        "nothing was sent",
        queue_full=True,
    )
