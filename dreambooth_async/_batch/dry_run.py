"""What a run would cost (``--dry-run``): read the manifest and the cache, contact nobody. Items
are keyed by the batch's own :class:`~.plan.Planner`, so a dry run and the run it previews
agree on every key."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TypeAlias

import attrs

from .._cache import ResultCache, cache_key
from .._manifest import ManifestIndex, index_manifest
from .._models import ApiVersion, GenerationRequest
from .._request_drafts import RequestDraft
from .plan import Planner

__all__ = ["Planned", "RunPlan", "plan_run"]

#: An input of :func:`plan_run`: a request or a draft of one, with its key or not.
Planned: TypeAlias = (
    GenerationRequest | RequestDraft | tuple[str, GenerationRequest] | tuple[str, RequestDraft]
)


@attrs.frozen
class RunPlan:
    """What a batch would do, without submitting: ``items`` read; ``submissions`` it would
    send and their ``images`` (samples count); ``cached`` items the result cache answers;
    ``done`` and ``in_flight`` items an earlier run's manifest covers; ``over_budget`` items
    ``max_images`` would leave pending."""

    items: int = 0
    submissions: int = 0
    images: int = 0
    cached: int = 0
    done: int = 0
    in_flight: int = 0
    over_budget: int = 0

    def to_json(self) -> dict[str, int]:
        return attrs.asdict(self)


# The manifest's statuses that cover an item, and what the plan counts them as.
_COVERED: dict[str | None, str] = {"done": "done", "submitted": "in_flight"}


def plan_run(
    requests: Iterable[Planned],
    *,
    api_version: ApiVersion,
    base_url: str,
    cache: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    max_images: int | None = None,
) -> RunPlan:
    """The :class:`RunPlan` of ``client.map(requests, manifest=..., max_images=...)`` with a
    client using ``cache``: reads the files, contacts nobody. Items are keyed as the batch keys
    them (``request_key``, repeats numbered, when no explicit key is given). A
    :class:`~.._request_drafts.RequestDraft` stands for the request it builds: keyed and
    checked alike, built only when the run would send it (not when the manifest covers it)."""
    # A finished item is 32 bytes here, and its status is read without its line.
    states = index_manifest(manifest) if manifest is not None else ManifestIndex("")
    store = ResultCache(cache) if cache is not None and Path(cache).exists() else None
    counts = dict.fromkeys(attrs.fields_dict(RunPlan), 0)
    spent = 0
    if max_images is not None and states:
        spent = states.images_paid()
    # Repeats are numbered only with a manifest, as in the batch.
    planner = Planner(
        states if manifest is not None else None,
        keys=None,
        resubmit_ambiguous=False,
        retry_failed=True,
    )
    status = states.status
    # What the manifest covers is counted; drafts of it are checked, never built. With nothing
    # in the manifest, every draft is built at once and keyed from its request.
    consult = bool(states)
    try:
        for index, raw in enumerate(requests):
            counts["items"] += 1
            draft = raw[1] if isinstance(raw, tuple) and len(raw) == 2 else raw
            if isinstance(draft, RequestDraft):
                if consult:
                    key = planner.draft_key(index, raw)  # type: ignore[arg-type]
                    known = _COVERED.get(status(key))
                    if known is not None:
                        draft.check()
                        counts[known] += 1
                        continue
                    request = draft.build()
                else:
                    request = draft.build()
                    planner.key(index, request if raw is draft else (raw[0], request))  # type: ignore[index]
            else:
                key, request = planner.key(index, raw)  # type: ignore[arg-type]
                known = _COVERED.get(status(key)) if consult else None
                if known is not None:
                    counts[known] += 1
                    continue
            hit = cache_key(request, api_version, base_url) if store is not None else None
            if store is not None and hit is not None:
                row = store.row(hit)
                if row is not None and row.state != "claimed":
                    counts["cached"] += 1
                    continue
            if max_images is not None and spent + request.samples > max_images:
                counts["over_budget"] += 1
                continue
            spent += request.samples
            counts["submissions"] += 1
            counts["images"] += request.samples
    finally:
        states.close()
        if store is not None:
            store.close()
    return RunPlan(**counts)
