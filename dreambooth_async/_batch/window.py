"""The queue-slot windows, one per API key: they live in :mod:`dreambooth_async._slots`, a
floor below the client, since single calls and every batch of a client share them."""

from __future__ import annotations

from .._slots import MIN_WAIT, Slot, SlotPool, SlotWindow, room_wait, wait_for_room

__all__ = ["MIN_WAIT", "Slot", "SlotPool", "SlotWindow", "room_wait", "wait_for_room"]
