"""Counters the tests and benchmarks read, in process (``Emulator.stats``) or over HTTP."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

import attrs

# What identifies "the same submission" for the double-spending check: a client that resubmits
# a job the server already accepted shows up as a count above 1. A request with ``seed: null``
# is recorded with seed None.
Fingerprint = tuple[str, str, int | None]

# Fields that do not change what is generated: left out of the canonical request.
_NOT_THE_REQUEST = frozenset({"key", "webhook", "track_id"})


def canonical_digest(body: Mapping[str, Any]) -> str:
    """sha256 (hex) of a submission body without ``key``, ``webhook`` and ``track_id``, as JSON
    with sorted keys, no spaces, UTF-8 (``ensure_ascii=False``). Values are taken as sent: ``512``
    and ``"512"`` are different requests."""
    kept = {name: value for name, value in body.items() if name not in _NOT_THE_REQUEST}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@attrs.define
class KeyCounts:
    """What one key (by its position in ``EmulatorConfig.keys``) did; never holds the key."""

    accepted: int = 0  # submissions that became jobs
    images: int = 0  # samples of those jobs
    spent: float = 0.0  # drawn from its wallet
    rejected_402: int = 0  # insufficient credits
    rejected_403: int = 0  # premium model
    rejected_429: int = 0  # submissions refused by the queue limit or the spam filter
    request_count_throttled: int = 0  # request_count calls past 30 a minute

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class EmulatorStats:
    """Counters of what the emulator saw and did, for tests and benchmarks (also served as
    JSON at ``GET /_emulator/stats``)."""

    submissions_received: int = 0  # every submission that reached the server, faults included
    submissions_accepted: int = 0  # became a job
    rejected_invalid: int = 0  # bad key, bad field, unknown model, unusable image
    rejected_queue_full: int = 0
    rejected_spam: int = 0
    fetches: int = 0
    faults: Counter[str] = attrs.field(factory=Counter)  # injected, by kind
    webhooks_sent: int = 0  # POSTs made, duplicates included
    webhooks_dropped: int = 0  # deliveries skipped on purpose
    webhooks_duplicated: int = 0  # deliveries sent twice on purpose
    webhooks_failed: int = 0  # POSTs the receiver refused or that did not connect
    accepted_by_fingerprint: Counter[Fingerprint] = attrs.field(factory=Counter)
    rejected_credits: int = 0  # 402: the key's wallet could not pay
    rejected_premium: int = 0  # 403: a premium model
    idless_processing: int = 0  # fetch answers in the docs' id-less processing form
    request_count_throttled: int = 0
    #: Per key, by position in ``EmulatorConfig.keys``.
    per_key: list[KeyCounts] = attrs.field(factory=list)
    #: Accepted submissions per canonical request (``canonical_digest`` of the body).
    accepted_by_request: Counter[str] = attrs.field(factory=Counter)

    @staticmethod
    def canonical_digest(body: Mapping[str, Any]) -> str:
        """The key of ``accepted_by_request`` for a body as sent (see ``canonical_digest``)."""
        return canonical_digest(body)

    def duplicate_requests(self) -> dict[str, int]:
        """Canonical requests accepted more than once: ``{}`` when each reached the service once."""
        return {digest: n for digest, n in self.accepted_by_request.items() if n > 1}

    def duplicate_submissions(self) -> dict[Fingerprint, int]:
        """Fingerprints accepted more than once: ``{}`` when no job was paid for twice."""
        return {fp: n for fp, n in self.accepted_by_fingerprint.items() if n > 1}

    def to_json(self) -> dict[str, Any]:
        return {
            "submissions_received": self.submissions_received,
            "submissions_accepted": self.submissions_accepted,
            "rejected_invalid": self.rejected_invalid,
            "rejected_queue_full": self.rejected_queue_full,
            "rejected_spam": self.rejected_spam,
            "fetches": self.fetches,
            "faults": dict(self.faults),
            "webhooks_sent": self.webhooks_sent,
            "webhooks_dropped": self.webhooks_dropped,
            "webhooks_duplicated": self.webhooks_duplicated,
            "webhooks_failed": self.webhooks_failed,
            "distinct_submissions": len(self.accepted_by_fingerprint),
            "duplicate_submissions": [
                {"model_id": model_id, "prompt": prompt, "seed": seed, "count": count}
                for (model_id, prompt, seed), count in self.duplicate_submissions().items()
            ],
            "rejected_credits": self.rejected_credits,
            "rejected_premium": self.rejected_premium,
            "idless_processing": self.idless_processing,
            "request_count_throttled": self.request_count_throttled,
            "per_key": [
                {"key_index": index, **counts.to_json()}
                for index, counts in enumerate(self.per_key)
            ],
            "accepted_by_request": dict(self.accepted_by_request),
            "duplicate_requests": self.duplicate_requests(),
        }
