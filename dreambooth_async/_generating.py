"""Submitting generation requests: submit, generate and the shortcuts, through the result
cache when there is one, on a key that can pay, with a webhook token when the client has a
receiver. A base class of :class:`DreamboothClient`."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from functools import partial
from typing import Unpack

import attrs

from ._cache import CachedSubmissions
from ._endpoints import PATHS
from ._errors import (
    APIError,
    AuthenticationError,
    InsufficientCredits,
    RequestValidationError,
    TransportError,
)
from ._fetch_timing import PollPolicy
from ._job import Job
from ._job_calls import JobCalls
from ._models import (
    GenerationRequest,
    GenerationResult,
    Img2Img,
    Img2ImgFields,
    Inpaint,
    InpaintFields,
    Text2Img,
    Text2ImgFields,
)
from ._sending import Sending
from ._slots import SlotPool
from ._telemetry import NO_TRACE, current_trace, outcome_of
from ._transport import RetryHook, RetryPolicy, logger
from ._turns import in_turn, try_turn, turn_taken
from ._wire import to_wire

__all__ = ["GenerateCalls"]

# The usual generate(): no timeout of its own. One frozen instance serves every such call.
_PLAIN = Sending()
# A tuple, not a union: ``A | B | C`` would make a new union object on every call.
_REQUESTS = (Text2Img, Img2Img, Inpaint)


class GenerateCalls(JobCalls):
    """Calls that submit a generation request."""

    _cache: CachedSubmissions | None
    _slots: SlotPool
    poll_policy: PollPolicy

    def _on_retry(self, attempt: int, error: Exception, delay: float) -> None:
        raise NotImplementedError  # the client's own

    async def submit(
        self,
        request: GenerationRequest,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        key_index: int | None = None,
        on_retry: RetryHook | None = None,
        wait_for_slot: bool = True,
    ) -> Job:
        """Send ``request``; return its :class:`Job` once the service accepted it.

        The job may already be finished (the service answers at once when it can). ``timeout``
        bounds the call (default: the poll policy's ``job_timeout``): the wait for a queue slot
        and the job. ``retry`` overrides the retry policy for this call. ``key_index`` sends it
        with that key (0-based; by default the client chooses, and moves on when a key is
        retired); ``on_retry(attempt, error, delay)`` hears of this submission's retries.

        The call waits its turn for one of the account's queue slots in the client's window
        (:attr:`slot_pool`, shared with every other call and batch of this client: first come,
        first served), and a "queue full" answer is waited out there and sent again, so calls
        made at once do not race each other for room. ``wait_for_slot=False`` sends at once,
        outside the window (for a caller that counts slots itself); a "queue full" answer is
        then retried by the retry policy.
        """
        sending = Sending(
            timeout=timeout,
            retry=retry,
            key_index=key_index,
            on_retry=on_retry,
            in_turn=wait_for_slot,
        )
        # Inside generate() or a batch item, the submission is part of their trace; alone, it
        # has its own, which ends with the job.
        joined = current_trace()
        trace = joined or self._telemetry.generation("submit", request, ends_with_job=True)
        try:
            with trace.active():
                answer = (
                    await self._cached(request, sending, final=False)
                    if self._cache is not None
                    else None
                )
                if answer is None:
                    answer = await self._send(request, sending)
        except BaseException as error:
            if joined is None:
                trace.finish(outcome_of(error), error)
            raise
        if joined is None and (
            isinstance(answer, GenerationResult) or not self._poller.reports_to(answer.id, trace)
        ):
            # Final at once; or a job the result cache shares with another caller, whose
            # trace is theirs.
            trace.finish("success" if isinstance(answer, GenerationResult) else "accepted")
        if isinstance(answer, GenerationResult):
            return self._poller.resolved(answer, request)
        return answer

    async def generate(
        self, request: GenerationRequest, *, timeout: float | None = None
    ) -> GenerationResult:
        """Submit ``request`` and wait through "processing" for its result.

        ``timeout`` bounds the wait for the job; on expiry :class:`JobTimeout` carries the job id.
        """
        sending = _PLAIN if timeout is None else Sending(timeout=timeout)
        trace = self._telemetry.generation("generate", request)
        try:
            with trace.active():
                # Without a cache, nothing of it is on this path (not even an await).
                answer = (
                    await self._cached(request, sending, final=True)
                    if self._cache is not None
                    else None
                )
                if answer is None:
                    answer = await self._send(request, sending)
                # An answer that is already final needs no Job: the hot path of fast models.
                if not isinstance(answer, GenerationResult):
                    answer = await answer.wait()
        except BaseException as error:
            trace.finish(outcome_of(error), error)
            raise
        trace.finish("success")
        return answer

    async def _cached(
        self, request: GenerationRequest, sending: Sending, *, final: bool
    ) -> GenerationResult | Job | None:
        """The answer from (or through) the result cache; None when it has no part in it."""
        if self._cache is None:
            return None
        self._check_open()
        return await self._cache.answer(request, sending, final=final)

    async def _send(self, request: GenerationRequest, sending: Sending) -> GenerationResult | Job:
        """Submit ``request``: the result when the answer is final, else the tracked job.
        In the caller's turn in the slot window unless it holds a slot already."""
        self._check_open()
        if not isinstance(request, _REQUESTS):
            raise RequestValidationError(
                "request", request, "a Text2Img, Img2Img or Inpaint instance"
            )
        if not sending.in_turn:
            return await self._send_now(
                request, sending.key_index, sending.retry, sending.on_retry, sending.timeout
            )
        policy = sending.retry or self._transport.retry
        # "Queue full" is the window's to wait out; every other retry stays the policy's.
        once = _window_policy(policy)
        timeout = sending.timeout if sending.timeout is not None else self.poll_policy.job_timeout
        on_retry = sending.on_retry
        pool = self._slots
        started = time.monotonic()
        # The common case (a free slot, an answer the service accepted) in line: this is the
        # path of every generate(). Anything else is in_turn's, which goes on from there.
        held = try_turn(pool, sending.key_index)
        refused = None
        if held is not None:
            try:
                # No time went by waiting: the job gets the whole timeout.
                answer = await self._send_now(request, held, once, on_retry, timeout)
            except BaseException as error:
                refused = error
            else:
                return turn_taken(pool, held, answer)

        def send(key_index: int, left: float | None) -> Awaitable[GenerationResult | Job]:
            return self._send_now(request, key_index, once, on_retry, left)

        return await in_turn(
            pool,
            send,
            key_index=sending.key_index,
            timeout=timeout,
            times=self._poller,
            cap=policy.max_retry_after,
            on_wait=partial(self._heard_retry, on_retry),
            resend_when_full=policy.retry_rate_limited and policy.max_retries > 0,
            started=started,
            held=held,
            refused=refused,
        )

    def _heard_retry(
        self, hook: RetryHook | None, attempt: int, error: Exception, delay: float
    ) -> None:
        """A wait for room told as a retry: to the call's hook, the client's listeners and
        its telemetry (the refused attempt's span and queue-full count are the transport's)."""
        self._telemetry.retried("submit", attempt, error, delay)
        if hook is not None:
            hook(attempt, error, delay)
        self._on_retry(attempt, error, delay)

    async def _send_now(
        self,
        request: GenerationRequest,
        key_index: int | None,
        retry: RetryPolicy | None,
        on_retry: RetryHook | None,
        timeout: float | None,
    ) -> GenerationResult | Job:
        """Submit ``request`` at once (the caller holds a slot, or does not count them), as
        :class:`Sending` says (its fields passed one by one: this is the path of every
        ``generate()``, and building one for each call would cost more than the rest of it)."""
        body = to_wire(request, self.api_version)
        token = None
        if self._webhooks is not None and request.webhook is None:
            token, body["webhook"] = self._webhooks.new_url()
            if request.track_id is None:
                body["track_id"] = token
        url = self._url(PATHS[self.api_version][request.kind])
        trace = current_trace() or NO_TRACE
        sent_at = time.monotonic()
        try:
            # In line, not a coroutine of its own: every await on the way down is resumed
            # through each frame above it, twice per call.
            while True:
                paid_by = self._keys.choose() if key_index is None else key_index
                try:
                    answer = await self._transport.call(
                        url,
                        body,
                        idempotent=False,
                        parse=self._parse,
                        retry=retry,
                        key_index=paid_by,
                        on_retry=on_retry,
                        operation="submit",
                    )
                    break
                except (AuthenticationError, InsufficientCredits) as error:
                    # With several keys, a key refused (401) or unable to pay (402) is
                    # retired; a submission the caller did not send with that key then goes
                    # to the next live key (nothing was accepted: nothing is paid twice).
                    if self._keys.retire(paid_by, error) and key_index is None:
                        continue
                    raise
        except (TransportError, APIError) as error:
            if token is not None and self._webhooks is not None:
                if error.may_have_landed:
                    # Keep the token: the service's webhook call may still reveal the job.
                    error.webhook_token = token
                else:
                    self._webhooks.forget(token)
            raise
        except BaseException:
            if token is not None and self._webhooks is not None:
                self._webhooks.forget(token)
            raise
        if isinstance(answer, GenerationResult):
            if token is not None and self._webhooks is not None:
                self._webhooks.forget(token)
            if self._telemetry.enabled:
                # No poller saw this job: its trace hears of it here.
                if answer.id:
                    trace.job(answer.id)
                self._telemetry.job_answered(trace, time.monotonic() - sent_at)
            return answer
        # Bound before the poller's first fetch: the job is fetched with the key that paid.
        self._keys.bind(answer.id, paid_by)
        job = self._poller.track(
            answer,
            request=request,
            timeout=timeout,
            webhook=token is not None,
            trace=trace,
        )
        if token is not None and self._webhooks is not None:
            self._webhooks.bind(token, job.id)
        logger.debug("job %s queued, eta %s", job.id, job.eta)
        return job

    async def text2img(self, **fields: Unpack[Text2ImgFields]) -> GenerationResult:
        """``generate(Text2Img(**fields))``."""
        return await self.generate(Text2Img(**fields))

    async def img2img(self, **fields: Unpack[Img2ImgFields]) -> GenerationResult:
        """``generate(Img2Img(**fields))``."""
        return await self.generate(Img2Img(**fields))

    async def inpaint(self, **fields: Unpack[InpaintFields]) -> GenerationResult:
        """``generate(Inpaint(**fields))``."""
        return await self.generate(Inpaint(**fields))


#: The window's version of each retry policy seen, by identity (the entry keeps its policy
#: alive, so an id is never reused while it is here). Hashing a frozen attrs policy field by
#: field on every call would cost more than the lookup saves.
_WINDOW_POLICIES: dict[int, tuple[RetryPolicy, RetryPolicy]] = {}


def _window_policy(policy: RetryPolicy) -> RetryPolicy:
    """``policy`` without its own retries of "queue full" answers (the slot window waits those
    out). Made once per policy: policies are frozen, and most calls share the client's one."""
    known = _WINDOW_POLICIES.get(id(policy))
    if known is not None and known[0] is policy:
        return known[1]
    once = attrs.evolve(policy, retry_queue_full=False)
    if len(_WINDOW_POLICIES) >= 64:
        _WINDOW_POLICIES.clear()
    _WINDOW_POLICIES[id(policy)] = (policy, once)
    return once
