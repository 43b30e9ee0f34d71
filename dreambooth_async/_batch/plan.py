"""What to do with each input: its key, what an earlier run's manifest says of it, and so
whether to submit it, attach to its job, skip it or report it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol, TypeAlias

import attrs

from .._digests import DigestCounter, TextSet
from .._manifest import ItemState
from .._models import GenerationRequest, Img2Img, Inpaint, Text2Img
from .._request_drafts import RequestDraft
from .item_keys import KEY_DIGEST_SIZE, request_digest
from .items import BatchInput

__all__ = ["Entry", "Plan", "Planner", "Priors", "plan", "prior_key"]

Plan: TypeAlias = Literal["submit", "attach", "skip", "ambiguous", "failed"]

# The only error after which a job recorded in a manifest is not fetched again by id: the service
# said that job failed. Every other ending (timeout, download, a shape the client did not expect,
# the process dying) leaves a paid job that a rerun fetches rather than pays for again.
_JOB_ENDED_FAILED = frozenset({"GenerationFailed"})


class Priors(Protocol):
    """An earlier run's item states by key: the open :class:`~.._manifest.Manifest` of a run,
    or the states a dry run read from the file."""

    def get(self, key: str) -> ItemState | None: ...


@attrs.define(slots=True)
class Entry:
    """One input on its way through the batch."""

    index: int
    key: str
    request: GenerationRequest
    prior: ItemState | None
    plan: Plan
    #: The key (0-based) whose slot the item holds, once it has one.
    key_index: int | None = None


def plan(prior: ItemState | None, *, resubmit_ambiguous: bool, retry_failed: bool) -> Plan:
    """What to do with an item whose manifest state is ``prior`` (None: never seen)."""
    if prior is None:
        return "submit"
    status = prior.status
    if status == "done":
        return "skip"
    if status == "submitted":
        return "attach"
    if status in ("submitting", "ambiguous"):
        return "submit" if resubmit_ambiguous else "ambiguous"
    if status == "failed":
        if prior.job_id is not None and prior.error not in _JOB_ENDED_FAILED:
            return "attach"  # the job exists on the service; fetch it, do not pay again
        return "submit" if retry_failed else "failed"
    return "submit"  # pending, not_landed: never accepted


def prior_key(prior: ItemState, key_count: int) -> int | None:
    """The key (0-based) that paid for an earlier run's job; None when this run has no key at
    that position (of ``key_count``)."""
    index = prior.key_index
    if not isinstance(index, int) or isinstance(index, bool):
        return 0
    return index if 0 <= index < key_count else None


class Planner:
    """Turns each raw input into an :class:`Entry`: checks it, gives it its key (numbering
    repeats of an identical request when a manifest tells items apart by key) and plans it.
    The batch and its dry run (:mod:`.dry_run`) key items with it alike."""

    def __init__(
        self,
        manifest: Priors | None,
        *,
        keys: Callable[[int, GenerationRequest], str] | None,
        resubmit_ambiguous: bool,
        retry_failed: bool,
    ) -> None:
        self._manifest = manifest
        self._keys = keys
        self._resubmit_ambiguous = resubmit_ambiguous
        self._retry_failed = retry_failed
        # Per item, the digest's bytes (not its hex key in a dict): a million items are run.
        self._occurrences = DigestCounter(KEY_DIGEST_SIZE)
        self._explicit_keys = TextSet()

    def key(self, index: int, raw: BatchInput) -> tuple[str, GenerationRequest]:
        """The checked request of input ``index`` and its key (no manifest lookup)."""
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
            digest = request_digest(request)
            key = digest.hex()  # request_key(request)
            if self._manifest is not None:
                # Identical requests (same prompt, seed None, say) are separate items: number
                # the repeats so that each has a key of its own in the manifest.
                seen = self._occurrences.add(digest)
                if seen > 1:
                    key = f"{key}.{seen}"
        elif self._manifest is not None and not self._explicit_keys.add(key):
            raise ValueError(f"batch input {index}: duplicate key {key!r}")
        return key, request

    def draft_key(self, index: int, raw: RequestDraft | tuple[str, RequestDraft]) -> str:
        """The key :meth:`key` gives the request that ``raw`` drafts, with the same checks and
        repeats numbered alike, without building it (a plan builds only what it would send)."""
        if isinstance(raw, tuple):
            if len(raw) != 2 or not isinstance(raw[0], str) or not raw[0]:
                raise TypeError(f"batch input {index}: expected (key, request), got {raw!r}")
            key = raw[0]
        elif self._keys is not None:  # keys() is given the request itself
            return self.key(index, raw.build())[0]
        else:
            digest = raw.digest()
            key = digest.hex()  # request_key(request)
            if self._manifest is not None:
                seen = self._occurrences.add(digest)
                if seen > 1:
                    key = f"{key}.{seen}"
            return key
        if self._manifest is not None and not self._explicit_keys.add(key):
            raise ValueError(f"batch input {index}: duplicate key {key!r}")
        return key

    def entry(self, index: int, raw: BatchInput) -> Entry:
        key, request = self.key(index, raw)
        prior = self._manifest.get(key) if self._manifest is not None else None
        decided = plan(
            prior, resubmit_ambiguous=self._resubmit_ambiguous, retry_failed=self._retry_failed
        )
        return Entry(index, key, request, prior, decided)
