"""Reading a prompts file: plain text (a prompt a line), JSONL (an object a line) or CSV (a
header with a ``prompt`` column), each row merged with the defaults into a request.

A file is read twice, both times streaming: once to check every row before anything is sent
(an error names its line), then lazily as the batch pulls requests.
"""

from __future__ import annotations

import array
import csv
import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from .._batch import request_key
from .._convert import structure_field
from .._errors import RequestValidationError
from .._models import GenerationRequest
from .._shard import shard_of
from .common import MAX_LINE_BYTES, InputError
from .options import KINDS, REQUEST_FIELDS

__all__ = ["PromptSource", "detect_format"]


def detect_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return "text"


def _physical_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text without the line end), read one line at a time."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with handle:
        number = 0
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise InputError(f"{path}:{number}: line longer than {MAX_LINE_BYTES} bytes")
            if b"\0" in raw:
                raise InputError(f"{path}:{number}: contains NUL bytes (is this a binary file?)")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(
                    f"{path}:{number}: not UTF-8 text (is this a binary file?)"
                ) from None
            if number == 1:
                text = text.removeprefix("\ufeff")
            yield number, text.rstrip("\r\n")


@attrs.frozen
class _Row:
    line: int
    fields: Mapping[str, Any]


def _rows(path: Path, fmt: str) -> Iterator[_Row]:
    if fmt == "text":
        for number, text in _physical_lines(path):
            prompt = text.strip()
            # Blank lines and "# ..." comment lines are skipped; numbers stay physical.
            if prompt and not prompt.startswith("#"):
                yield _Row(number, {"prompt": prompt})
    elif fmt == "jsonl":
        for number, text in _physical_lines(path):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise InputError(f"{path}:{number}: not valid JSON ({exc})") from None
            except RecursionError:
                # "[[[[..." fits in a line and is deeper than the decoder goes.
                raise InputError(f"{path}:{number}: not valid JSON (nested too deeply)") from None
            if not isinstance(value, dict):
                raise InputError(f"{path}:{number}: expected a JSON object per line")
            yield _Row(number, value)
    elif fmt == "csv":
        yield from _csv_rows(path)
    else:  # pragma: no cover - argparse restricts it
        raise InputError(f"unknown format {fmt!r}")


def _csv_rows(path: Path) -> Iterator[_Row]:
    lines = _physical_lines(path)
    reader = csv.reader((text for _number, text in lines), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        names = [name.strip() for name in header]
        if "prompt" not in names:
            raise InputError(f"{path}:1: the CSV header has no 'prompt' column")
        if len(set(names)) != len(names):
            raise InputError(f"{path}:1: the CSV header repeats a column")
        for values in reader:
            number = reader.line_num
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(names):
                raise InputError(
                    f"{path}:{number}: {len(values)} fields, the header has {len(names)}"
                )
            yield _Row(number, {n: v for n, v in zip(names, values, strict=True) if v != ""})
    except csv.Error as exc:
        raise InputError(f"{path}:{reader.line_num}: broken CSV ({exc})") from None


class _SeedDeriver:
    """Deterministic seeds for rows that set none, so reruns reproduce and metadata says which
    seed made each image. Repeats of the same row get different seeds."""

    def __init__(self) -> None:
        self._seen: dict[bytes, int] = {}

    def __call__(self, fields: Mapping[str, Any]) -> int:
        text = json.dumps(fields, sort_keys=True, default=str).encode()
        digest = hashlib.blake2b(text, digest_size=8).digest()
        occurrence = self._seen.get(digest, 0) + 1
        self._seen[digest] = occurrence
        seeded = hashlib.blake2b(digest + occurrence.to_bytes(8, "big"), digest_size=4)
        return int.from_bytes(seeded.digest(), "big")


@attrs.define
class PromptSource:
    """A prompts file plus the defaults: validates in one pass, then yields requests lazily."""

    path: Path
    fmt: str
    defaults: Mapping[str, Any]
    kind: str | None
    derive_seeds: bool
    #: (I, N): only the rows of shard I of N (``--shard``), split by the key the batch uses.
    shard: tuple[int, int] | None = None
    count: int = 0
    lines: array.array[int] = attrs.field(factory=lambda: array.array("L"))

    def _request(self, row: _Row, seeds: _SeedDeriver) -> tuple[str | None, GenerationRequest]:
        where = f"{self.path}:{row.line}"
        fields = dict(row.fields)
        key = fields.pop("key", None)
        if key is not None and (not isinstance(key, str | int) or not str(key).strip()):
            raise InputError(f"{where}: key must be non-empty text")
        kind_name = fields.pop("kind", None) or self.kind
        unknown = sorted(set(fields) - set(REQUEST_FIELDS))
        if unknown:
            raise InputError(f"{where}: unknown field {unknown[0]!r}")
        if kind_name is None:
            if "mask_image" in fields or "mask_image" in self.defaults:
                kind_name = "inpaint"
            elif "init_image" in fields or "init_image" in self.defaults:
                kind_name = "img2img"
            else:
                kind_name = "text2img"
        cls = KINDS.get(str(kind_name))
        if cls is None:
            raise InputError(f"{where}: kind must be one of {', '.join(sorted(KINDS))}")
        accepted = {f.name for f in attrs.fields(cls)}
        for name in fields:
            if name not in accepted:
                raise InputError(f"{where}: {name} does not apply to {kind_name} requests")
        merged = {k: v for k, v in self.defaults.items() if k in accepted}
        try:
            merged.update(
                {name: structure_field(cls, name, value) for name, value in fields.items()}
            )
        except ValueError as exc:
            raise InputError(f"{where}: {exc}") from None
        if "model_id" not in merged:
            raise InputError(f"{where}: no model_id (pass --model-id or add a model_id column)")
        if not str(merged.get("prompt", "")).strip():
            raise InputError(f"{where}: empty prompt")
        if merged.get("seed") is None and self.derive_seeds:
            merged["seed"] = seeds({"kind": kind_name, **merged})
        try:
            request = cls(**merged)
        except RequestValidationError as exc:
            raise InputError(f"{where}: {exc}") from None
        except TypeError as exc:
            raise InputError(f"{where}: {exc}") from None
        return (str(key) if key is not None else None), request

    def validate(self) -> None:
        """Read the whole file once (streaming), checking every row; raise InputError."""
        seeds = _SeedDeriver()
        keys: set[str] = set()
        self.count = 0
        self.lines = array.array("L")
        rows = 0
        for row in _rows(self.path, self.fmt):
            key, request = self._request(row, seeds)
            if key is not None:
                if key in keys:
                    raise InputError(f"{self.path}:{row.line}: duplicate key {key!r}")
                keys.add(key)
            rows += 1
            if self._in_shard(key, request):
                self.count += 1
                self.lines.append(row.line)
        if rows == 0:
            raise InputError(f"{self.path}: no prompts in the file")

    def requests(self) -> Iterator[GenerationRequest | tuple[str, GenerationRequest]]:
        """The requests, read lazily (the batch pulls them as slots free up)."""
        seeds = _SeedDeriver()
        for row in _rows(self.path, self.fmt):
            # Seeds are derived from every row, in the shard or not, so a shard's requests
            # are the very ones an unsharded run would send.
            key, request = self._request(row, seeds)
            if self._in_shard(key, request):
                yield request if key is None else (key, request)

    def _in_shard(self, key: str | None, request: GenerationRequest) -> bool:
        if self.shard is None:
            return True
        index, count = self.shard
        return shard_of(key if key is not None else request_key(request), count) == index

    def line_of(self, index: int) -> int | None:
        return self.lines[index] if 0 <= index < len(self.lines) else None
