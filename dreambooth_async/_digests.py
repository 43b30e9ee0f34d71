"""Compact tables of fixed-size digests, for what a run keeps per item over a million items.

A Python ``set`` or ``dict`` of keys costs about a hundred bytes per entry (the key object,
its hash-table slot, the value object). Planning keeps an entry for every prompt (which
requests were seen, to number repeats; which seeds were derived; what the manifest holds), so
these tables keep the digests themselves, packed: up to 65,536 ``bytearray`` buckets chosen by
the digest's first two bytes, each a run of fixed-size records (the digest, then an optional
payload) searched with ``bytearray.find``, which runs in C. About the digest's size
per entry, and a lookup a fraction of a microsecond.

Digests are hashes (uniform bytes); a collision of two different keys on 8 bytes is a chance
in 2**64 per pair, and every user here tolerates one: it numbers a repeat that is not one, or
reads a manifest line whose key it checks.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator

__all__ = ["DigestCounter", "DigestTable", "TextSet", "text_digest"]

#: Buckets start few (a small run pays a few kilobytes) and grow sixteenfold, up to 65,536,
#: whenever they hold this many records each on average.
_FILL = 32
_MAX_BITS = 16
# dump(): digest size, payload size, bucket bits, record count.
_DUMP_HEAD = struct.Struct("<BBBQ")


class DigestTable:
    """A map from ``size``-byte digests to ``payload``-byte values (0: a set)."""

    __slots__ = ("_bits", "_buckets", "_count", "_payload", "_record", "_shift", "_size")

    def __init__(self, size: int, payload: int = 0) -> None:
        if size < 4:
            raise ValueError("digests of at least 4 bytes")
        self._size = size
        self._payload = payload
        self._record = size + payload
        self._count = 0
        self._resize(8)

    def _resize(self, bits: int) -> None:
        old = getattr(self, "_buckets", [])
        self._bits = bits
        self._shift = 16 - bits
        self._buckets: list[bytearray | None] = [None] * (1 << bits)
        record = self._record
        for bucket in old:
            if bucket is not None:
                for at in range(0, len(bucket), record):
                    self._append(bytes(bucket[at : at + record]))

    def _number(self, digest: bytes) -> int:
        return ((digest[0] << 8) | digest[1]) >> self._shift

    def _append(self, record: bytes) -> None:
        number = self._number(record)
        bucket = self._buckets[number]
        if bucket is None:
            self._buckets[number] = bytearray(record)
        else:
            bucket += record

    def _grown(self) -> None:
        self._count += 1
        if self._bits < _MAX_BITS and self._count > _FILL << self._bits:
            self._resize(min(_MAX_BITS, self._bits + 4))

    def __len__(self) -> int:
        return self._count

    def _find(self, bucket: bytearray, digest: bytes) -> int:
        record = self._record
        at = bucket.find(digest)
        # A match that does not start on a record's boundary is a coincidence inside
        # another record: look further.
        while at != -1 and at % record:
            at = bucket.find(digest, at + 1)
        return at

    def get(self, digest: bytes) -> bytes | None:
        """The payload stored for ``digest`` (``b""`` in a set), or None."""
        digest = digest[: self._size]
        bucket = self._buckets[self._number(digest)]
        if bucket is None:
            return None
        at = self._find(bucket, digest)
        if at == -1:
            return None
        start = at + self._size
        return bytes(bucket[start : start + self._payload])

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, bytes) and self.get(digest) is not None

    def put(self, digest: bytes, payload: bytes = b"") -> bool:
        """Store ``payload`` for ``digest``; True when the digest was not there before."""
        if len(payload) != self._payload:
            raise ValueError(f"a payload of {self._payload} bytes")
        digest = digest[: self._size]
        bucket = self._buckets[self._number(digest)]
        at = -1 if bucket is None else self._find(bucket, digest)
        if at == -1:
            self._append(digest + payload)
            self._grown()
            return True
        assert bucket is not None
        start = at + self._size
        bucket[start : start + self._payload] = payload
        return False

    def add(self, digest: bytes) -> bool:
        """A set's ``add``: True when ``digest`` is new (the table has no payload)."""
        digest = digest[: self._size]
        number = self._number(digest)
        bucket = self._buckets[number]
        if bucket is None:
            self._buckets[number] = bytearray(digest)
        elif self._find(bucket, digest) == -1:
            bucket += digest
        else:
            return False
        self._grown()
        return True

    def payloads(self) -> Iterator[bytes]:
        """Every payload, in no particular order."""
        record, start = self._record, self._size
        for bucket in self._buckets:
            if bucket is not None:
                for at in range(0, len(bucket), record):
                    yield bytes(bucket[at + start : at + record])

    def dump(self) -> list[bytes | bytearray]:
        """The table as pieces of bytes to write one after the other, for :meth:`load`: its
        bucket count's bits, each bucket's length and the buckets themselves (the memory as it
        is, not copied)."""
        lengths = array("I", (0 if b is None else len(b) for b in self._buckets))
        if sys.byteorder == "big":  # little-endian on disk, as the struct fields
            lengths.byteswap()
        head = _DUMP_HEAD.pack(self._size, self._payload, self._bits, self._count)
        return [head, lengths.tobytes(), *(b for b in self._buckets if b)]

    @classmethod
    def load(cls, read: Callable[[int], bytearray], size: int, payload: int = 0) -> DigestTable:
        """The table :meth:`dump` wrote, read with ``read(n)`` (exactly ``n`` bytes, or it
        raises ValueError; each bucket is read into its own memory) for digests of ``size``
        bytes and payloads of ``payload``; ValueError when that is not one."""
        got_size, got_payload, bits, count = _DUMP_HEAD.unpack(read(_DUMP_HEAD.size))
        if (got_size, got_payload) != (size, payload) or not 0 < bits <= _MAX_BITS:
            raise ValueError("not a table of these digests")
        lengths = array("I")
        lengths.frombytes(read(lengths.itemsize << bits))
        if sys.byteorder == "big":
            lengths.byteswap()
        record = size + payload
        if sum(lengths) != count * record or any(n % record for n in lengths):
            raise ValueError("the digest table's count does not add up")
        table = cls(size, payload)
        table._bits = bits
        table._shift = 16 - bits
        table._buckets = [read(length) if length else None for length in lengths]
        table._count = count
        return table

    def discard(self, digest: bytes) -> None:
        """Forget ``digest`` (nothing when it is not there)."""
        digest = digest[: self._size]
        bucket = self._buckets[self._number(digest)]
        if bucket is None:
            return
        at = self._find(bucket, digest)
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
