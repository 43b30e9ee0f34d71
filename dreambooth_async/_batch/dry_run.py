"""What a run would cost (``--dry-run``): read the manifest and the cache, contact nobody. Items
are keyed by the batch's own :class:`~.plan.Planner`, so a dry run and the run it previews
agree on every key."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import attrs

from .._cache import ResultCache, cache_key
from .._manifest import read_manifest
from .._models import ApiVersion, GenerationRequest
from .budget import images_paid
from .plan import Planner

__all__ = ["RunPlan", "plan_run"]


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


def plan_run(
    requests: Iterable[GenerationRequest | tuple[str, GenerationRequest]],
    *,
    api_version: ApiVersion,
    base_url: str,
    cache: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    max_images: int | None = None,
) -> RunPlan:
    """The :class:`RunPlan` of ``client.map(requests, manifest=..., max_images=...)`` with a
    client using ``cache``: reads the files, contacts nobody. Items are keyed as the batch keys
    them (``request_key``, repeats numbered, when no explicit key is given)."""
    states = read_manifest(manifest) if manifest is not None and Path(manifest).exists() else {}
    store = ResultCache(cache) if cache is not None and Path(cache).exists() else None
    counts = dict.fromkeys(attrs.fields_dict(RunPlan), 0)
    spent = 0
    if max_images is not None and states:
        spent = images_paid(states.values())
    # Repeats are numbered only with a manifest, as in the batch.
    planner = Planner(
        states if manifest is not None else None,
        keys=None,
        resubmit_ambiguous=False,
        retry_failed=True,
    )
    try:
        for index, raw in enumerate(requests):
            counts["items"] += 1
            entry = planner.entry(index, raw)
            request, state = entry.request, entry.prior
            if state is not None and state.status == "done":
                counts["done"] += 1
                continue
            if state is not None and state.status == "submitted":
                counts["in_flight"] += 1
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
        if store is not None:
            store.close()
    return RunPlan(**counts)
