"""One submission at a time on a key the service has not answered yet, so a refused key
(or a base URL with nothing behind it) costs one submission, not one per queue slot."""

from __future__ import annotations

import anyio

__all__ = ["KeyProbe"]


class KeyProbe:
    """Per key: proven once the service answered a submission made with it as itself
    (accepted, queue full, a server error...). Until then a single submission is on the wire
    with it; the others wait for its answer."""

    def __init__(self) -> None:
        self._proven: set[int] = set()
        self._probing: dict[int, anyio.Event] = {}

    def turn(self, key: int) -> anyio.Event | bool:
        """True: go, and report the answer with :meth:`answered`; False: go (the key is
        proven); an event: wait for it (another submission is probing the key), then ask
        again."""
        if key in self._proven:
            return False
        event = self._probing.get(key)
        if event is not None:
            return event
        self._probing[key] = anyio.Event()
        return True

    async def wait(self, key: int) -> None:
        """Until the submission probing ``key`` (if one is on the wire) is answered."""
        event = self._probing.get(key)
        if event is not None:
            await event.wait()

    def answered(self, key: int, *, proven: bool) -> None:
        """The probe on ``key`` came back; ``proven`` when the answer was the service's own."""
        if proven:
            self._proven.add(key)
        event = self._probing.pop(key, None)
        if event is not None:
            event.set()
