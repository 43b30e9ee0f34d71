"""Accounts: each key's wallet and the throttle of its ``request_count`` calls.

Queue slots are counted by the farm (see _jobs.py); the limit a key has is
``EmulatorConfig.queue_limit_of``. Money is kept in floats rounded to nanodollars after every
draw, so that ten draws of 0.01 empty a wallet of 0.10 exactly rather than leaving 1e-17.
"""

from __future__ import annotations

import collections

from ._config import EmulatorConfig

#: What ``wallet_balance`` reports for a key without a wallet limit.
UNLIMITED_BALANCE = 1_000_000.0

#: The documented throttle of ``request_count``: this many calls per minute per key.
REQUEST_COUNT_CALLS = 30
REQUEST_COUNT_WINDOW = 60.0  # service seconds

_MONEY_DIGITS = 9


class Accounts:
    """Wallets and throttles of the configured keys. One event loop drives it."""

    def __init__(self, config: EmulatorConfig) -> None:
        self._config = config
        self._balances: dict[str, float | None] = {
            key: config.wallet_of(key) for key in config.keys
        }
        self._spent: dict[str, float] = dict.fromkeys(config.keys, 0.0)
        self._calls: dict[str, collections.deque[float]] = {}

    def price(self, samples: int) -> float:
        """What a job of this many images costs."""
        return round(samples * self._config.price_per_image, _MONEY_DIGITS)

    def can_pay(self, key: str, amount: float) -> bool:
        balance = self._balances[key]
        return balance is None or amount <= balance + 10**-_MONEY_DIGITS

    def charge(self, key: str, amount: float) -> None:
        """Draw ``amount`` (the caller checked ``can_pay`` in the same step)."""
        balance = self._balances[key]
        if balance is not None:
            self._balances[key] = max(0.0, round(balance - amount, _MONEY_DIGITS))
        self._spent[key] = round(self._spent[key] + amount, _MONEY_DIGITS)

    def balance(self, key: str) -> float:
        """The live balance; for a key without a wallet limit ``UNLIMITED_BALANCE`` less what
        it spent (never refused), so that a client can still see what its jobs cost."""
        balance = self._balances[key]
        if balance is None:
            return round(UNLIMITED_BALANCE - self._spent[key], _MONEY_DIGITS)
        return balance

    def spent(self, key: str) -> float:
        return self._spent[key]

    def request_count_wait(self, key: str, now: float) -> float:
        """0 and the call is counted, or how many real seconds until one more is allowed.

        A sliding window of ``REQUEST_COUNT_WINDOW`` service seconds; throttled calls do not
        count, so a caller that retries too early is not locked out for longer.
        """
        window = self._config.scaled(REQUEST_COUNT_WINDOW)
        calls = self._calls.setdefault(key, collections.deque())
        while calls and calls[0] <= now - window:
            calls.popleft()
        if len(calls) >= REQUEST_COUNT_CALLS:
            return max(calls[0] + window - now, 1e-6)
        calls.append(now)
        return 0.0
