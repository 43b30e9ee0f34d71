"""Fetching and attaching to jobs: one fetch call, waiting for a job submitted earlier, and
recovering the job of a submission whose answer was lost. A base class of
:class:`DreamboothClient`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._account import AccountCalls
from ._endpoints import fetch_target
from ._errors import APIError, DreamboothError, RequestValidationError, about_job
from ._job import Job
from ._models import ApiVersion, GenerationResult, Processing
from ._telemetry import Telemetry, current_trace
from ._transport import logger
from ._wire import parse_response

if TYPE_CHECKING:
    from ._download import SessionSource
    from ._keys import KeyRing
    from ._poller import Poller
    from ._webhooks import WebhookReceiver

__all__ = ["JobCalls"]


class JobCalls(AccountCalls):
    """Calls about one job, by id."""

    api_version: ApiVersion
    _keys: KeyRing
    _poller: Poller
    _webhooks: WebhookReceiver | None
    _telemetry: Telemetry
    #: The handle on the client's session that results keep (for ``save()``).
    _sessions: SessionSource

    def _fetch_target(self, job_id: str, fetch_url: str | None) -> tuple[str, dict[str, Any]]:
        return fetch_target(self.base_url, self.api_version, job_id, fetch_url)

    async def _fetch_for_poller(
        self, job_id: str, fetch_url: str | None
    ) -> GenerationResult | Processing:
        url, body = self._fetch_target(job_id, fetch_url)

        def parse(
            http_status: int, headers: Mapping[str, str], raw: bytes
        ) -> GenerationResult | Processing:
            try:
                return parse_response(
                    http_status, headers, raw, session=self._sessions, job_id=job_id
                )
            except APIError as error:
                raise about_job(error, job_id) from None

        # The key that submitted the job: the service answers another account's job like a
        # missing one.
        return await self._transport.call(
            url,
            body,
            idempotent=True,
            parse=parse,
            key_index=self._keys.key_of(job_id),
            operation="fetch",
        )

    async def fetch(
        self,
        job: str | int | Job,
        *,
        fetch_url: str | None = None,
        key_index: int | None = None,
    ) -> GenerationResult | Processing:
        """One fetch call for a queued job, no waiting: its result, or its processing status.

        Follows the ``fetch_result`` URL the service gave (``fetch_url``, or the job's own)
        when it is on the client's origin. With several keys, the job is fetched with the key
        that submitted it when this client knows it, else with ``key_index`` (0-based; default
        the first key).
        """
        self._check_open()
        if isinstance(job, Job):
            job_id = job.id
            fetch_url = fetch_url or job.fetch_url
        else:
            job_id = str(job).strip()
        if not job_id or isinstance(job, bool):
            raise RequestValidationError("job_id", job, "a non-empty job id")
        if key_index is not None:
            self._keys.bind(job_id, self._key_index(key_index))
        return await self._fetch_for_poller(job_id, fetch_url)

    async def wait_for(
        self,
        job_id: str | int,
        *,
        timeout: float | None = None,
        fetch_url: str | None = None,
        key_index: int | None = None,
    ) -> GenerationResult:
        """Attach to a job submitted earlier (by this or another process) and wait for it."""
        return await self.attach(
            job_id, timeout=timeout, fetch_url=fetch_url, key_index=key_index
        ).wait()

    def attach(
        self,
        job_id: str | int,
        *,
        timeout: float | None = None,
        fetch_url: str | None = None,
        key_index: int | None = None,
    ) -> Job:
        """A :class:`Job` handle for a job submitted earlier; polling starts at once.

        ``key_index``: with several keys, the position (0-based) of the key that submitted
        the job: it is fetched with that key (default: the first)."""
        self._check_open()
        text = str(job_id).strip()
        if not text:
            raise RequestValidationError("job_id", job_id, "a non-empty job id")
        if key_index is not None:
            self._keys.bind(text, self._key_index(key_index))
        # Inside a batch item the job is part of the item's trace; alone, it has its own.
        trace = current_trace() or self._telemetry.generation("attach", None, ends_with_job=True)
        job = self._poller.track(
            Processing(id=text, fetch_result=fetch_url), timeout=timeout, trace=trace
        )
        if not self._poller.reports_to(text, trace):
            trace.finish("accepted")  # already pending here: reported by its own trace
        self._poller.nudge(text)
        return job

    async def recover(
        self, error: DreamboothError, *, timeout: float, key_index: int | None = None
    ) -> Job | None:
        """For a submission that may have landed (``error.may_have_landed``): wait up to
        ``timeout`` seconds for the service's webhook call to reveal its job, and attach to it.

        ``key_index``: with several keys, the one the submission was sent with (the job is
        fetched with it). Works only with a :class:`WebhookReceiver`; returns None when there
        is none, or when no delivery came in time (the submission may then never have
        landed: the caller decides whether to send it again).
        """
        token = error.webhook_token
        if token is None or self._webhooks is None:
            return None
        job_id = await self._webhooks.reveal(token, timeout)
        if not job_id:
            return None
        logger.info("recovered job %s of a submission whose answer was lost", job_id)
        return self.attach(job_id, key_index=key_index)

    def _parse(
        self, http_status: int, headers: Mapping[str, str], body: bytes
    ) -> GenerationResult | Processing:
        """:func:`parse_response`, with results keeping this client's session handle (for
        ``save()``)."""
        return parse_response(http_status, headers, body, session=self._sessions)
