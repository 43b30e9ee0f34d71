"""What a run spends: its own accepted images times the price of one image, and the guard
behind ``max_spend``.

The service does not say what a job cost, and one wallet may pay for other processes too
(shards on one key, replicas of a web app), so the wallet's drop over a run is the
*account's* spending, not the run's. The run counts its own accepted images and multiplies by
the price of one image, which is either given (``price_per_image``) or measured: the balance
of the submission's key is read just before a submission and again just after the service
accepted it, while no other submission of this run is on the wire (the others wait those few
milliseconds); the drop divided by its images is the price, or more than it if another
client's job was charged in between. A charge is never negative, so the lowest of several such
brackets is the best figure: they are taken on the 1st and 2nd accepted submission, then each
time the run's accepted submissions have about doubled (4th, 8th...): a few wallet readings
for a whole run.

Limits (docs/guide/batches.md): one price per image for the whole run (a run mixing models of
different prices should give ``price_per_image``); the measurement assumes the service bills
when it accepts a job (the emulator does; ModelsLab's docs do not say) and that nothing is
credited during a bracket. While no bracket has measured the price, ``max_spend`` falls back
to the wallets' drop (the account's spending), read every few seconds or submissions.

Money is :class:`~decimal.Decimal`, from the shortest text of each float the service sends, so
that five images at 0.01 fit a budget of 0.05 exactly.
"""

from __future__ import annotations

import logging
import sys
import time
from decimal import Decimal
from typing import Protocol

import anyio

from ._errors import DreamboothError
from ._keys import position
from ._models import WalletBalance
from ._transport import RetryPolicy

__all__ = ["Bracket", "SpendGuard", "Wallets", "money", "read_balances"]

logger = logging.getLogger("dreambooth_async")

#: One try, one retry: a balance is worth knowing, not worth holding a run up for.
_BALANCE_RETRY = RetryPolicy(max_retries=1, backoff_base=0.2, backoff_cap=1.0)

#: What a comparison with the budget forgives: a measured price is a quotient.
_TOLERANCE = Decimal("1e-9")


class Wallets(Protocol):
    """What the spend needs of a client: its keys' balances."""

    @property
    def key_count(self) -> int:
        """How many API keys."""
        ...

    async def wallet_balance(
        self, *, key_index: int = 0, retry: RetryPolicy | None = None
    ) -> WalletBalance:
        """One key's balance."""
        ...


def money(amount: float | Decimal) -> Decimal:
    """``amount`` as a Decimal, from the float's shortest text (0.1 is 0.1, not 0.1000...0555)."""
    return amount if isinstance(amount, Decimal) else Decimal(repr(float(amount)))


async def _balance(wallets: Wallets, index: int) -> WalletBalance | None:
    try:
        return await wallets.wallet_balance(key_index=index, retry=_BALANCE_RETRY)
    except Exception as error:  # informational: never the reason a run fails
        logger.info("could not read the balance of %s: %s", position(index), error)
        return None


async def read_balances(wallets: Wallets) -> list[WalletBalance | None]:
    """Every key's balance, in key order; None for a key whose balance cannot be read (a
    refused key, a service without the endpoint, no network)."""
    return [await _balance(wallets, index) for index in range(wallets.key_count)]


def _drop(before: list[WalletBalance | None], now: list[WalletBalance | None]) -> Decimal:
    return sum(
        (
            money(old.balance) - money(new.balance)
            for old, new in zip(before, now, strict=True)
            if old is not None and new is not None
        ),
        Decimal(0),
    )


class Bracket:
    """One measurement: the balance of ``key`` just before a lone submission."""

    def __init__(self, key: int, before: WalletBalance | None) -> None:
        self.key = key
        self.before = before


