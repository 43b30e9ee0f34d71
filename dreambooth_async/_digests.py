"""Compact tables of fixed-size digests, for what a run keeps per item over a million items.

A Python ``set`` or ``dict`` of keys costs about a hundred bytes per entry (the key object,
its hash-table slot, the value object). Planning keeps an entry for every prompt (which
requests were seen, to number repeats; which seeds were derived; what the manifest holds), so
these tables keep the digests themselves, packed: 65,536 ``bytearray`` buckets chosen by the
digest's first two bytes, each a run of fixed-size records (the rest of the digest, then an
optional payload) searched with ``bytearray.find``, which runs in C. About the digest's size
per entry, and a lookup a fraction of a microsecond.

Digests are hashes (uniform bytes); a collision of two different keys on 8 bytes is a chance
in 2**64 per pair, and every user here tolerates one: it numbers a repeat that is not one, or
reads a manifest line whose key it checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

__all__ = ["DigestCounter", "DigestTable", "TextSet", "text_digest"]

_BUCKETS = 1 << 16


class DigestTable:
    """A map from ``size``-byte digests to ``payload``-byte values (0: a set)."""

    __slots__ = ("_buckets", "_count", "_payload", "_record", "_size")

    def __init__(self, size: int, payload: int = 0) -> None:
        if size < 4:
            raise ValueError("digests of at least 4 bytes")
        self._size = size
        self._payload = payload
        self._record = size - 2 + payload
        self._buckets: list[bytearray | None] = [None] * _BUCKETS
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _find(self, bucket: bytearray, rest: bytes) -> int:
        record = self._record
        at = bucket.find(rest)
        # A match that does not start on a record's boundary is a coincidence inside
        # another record: look further.
        while at != -1 and at % record:
            at = bucket.find(rest, at + 1)
        return at

    def get(self, digest: bytes) -> bytes | None:
        """The payload stored for ``digest`` (``b""`` in a set), or None."""
        bucket = self._buckets[(digest[0] << 8) | digest[1]]
        if bucket is None:
            return None
        rest = digest[2 : self._size]
        at = self._find(bucket, rest)
        if at == -1:
            return None
        start = at + self._size - 2
        return bytes(bucket[start : start + self._payload])

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, bytes) and self.get(digest) is not None

    def put(self, digest: bytes, payload: bytes = b"") -> bool:
        """Store ``payload`` for ``digest``; True when the digest was not there before."""
        if len(payload) != self._payload:
            raise ValueError(f"a payload of {self._payload} bytes")
        number = (digest[0] << 8) | digest[1]
        bucket = self._buckets[number]
        rest = digest[2 : self._size]
        if bucket is None:
            self._buckets[number] = bytearray(rest + payload)
            self._count += 1
            return True
        at = self._find(bucket, rest)
        if at == -1:
            bucket += rest
            bucket += payload
            self._count += 1
            return True
        start = at + self._size - 2
        bucket[start : start + self._payload] = payload
        return False

    def add(self, digest: bytes) -> bool:
        """A set's ``add``: True when ``digest`` is new (the table has no payload)."""
        number = (digest[0] << 8) | digest[1]
        bucket = self._buckets[number]
        rest = digest[2 : self._size]
        if bucket is None:
            self._buckets[number] = bytearray(rest)
        elif self._find(bucket, rest) == -1:
            bucket += rest
        else:
            return False
        self._count += 1
        return True

    def payloads(self) -> Iterator[bytes]:
        """Every payload, in no particular order."""
        record, start = self._record, self._size - 2
        for bucket in self._buckets:
            if bucket is not None:
                for at in range(0, len(bucket), record):
                    yield bytes(bucket[at + start : at + record])

    def discard(self, digest: bytes) -> None:
        """Forget ``digest`` (nothing when it is not there)."""
        number = (digest[0] << 8) | digest[1]
        bucket = self._buckets[number]
        if bucket is None:
            return
        at = self._find(bucket, digest[2 : self._size])
        if at != -1:
            del bucket[at : at + self._record]
            self._count -= 1


class DigestCounter:
    """How many times each digest was seen: a :class:`DigestTable` of the digests seen, and a
    dict for the few seen more than once."""

    __slots__ = ("_more", "_seen")

    def __init__(self, size: int = 8) -> None:
        self._seen = DigestTable(size)
        self._more: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, digest: bytes) -> int:
        """Count ``digest`` once more; returns its count now (1 the first time)."""
        if self._seen.add(digest):
            return 1
        count = self._more.get(digest, 1) + 1
        self._more[digest] = count
        return count


def text_digest(text: str) -> bytes:
    """A 16-byte digest of ``text`` (what :class:`TextSet` keeps of it)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class TextSet:
    """A set of strings that keeps 16 bytes of each (a digest), not the string: ``add``,
    ``in`` and ``len``; it cannot list its members."""

    __slots__ = ("_table",)

    def __init__(self, texts: Iterable[str] = ()) -> None:
        self._table = DigestTable(16)
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and self._table.get(text_digest(text)) is not None

    def add(self, text: str) -> bool:
        """Add ``text``; True when it was not there."""
        return self._table.add(text_digest(text))
