"""Counters the tests and benchmarks read, in process (``Emulator.stats``) or over HTTP."""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs

# What identifies "the same submission" for the double-spending check: a client that resubmits
# a job the server already accepted shows up as a count above 1. A request with ``seed: null``
# is recorded with seed None.
Fingerprint = tuple[str, str, int | None]


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
        }