class SpendGuard:
    """Counts what a run spends (its own accepted images at the price of one) and, with an
    ``amount``, lets submissions through while that stays within it.

    ``price``: the price of one image when known beforehand (nothing is measured then).
    ``every_seconds`` and ``every_submissions``: how often the wallets are read under a budget
    while the price is not known.
    """

    def __init__(
        self,
        wallets: Wallets,
        amount: float | Decimal | None = None,
        *,
        price: float | Decimal | None = None,
        every_seconds: float = 5.0,
        every_submissions: int = 10,
    ) -> None:
        self._wallets = wallets
        self.amount = None if amount is None else money(amount)
        self._given = None if price is None else money(price)
        self._measured: Decimal | None = None
        self._every_seconds = every_seconds
        self._every_submissions = every_submissions
        self.before: list[WalletBalance | None] = []
        self._latest: list[WalletBalance | None] = []
        #: The wallets' drop at the last reading: the account's spending, not the run's.
        self.wallet_drop = Decimal(0)
        self._read_at = 0.0
        self._let_through = 0  # submissions let through since the last reading
        self.images = 0  # this run's accepted images
        self._in_flight = 0  # images of submissions let through, not answered yet
        self._accepted = 0  # accepted submissions
        self._next_bracket = 0  # bracket the submission accepted after this many
        self._bracket: Bracket | None = None
        self._posting = 0  # submissions on the wire outside a bracket
        self._changed = anyio.Event()
        self.exhausted = False
        #: How many times a balance was read (for tests and reports).
        self.readings = 0
        #: The figures the brackets measured (each the price, or more).
        self.brackets: list[Decimal] = []

    def __repr__(self) -> str:
        return f"<SpendGuard amount={self.amount} price={self.price} images={self.images}>"

    @property
    def price(self) -> Decimal | None:
        """The price of one image: given, or the lowest measured (None until measured)."""
        return self._given if self._given is not None else self._measured

    @property
    def price_source(self) -> str | None:
        """``"given"``, ``"measured"``, or None while the price is not known."""
        if self._given is not None:
            return "given"
        return "measured" if self._measured is not None else None

    @property
    def spent(self) -> Decimal | None:
        """What this run's own accepted images cost (None while the price is not known)."""
        price = self.price
        if self.images == 0:
            return Decimal(0)  # nothing accepted costs nothing, whatever the price
        return None if price is None else price * self.images

    def summary(self) -> dict[str, object]:
        """The run's spend for ``BatchRun.spend`` and the report."""
        price, spent = self.price, self.spent
        return {
            "spent": None if spent is None else float(spent),
            "images": self.images,
            "price_per_image": None if price is None else float(price),
            "price_source": self.price_source,
            "brackets": len(self.brackets),
        }

    # --- the wallets ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the balances (unless the price is given); raises under a budget when none can
        be read, since nothing could be measured."""
        if self._given is not None:
            return
        self.before = await read_balances(self._wallets)
        self.readings += len(self.before)
        if self.amount is not None and all(balance is None for balance in self.before):
            raise DreamboothError(
                "max_spend: the wallet balance cannot be read, so the spend cannot be "
                "measured; give price_per_image (--price-per-image), or nothing is submitted"
            )
        self._latest = list(self.before)
        self._read_at = time.monotonic()
        if all(balance is None for balance in self.before):
            self._next_bracket = sys.maxsize  # no wallet to measure with: never hold a submission

    async def _read(self) -> None:
        now = await read_balances(self._wallets)
        self.readings += len(now)
        # A key that could not be read this time keeps its last reading.
        self._latest = [
            new if new is not None else old for old, new in zip(self._latest, now, strict=True)
        ]
        self.wallet_drop = _drop(self.before, self._latest)
        self._read_at = time.monotonic()
        self._let_through = 0

    # --- the budget ----------------------------------------------------------------------------

    def _within(self, images: int) -> bool:
        assert self.amount is not None
        price = self.price
        if price is None:
            # Not measured yet: the account's drop, or, before anything was accepted, the
            # lone submission the first bracket measures.
            return self.wallet_drop < self.amount
        needed = price * (self.images + self._in_flight + images)
        return needed <= self.amount + _TOLERANCE

    async def allows(self, images: int) -> bool:
        """True to let a submission of ``images`` images through (it is then counted as in
        flight until :meth:`settled`); False once the budget is spent. Without an amount,
        always True."""
        if self.exhausted:
            return False
        if self.amount is not None:
            # Until the first accepted submission was measured, one at a time: the price is
            # known before a second one is let through.
            while self.price is None and self._accepted == 0 and self._in_flight > 0:
                await self._changed.wait()
            if self.price is None and self._accepted > 0 and self.before:
                due = (
                    time.monotonic() - self._read_at >= self._every_seconds
                    or self._let_through >= self._every_submissions
                )
                if due:
                    await self._read()
            if not self._within(images):
                self.exhausted = True
                spent = self.spent
                logger.info(
                    "batch stops submitting: max_spend=%s reached (%s)",
                    self.amount,
                    f"{self.images} images at {self.price} spent {spent}"
                    if spent is not None
                    else f"the wallets dropped by {self.wallet_drop}",
                )
                return False
        self._let_through += 1
        self._in_flight += images
        return True

    def settled(self, images: int, *, accepted: bool) -> None:
        """A submission let through was answered: accepted (its images are this run's), or
        not."""
        self._in_flight -= images
        if accepted:
            self.images += images
        self._notify()

    # --- measuring the price -------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _wants_bracket(self) -> bool:
        return self._given is None and self._accepted >= self._next_bracket

    async def before_post(self, key: int) -> Bracket | None:
        """Call just before a submission goes on the wire with ``key``'s slot; pass what it
        returns to :meth:`after_post` once it is answered (or not)."""
        while True:
            if self._bracket is None and not self._wants_bracket():
                self._posting += 1
                return None
            if self._bracket is None and self._posting == 0:
                bracket = self._bracket = Bracket(key, None)
                try:
                    bracket.before = await _balance(self._wallets, key)
                except BaseException:
                    self._bracket = None
                    self._notify()
                    raise
                self.readings += 1
                return bracket
            # A measurement is under way, or waits for this run's submissions on the wire.
            await self._changed.wait()

    async def after_post(self, bracket: Bracket | None, *, accepted: bool, images: int) -> None:
        """The submission :meth:`before_post` let out was answered: ``accepted`` (and billed by
        the service) with ``images`` images, or not."""
        try:
            if accepted:
                self._accepted += 1
            if bracket is None:
                self._posting -= 1
                return
            if not accepted:
                return  # not billed: the next submission is measured instead
            # The next bracket comes once the accepted submissions have about doubled.
            self._next_bracket = 2 * self._accepted - 1
            if bracket.before is None:
                return
            with anyio.CancelScope(shield=True):  # the figure is worth the few milliseconds
                after = await _balance(self._wallets, bracket.key)
            self.readings += 1
            if after is None:
                return
            drop = money(bracket.before.balance) - money(after.balance)
            if drop <= 0:
                # Billed later than acceptance, or credited meanwhile: nothing to learn here.
                logger.info("the price per image could not be measured (no drop in balance)")
                return
            figure = drop / images
            self.brackets.append(figure)
            if self._measured is None or figure < self._measured:
                self._measured = figure
        finally:
            if bracket is not None:
                self._bracket = None
            self._notify()
