"""Every wait the library computes before trying something again, in one place.

The callers own the decisions (whether to retry, what the attempt number is, which limits
apply); this module owns the numbers: pure functions of their arguments, the only randomness
the module-level :mod:`random` generator (tests seed it), one draw per call at most.

- :func:`exponential`: ``min(cap, base * factor**attempt)``, jittered. The transport's retries
  ("full jitter", :class:`~dreambooth_async.RetryPolicy`), the batch's blind back-off
  (:func:`blind`), the cache's wait on another process's claim.
- :func:`retry_after`: the service's ``Retry-After``, capped, with a little jitter.
- :func:`share_of_age`, :func:`spread_over`, :func:`in_window`, :func:`probe_wait`: the
  poller's waits, all relative to the job itself.
- :func:`room_expected`, :func:`queue_full_wait`: the wait for a free queue slot after
  "queue full" (single calls and batches alike).
- :func:`not_there_yet`, :func:`before_deadline`: the download's wait for an output the CDN
  does not show yet.
"""

from __future__ import annotations

import random

__all__ = [
    "FULL_JITTER",
    "Jitter",
    "before_deadline",
    "blind",
    "exponential",
    "in_window",
    "jittered",
    "not_there_yet",
    "probe_wait",
    "queue_full_wait",
    "retry_after",
    "room_expected",
    "share_of_age",
    "spread_over",
]

#: A jitter is the range ``(low, high)`` a delay is multiplied by, drawn uniformly; None: none.
Jitter = tuple[float, float] | None

#: Uniform in ``[0, delay]``: waiters that failed together come back spread over the whole span.
FULL_JITTER: Jitter = (0.0, 1.0)

#: The largest exponent any doubling here uses (every wait is capped long before).
_MAX_EXPONENT = 64

#: The batch's blind back-off: from a quarter second, doubling, up to ten, half to all of it.
_BLIND_BASE = 0.25
_BLIND_CAP = 10.0
_BLIND_JITTER: Jitter = (0.5, 1.0)


def jittered(seconds: float, jitter: Jitter) -> float:
    """``seconds`` times a factor drawn uniformly from ``jitter`` (unchanged when None)."""
    if jitter is None:
        return seconds
    return seconds * random.uniform(*jitter)


def exponential(
    attempt: int,
    *,
    base: float,
    cap: float,
    factor: float = 2.0,
    jitter: Jitter = FULL_JITTER,
) -> float:
    """The wait before retry number ``attempt`` (0-based): ``min(cap, base * factor**attempt)``,
    then :func:`jittered`. The default is "full jitter" doubling."""
    # The exponent is bounded: past it the cap holds anyway, and a float power overflows.
    return jittered(min(cap, base * factor ** min(attempt, _MAX_EXPONENT)), jitter)


def blind(attempt: int) -> float:
    """A back-off for when nothing is known of how long the service's jobs take (the batch's,
    after a refusal or before resubmitting): ``attempt`` 0 and 1 wait 0.125-0.25 s, each next
    one twice as long, at most 5-10 s."""
    return exponential(max(0, attempt - 1), base=_BLIND_BASE, cap=_BLIND_CAP, jitter=_BLIND_JITTER)


def retry_after(seconds: float, *, cap: float, jitter: Jitter = (1.0, 1.1)) -> float:
    """The wait the service asked for (``Retry-After``, ``retry_after``), at most ``cap``.
    The jitter only lengthens it, so that many waiters do not come back in the same instant
    without coming back too early."""
    return jittered(min(float(seconds), cap), jitter)


# --- the poller: waits relative to the job ----------------------------------------------------


def share_of_age(age: float, share: float, *, cap: float, jitter: Jitter = (0.9, 1.1)) -> float:
    """``share`` of a job's ``age`` (seconds since it started), jittered, at most ``cap``: the
    wait before asking again about a job no estimate covers. The share grows by the caller's
    rule (see :func:`exponential` with ``jitter=None``)."""
    return min(cap, jittered(share * age, jitter))


def spread_over(wait: float, remaining: float, tries_left: int) -> float:
    """``wait``, shortened so that ``tries_left`` more tries fit in the ``remaining`` seconds
    of a grace period, however long the back-off has grown."""
    return min(wait, max(0.0, remaining) / max(1, tries_left))


def in_window(
    now: float,
    earliest: float,
    latest: float,
    *,
    started: float,
    pending_at: float,
    budget: float,
    lead: float,
) -> float:
    """The wait before fetching a job expected to finish between ``earliest`` and ``latest``.

    The result may wait ``budget`` of the job's duration (from ``started``), measured against
    the shortest it may have, so that a job finishing early is not kept waiting: the fetch goes
    at ``latest`` when that is within the allowance, else at the earliest moment plus it. The
    job was still running at ``pending_at`` (its last "processing"): it may have finished any
    time after that, so the allowance runs from there, not from ``now`` (a job planned again
    inside its window has already spent part of it). ``lead``: how much earlier to send, as
    the service looks at the job that long after the request leaves (half a round trip).
    """
    start = max(pending_at, earliest)
    allowed = budget * (start - started)
    target = latest if latest - start <= allowed else start + allowed
    return max(0.0, target - now - lead)


