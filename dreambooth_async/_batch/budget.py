"""The batch's budgets: ``max_images`` (samples paid for or in flight) and ``max_spend`` (this
run's accepted images at the price of one, see :mod:`.._spend`). An item past either is not
sent and stays pending."""

from __future__ import annotations

from collections.abc import Iterable

from .._manifest import ItemState, Manifest
from .._spend import Bracket, SpendGuard, Wallets
from .._transport import logger
from .plan import Entry

__all__ = ["Budget", "images_paid"]


def images_paid(manifest: Iterable[ItemState]) -> int:
    """Images a manifest says earlier runs paid for: outputs of done items, one per job
    still in flight (its samples are not recorded)."""
    total = 0
    for state in manifest:
        if state.status == "done":
            total += max(1, len(state.output))
        elif state.status == "submitted":
            total += 1
    return total


class Budget:
    """Images reserved by each item under ``max_images``, and the submissions ``max_spend``
    let through and has not heard the answer of."""

    def __init__(
        self,
        *,
        max_images: int | None,
        max_spend: float | None,
        price_per_image: float | None = None,
        track_spend: bool = False,
    ) -> None:
        self._max_images = max_images
        self._max_spend = max_spend
        self._price = price_per_image
        self._track = track_spend or max_spend is not None or price_per_image is not None
        self._images = 0
        self._reserved: dict[int, int] = {}  # item index -> images reserved
        self._over_budget = False
        self._spend: SpendGuard | None = None
        self._spend_held: dict[int, int] = {}  # item index -> images let through, unanswered

    @property
    def reached(self) -> bool:
        """True once ``max_images`` or ``max_spend`` kept an item from being sent."""
        return self._over_budget

    @property
    def spend(self) -> SpendGuard | None:
        """The run's spend and its guard once started (None when the run does not count it)."""
        return self._spend

    async def start(self, wallets: Wallets, manifest: Manifest | None) -> None:
        """Count what earlier runs paid (with a manifest) and start counting the spend
        (``max_spend`` without a price raises when no wallet can be read)."""
        if self._max_images is not None and manifest is not None:
            self._images = manifest.images_paid()  # images_paid(manifest), done lines unread
        if self._track:
            self._spend = SpendGuard(wallets, self._max_spend, price=self._price)
            await self._spend.start()

    async def before_post(self, key_index: int) -> Bracket | None:
        """Just before a submission goes on the wire: what :meth:`after_post` takes (a
        measurement of the price may hold it for the few milliseconds it takes)."""
        return None if self._spend is None else await self._spend.before_post(key_index)

    async def after_post(self, token: Bracket | None, entry: Entry, *, accepted: bool) -> None:
        """The submission was answered: ``accepted`` and billed, or not."""
        if self._spend is not None:
            await self._spend.after_post(token, accepted=accepted, images=entry.request.samples)

    def reserve(self, entry: Entry) -> bool:
        """Reserve ``entry``'s images under ``max_images``; False once the budget is spent
        (the item is not sent, and stays pending for a rerun with a larger budget)."""
        if self._spend is not None and self._spend.exhausted:
            self._over_budget = True
            return False
        if self._max_images is None:
            return True
        samples = entry.request.samples
        if self._over_budget or self._images + samples > self._max_images:
            if not self._over_budget:
                self._over_budget = True
                logger.info(
                    "batch stops submitting: max_images=%d reached (%d paid for or in flight)",
                    self._max_images,
                    self._images,
                )
            return False
        self._images += samples
        self._reserved[entry.index] = samples
        return True

    def keep(self, entry: Entry) -> None:
        """``entry`` ended paid for: its images stay counted, and it is tracked no longer
        (what a long run keeps of an item is its count, not an entry in a dict)."""
        self._reserved.pop(entry.index, None)

    def unreserve(self, entry: Entry) -> None:
        """``entry`` was never accepted (or cost nothing): its images are not in flight."""
        self._images -= self._reserved.pop(entry.index, 0)

    async def spend_allows(self, entry: Entry) -> bool:
        """Under ``max_spend``, let ``entry`` be sent, or not: then its images reserved under
        ``max_images`` are given back (and the caller gives back its slot)."""
        if self._spend is None:
            return True
        samples = entry.request.samples
        if await self._spend.allows(samples):
            self._spend_held[entry.index] = samples
            return True
        self._over_budget = True
        self.unreserve(entry)
        return False

    def spend_settled(self, entry: Entry, *, accepted: bool) -> None:
        """The submission ``max_spend`` let through was answered (or will never be)."""
        samples = self._spend_held.pop(entry.index, None)
        if samples is not None and self._spend is not None:
            self._spend.settled(samples, accepted=accepted)
