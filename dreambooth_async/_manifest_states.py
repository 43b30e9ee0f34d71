"""What a manifest says of its items: :class:`ItemState`, the fold of an item's lines into
its state, and :class:`ManifestIndex`, every item's state in little memory (see
:mod:`._manifest` for the file itself: its header, its lines, appending them)."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeAlias

import attrs

from ._digests import DigestTable, text_digest

__all__ = ["ItemState", "ItemStatus", "ManifestIndex"]

#: The last recorded state of an item.
ItemStatus: TypeAlias = Literal[
    "pending", "submitting", "not_landed", "submitted", "done", "failed", "ambiguous"
]
_STATUSES = frozenset(
    ("pending", "submitting", "not_landed", "submitted", "done", "failed", "ambiguous")
)


@attrs.frozen(kw_only=True)
class ItemState:
    """What a manifest says about one item: its last state and what earlier lines established.

    ``job_id`` survives later lines (a ``failed`` after ``submitted`` keeps it), so a restart
    can tell a job that exists on the service from one that never did. ``key_index`` is the
    position (0-based) of the key that paid for the job, recorded when a batch runs with
    several keys (None: the first key), so that a restart fetches the job with that key.
    """

    key: str
    status: ItemStatus
    index: int | None = None
    job_id: str | None = None
    fetch_url: str | None = None
    files: tuple[str, ...] = ()
    output: tuple[str, ...] = ()
    seed: int | None = None
    error: str | None = None
    message: str | None = None
    key_index: int | None = None


_SCALARS = ("index", "job_id", "fetch_url", "seed", "error", "message", "key_index")
_LISTS = frozenset(("files", "output"))
_FOLDED = frozenset(_SCALARS) | _LISTS
_NEW_ATTEMPT = frozenset(("pending", "submitting", "not_landed"))
_ATTEMPT_ENDED = frozenset(("failed", "ambiguous", "not_landed"))


def _fold_fields(fields: dict[str, Any], record: Mapping[str, Any]) -> None:
    """Fold ``record`` into ``fields`` (an item's state as ItemState's keyword arguments,
    ``key`` aside): the fold, on a dict, which is cheaper than a new ItemState per line."""
    status = record["event"]
    if status in _NEW_ATTEMPT:
        # A new submission attempt: whatever an earlier attempt failed with is history.
        fields["error"] = fields["message"] = None
        if status == "submitting" and fields.get("status") in _ATTEMPT_ENDED:
            fields["job_id"] = fields["fetch_url"] = fields["key_index"] = None
    fields["status"] = status
    # Only the names this record has (a line holds two to four of them).
    for name in record.keys() & _FOLDED:
        value = record[name]
        if name in _LISTS:
            if isinstance(value, list):
                fields[name] = tuple(str(x) for x in value)
        elif value is not None:
            fields[name] = value


def _fields_of(state: ItemState) -> dict[str, Any]:
    fields = attrs.asdict(state, recurse=False)
    del fields["key"]
    return fields


def _fold(previous: ItemState | None, record: Mapping[str, Any]) -> ItemState:
    fields = _fields_of(previous) if previous is not None else {}
    _fold_fields(fields, record)
    return ItemState(key=str(record["key"]), **fields)


# Where a finished item's ``done`` line is: its offset in the file, the item's index (-1 for
# none) and how many outputs the line names (for the images budget).
_WHERE = struct.Struct("<QiI")


# to_bytes(): images counted in the done table, the kept items' JSON size.
_SAVED = struct.Struct("<qQ")
_FIELDS = frozenset(attrs.fields_dict(ItemState)) - {"key"}


class ManifestIndex(Mapping[str, ItemState]):
    """Every item's last state in a manifest, as :func:`read_manifest` folds them, in little
    memory: an item whose last line is ``done`` (nearly every item of a long run) is kept as
    32 bytes, a digest of its key and where its line is, and read back from the file when
    asked for; the rest as :class:`ItemState` s.

    A done item read back holds what its ``done`` line says (job id, files, outputs, seed) and
    its index; what earlier lines said and no later step reads of a finished item (the fetch
    URL, the paying key's position, an earlier attempt's error) is left out. Items whose done
    line leaves out what an earlier line said (no job id on it, say) are kept whole.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # Items whose last line is not done (or that are kept whole): ItemState's fields, and
        # their key's digest.
        self._open: dict[str, dict[str, Any]] = {}
        self._done = DigestTable(16, _WHERE.size)
        self._done_outputs = 0
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"<ManifestIndex {str(self.path)!r} items={len(self)} done={len(self._done)}>"

    # --- the fold -----------------------------------------------------------------------------

    def fold(self, record: Mapping[str, Any], offset: int) -> None:
        """Fold one record (its line at ``offset``) into its item's state."""
        key = record["key"]
        fields = self._open.get(key)
        if fields is None:
            digest = text_digest(key)
            fields = {"digest": digest}
            if self._done:
                where = self._done.get(digest)
                if where is not None:  # a line after done: rare, read the done line back
                    previous = self._read_done(key, where)
                    if previous is not None:
                        fields.update(_fields_of(previous))
                    self._forget(digest, where)
            self._open[key] = fields
        _fold_fields(fields, record)
        if (
            record["event"] == "done"
            and fields.get("job_id") == record.get("job_id")
            and fields.get("seed") == record.get("seed")
        ):
            del self._open[key]
            outputs = len(fields.get("output", ()))
            index = fields.get("index")
            where = _WHERE.pack(offset, index if isinstance(index, int) else -1, outputs)
            self._done.put(fields["digest"], where)
            self._done_outputs += max(1, outputs)

    def _state(self, key: str, fields: Mapping[str, Any]) -> ItemState:
        return ItemState(key=key, **{k: v for k, v in fields.items() if k != "digest"})

    def _forget(self, digest: bytes, where: bytes) -> None:
        self._done.discard(digest)
        self._done_outputs -= max(1, _WHERE.unpack(where)[2])

    # --- saved and loaded (the sidecar, :mod:`._manifest_sidecar`) -----------------------------

    def to_bytes(self) -> list[bytes | bytearray]:
        """Everything the fold holds, as pieces of bytes to write one after the other, for
        :meth:`from_bytes`: the items kept whole as JSON, the done items' table as it is in
        memory."""
        kept = [
            [key, {k: v for k, v in fields.items() if k != "digest"}]
            for key, fields in self._open.items()
        ]
        text = json.dumps(kept, separators=(",", ":")).encode("utf-8")
        return [_SAVED.pack(self._done_outputs, len(text)), text, *self._done.dump()]

    @classmethod
    def from_bytes(
        cls, path: str | os.PathLike[str], read: Callable[[int], bytearray]
    ) -> ManifestIndex:
        """The fold :meth:`to_bytes` saved, read with ``read(n)`` (exactly ``n`` bytes, or
        it raises ValueError), of the manifest at ``path``; ValueError when it is not one."""
        done_outputs, text_size = _SAVED.unpack(read(_SAVED.size))
        index = cls(path)
        kept = json.loads(read(text_size))
        if not isinstance(kept, list):
            raise ValueError("the saved fold's items are not a list")
        for key, fields in kept:
            if not isinstance(key, str) or not isinstance(fields, dict):
                raise ValueError("a saved item is not a key and its fields")
            if fields.get("status") not in _STATUSES or not fields.keys() <= _FIELDS:
                raise ValueError(f"the saved item {key!r} has fields of no item state")
            for name in _LISTS & fields.keys():
                fields[name] = tuple(fields[name])  # as the fold keeps them
            index._open[key] = {"digest": text_digest(key), **fields}
        index._done = DigestTable.load(read, 16, _WHERE.size)
        index._done_outputs = done_outputs
        return index

    # --- reading done lines back --------------------------------------------------------------

    def _line_at(self, offset: int) -> dict[str, Any]:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        chunks: list[bytes] = []
        position = offset
        while True:
            chunk = os.pread(self._fd, 8192, position)
            end = chunk.find(b"\n")
            if end != -1 or not chunk:
                chunks.append(chunk if end == -1 else chunk[:end])
                break
            chunks.append(chunk)
            position += len(chunk)
        record = json.loads(b"".join(chunks))
        if not isinstance(record, dict):  # pragma: no cover - the file changed under us
            raise ValueError(f"{self.path}: the line at byte {offset} is not a record")
        return record

    def _read_done(self, key: str, where: bytes) -> ItemState | None:
        offset, index, _outputs = _WHERE.unpack(where)
        record = self._line_at(offset)
        if record.get("key") != key:  # two keys with one digest: a chance in 2**128
            return None
        state = _fold(None, record)
        return attrs.evolve(state, index=index) if index >= 0 else state

    def close(self) -> None:
        """Close the descriptor that reads done lines back (again is fine)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    # --- the mapping --------------------------------------------------------------------------

    def status(self, key: str) -> ItemStatus | None:
        """The last status of ``key`` (None: not in the manifest), without reading any line."""
        fields = self._open.get(key)
        if fields is not None:
            status: ItemStatus = fields["status"]
            return status
        if self._done and self._done.get(text_digest(key)) is not None:
            return "done"
        return None

    def index_of(self, key: str) -> int | None:
        """The item index of ``key`` (its position in the input), without reading any line."""
        fields = self._open.get(key)
        if fields is not None:
            index = fields.get("index")
            return index if isinstance(index, int) else None
        if self._done:
            where = self._done.get(text_digest(key))
            if where is not None:
                found: int = _WHERE.unpack(where)[1]
                return found if found >= 0 else None
        return None

    def unsettled(self) -> list[ItemState]:
        """The items kept whole, as :class:`ItemState` s: every item whose last state is not
        done (and the rare done item whose line leaves out what an earlier one said)."""
        return [self._state(key, fields) for key, fields in self._open.items()]

    def __getitem__(self, key: str) -> ItemState:
        fields = self._open.get(key)
        if fields is not None:
            return self._state(key, fields)
        if self._done:
            where = self._done.get(text_digest(key))
            if where is not None:
                found = self._read_done(key, where)
                if found is not None:
                    return found
        raise KeyError(key)

    def __len__(self) -> int:
        return len(self._open) + len(self._done)

    def __iter__(self) -> Iterator[str]:
        yield from list(self._open)
        for where in self._done.payloads():
            yield str(self._line_at(_WHERE.unpack(where)[0])["key"])

    def images_paid(self) -> int:
        """Images earlier runs paid for, as ``images_paid`` counts them over every state (one
        per job still in flight), without reading the done lines back."""
        in_states = sum(
            max(1, len(f.get("output", ()))) if f["status"] == "done" else 1
            for f in self._open.values()
            if f["status"] in ("done", "submitted")
        )
        return self._done_outputs + in_states