def probe_wait(now: float, earliest: float, *, early: float = 0.93) -> float:
    """The wait of a probe: well before the earliest plausible finish (the estimate of it may
    be too late), so that the job is measured whatever its speed."""
    return max(0.0, earliest - now) * early


# --- the batch: waiting for room in the service's queue ---------------------------------------


def room_expected(
    turned_away: int,
    *,
    until_next: float | None,
    typical: float | None,
    floor: float,
) -> float:
    """Seconds until the service should have room again for a submission turned away
    ``turned_away`` times in a row (longer with each), from what the client knows of its own
    jobs: ``until_next``, the seconds until the next of them should end (a slot frees when one
    does; a share of a job's length more, as one past its estimate still runs), else a share of
    ``typical``, their usual duration; :func:`blind` when nothing is known. At least ``floor``.
    """
    growth = 1.5 ** min(max(0, turned_away - 1), _MAX_EXPONENT)
    if until_next is not None:
        wait = max(0.0, until_next)
        share = 0.1 * (typical if typical is not None else wait)
        return max(floor, wait + share * growth)
    if typical is not None:
        return jittered(max(floor, 0.25 * typical * growth), (0.9, 1.1))
    return blind(turned_away)


def queue_full_wait(
    hint: float | None,
    *,
    own_full: bool,
    turned_away: int,
    until_next: float | None,
    typical: float | None,
    floor: float,
    cap: float,
    watched: bool = False,
) -> tuple[float, float]:
    """``(least, most)``: a submission turned away as "queue full" ``turned_away`` times in a
    row goes again once one of the client's own jobs ends, but not before ``least`` seconds,
    and at the latest after ``most``.

    ``hint`` is the service's ``retry_after``: the least wait it asked for (RFC 9110
    §10.2.3), never a promise of room; a hint longer than the client's own jobs take (about
    ``typical``, else ``until_next``) is taken as that long, since the service's docs answer
    30 s whatever the jobs' length.

    - ``own_full``: the client's own jobs fill its window, so the room it needs comes when one
      of them ends: wait for that, and at least ``hint`` (whichever is later). ``most`` is only
      the bound for a job whose end the client does not see in time (:func:`room_expected`).
    - otherwise someone else holds slots: back off from ``hint``, doubling with each refusal,
      up to about a job's length (``typical``, else ``until_next``; ten seconds when neither is
      known); an end of one of the client's own jobs ends the wait sooner (that slot was
      ours), though never before ``hint``. When the account is ``watched`` (its count of jobs
      read for free: see ``_share``), the wait is for room seen there, or one of the client's
      own jobs ending, up to ``cap``: each try by submission on a full account is a refusal.

    Without a hint, :func:`room_expected` from what the client knows of its own jobs. Every
    figure is at most ``cap`` (the retry policy's ``max_retry_after``).
    """
    room = room_expected(turned_away, until_next=until_next, typical=typical, floor=floor)
    if hint is None:
        return min(cap, floor), cap if watched and not own_full else min(cap, max(floor, room))
    least = retry_after(max(hint, floor), cap=cap, jitter=(1.0, 1.05))
    length = typical if typical is not None else until_next
    if length is not None:
        # A hint longer than the client's own jobs take is a constant (the service's docs
        # answer 30 s whatever the jobs), not news of this account: the end of one of our jobs
        # is surer evidence of room.
        least = min(least, max(floor, length))
    if own_full:
        return least, min(cap, max(least, room))
    if watched:
        return least, max(least, cap)
    ceiling = max(least, length if length is not None and length > 0 else _BLIND_CAP)
    grown = min(ceiling, least * 2.0 ** min(max(0, turned_away - 1), _MAX_EXPONENT))
    return least, min(cap, max(least, jittered(grown, (0.9, 1.1))))


# --- downloads: an output that is not there yet -----------------------------------------------


def not_there_yet(now: float, *, asked: float, missing_since: float, floor: float) -> float:
    """The wait before asking again for an output that answered 404 (``asked`` is when this
    request left, ``missing_since`` when the first 404 did). How long a CDN lags is not a number
    the client knows: each retry waits as long as the output has been missing so far (at least
    the round trip, and ``floor``), so a lag of any length costs a few requests and at most
    doubles."""
    return max(floor, now - asked, now - missing_since)


def before_deadline(delay: float, deadline: float, now: float) -> float:
    """``delay``, cut short so that the wait ends by ``deadline`` (never negative)."""
    return min(delay, max(0.0, deadline - now))
