"""What a run spends, read from the accounts' wallets: balances for the run's report, and the
guard behind ``max_spend``.

The service bills per image, at a price the client is not told, and its wallet endpoint is the
only measure. The guard reads every key's balance when the run starts, once more after the first
image was accepted (to measure the price: the drop per image), then only now and then (every few
seconds or every few submissions), and in between estimates the spend from that price times the
images accepted since the last reading, plus the images of the submissions it let through that
have no answer yet. A submission that would take the estimate past the budget is not let
through: the balance is read once more first, and if that confirms it, the run stops
submitting. Before the price is known, the submissions on the wire at once are the overshoot.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ._errors import DreamboothError
from ._keys import position
from ._models import WalletBalance
from ._transport import RetryPolicy

if TYPE_CHECKING:
    from ._client import DreamboothClient

__all__ = ["SpendGuard", "read_balances"]

logger = logging.getLogger("dreambooth_async")

#: One try, one retry: a balance is worth knowing, not worth holding a run up for.
_BALANCE_RETRY = RetryPolicy(max_retries=1, backoff_base=0.2, backoff_cap=1.0)


async def read_balances(client: DreamboothClient) -> list[WalletBalance | None]:
    """Every key's balance, in key order; None for a key whose balance cannot be read (a
    refused key, a service without the endpoint, no network)."""
    balances: list[WalletBalance | None] = []
    for index in range(client.key_count):
        try:
            balances.append(await client.wallet_balance(key_index=index, retry=_BALANCE_RETRY))
        except Exception as error:  # informational: never the reason a run fails
            logger.info("could not read the balance of %s: %s", position(index), error)
            balances.append(None)
    return balances


def _drop(before: list[WalletBalance | None], now: list[WalletBalance | None]) -> float:
    return sum(
        old.balance - new.balance
        for old, new in zip(before, now, strict=True)
        if old is not None and new is not None
    )


class SpendGuard:
    """Lets submissions through until the wallets have dropped by ``amount``.

    ``every_seconds`` and ``every_submissions``: how often the balances are read while the
    estimate stays under the budget.
    """

    def __init__(
        self,
        client: DreamboothClient,
        amount: float,
        *,
        every_seconds: float = 5.0,
        every_submissions: int = 10,
    ) -> None:
        self._client = client
        self.amount = amount
        self._every_seconds = every_seconds
        self._every_submissions = every_submissions
        self.before: list[WalletBalance | None] = []
        self._latest: list[WalletBalance | None] = []
        #: The drop in balance at the last reading.
        self.spent = 0.0
        self._read_at = 0.0
        self._let_through = 0  # submissions let through since the last reading
        self._images_total = 0  # images accepted since the start
        self._images_since = 0  # images accepted since the last reading
        self._in_flight = 0  # images of submissions let through, not answered yet
        self.exhausted = False
        #: How many times the balances were read (for tests and reports).
        self.readings = 0

    def __repr__(self) -> str:
        return f"<SpendGuard amount={self.amount} spent={self.spent:.4g}>"

    @property
    def price(self) -> float | None:
        """The measured price of one image (None until something was spent)."""
        if self._images_total - self._images_since <= 0 or self.spent <= 0:
            return None
        return self.spent / (self._images_total - self._images_since)

    async def start(self) -> None:
        """Read the balances the budget is measured from; raises when none can be read."""
        self.before = await read_balances(self._client)
        if all(balance is None for balance in self.before):
            raise DreamboothError(
                "max_spend: the wallet balance cannot be read, so the spend cannot be "
                "measured; nothing was submitted"
            )
        self._latest = list(self.before)
        self._read_at = time.monotonic()
        self.readings += 1

    async def _read(self) -> None:
        now = await read_balances(self._client)
        # A key that could not be read this time keeps its last reading.
        self._latest = [
            new if new is not None else old for old, new in zip(self._latest, now, strict=True)
        ]
        self.spent = _drop(self.before, self._latest)
        self._read_at = time.monotonic()
        self._let_through = 0
        self._images_since = 0
        self.readings += 1

    def _estimate(self, images: int) -> float:
        price = self.price
        if price is None:
            return self.spent
        return self.spent + price * (self._images_since + self._in_flight + images)

    async def allows(self, images: int) -> bool:
        """True to let a submission of ``images`` images through (it is then counted as in
        flight until :meth:`settled`); False once the budget is spent."""
        if self.exhausted:
            return False
        due = (
            time.monotonic() - self._read_at >= self._every_seconds
            or self._let_through >= self._every_submissions
            or self._estimate(images) > self.amount
            # No price yet, and an image was accepted since the last reading: this reading
            # measures it (one, where the service bills at acceptance).
            or (self.price is None and self._images_since > 0)
        )
        if due:
            await self._read()
        if self.spent >= self.amount or self._estimate(images) > self.amount:
            self.exhausted = True
            logger.info(
                "batch stops submitting: max_spend=%g reached (the balance dropped by %.4g)",
                self.amount,
                self.spent,
            )
            return False
        self._let_through += 1
        self._in_flight += images
        return True

    def settled(self, images: int, *, accepted: bool) -> None:
        """A submission let through was answered: accepted (its images are spent), or not."""
        self._in_flight -= images
        if accepted:
            self._images_total += images
            self._images_since += images
