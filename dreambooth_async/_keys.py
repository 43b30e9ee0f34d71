"""Several API keys in one client: which key a call uses, which keys are retired, and which
key submitted each job.

Only positions live here, never the keys themselves (those stay in the transport). Positions
are 0-based in code and 1-based for people: the second key is ``key #2`` in every warning,
manifest line and report.

A submission is sent with a key chosen per call. A batch names the key of each submission
(``client.submit(..., key_index=)``: each key has its own queue-slot window there); any other
submission goes to the live key with the fewest jobs of this client pending. A key the service
refused (401) or that cannot pay (402) is retired: no submission uses it again in this client,
and while another key is live the work carries on there. A job is fetched with the key that
submitted it: the service answers another account's job like a missing one.
"""

from __future__ import annotations

import logging

__all__ = ["KeyRing", "position"]

logger = logging.getLogger("dreambooth_async")


def position(index: int) -> str:
    """How people read a key's 0-based index: ``key #1`` for the first."""
    return f"key #{index + 1}"


class KeyRing:
    """The positions of a client's keys and what the client knows of each."""

    def __init__(self, count: int) -> None:
        self.count = count
        #: Position -> why it was retired (the error's type name).
        self.retired: dict[int, str] = {}
        #: Jobs of this client pending per key (the choice for unpinned submissions).
        self.pending = [0] * count
        self._job_key: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<KeyRing keys={self.count} retired={sorted(self.retired)}>"

    @property
    def several(self) -> bool:
        return self.count > 1

    def live(self) -> list[int]:
        """Positions (0-based) not retired, in order."""
        return [index for index in range(self.count) if index not in self.retired]

    def choose(self) -> int:
        """The key for a submission the caller sent with no key of its own: the live key with
        the fewest pending jobs (the first key when every key is retired: its error is the
        answer)."""
        if self.count == 1:
            return 0  # one key: nothing to choose, and nothing on the hot path
        live = self.live()
        if not live:
            return 0
        return min(live, key=lambda i: (self.pending[i], i))

    def retire(self, index: int, error: BaseException) -> bool:
        """Retire key ``index`` after ``error`` (401, 402); True when another key is still
        live. A single key is never retired: its error is the caller's to see."""
        if not self.several:
            return False
        if index not in self.retired:
            self.retired[index] = type(error).__name__
            others = len(self.live())
            logger.warning(
                "%s retired (%s); %s",
                position(index),
                type(error).__name__,
                f"{others} other key(s) carry on" if others else "no key is left",
            )
        return bool(self.live())

    # --- which key submitted a job -----------------------------------------------------------

    def bind(self, job_id: str, index: int) -> None:
        """Job ``job_id`` was submitted with key ``index``: fetch it with that key."""
        if not self.several or not job_id:
            return
        if self._job_key.get(job_id) != index:
            if job_id in self._job_key:
                self.pending[self._job_key[job_id]] -= 1
            self._job_key[job_id] = index
            self.pending[index] += 1

    def key_of(self, job_id: str) -> int:
        """The key that submitted ``job_id`` (the first key when not known)."""
        return self._job_key.get(job_id, 0)

    def ended(self, job_id: str) -> None:
        """The job ended: it needs no more fetches and no longer counts as pending."""
        index = self._job_key.pop(job_id, None)
        if index is not None:
            self.pending[index] -= 1
