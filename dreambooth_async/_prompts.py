"""Reading a prompts file: plain text (a prompt a line), JSONL (an object a line) or CSV (a
header with a ``prompt`` column), each row merged with the defaults into a request.

The command line and :func:`read_prompts` share this one reader. A file is read twice, both
times streaming: once to check every row before anything is sent (an error names the file and
its physical line), then lazily as the batch pulls requests.
"""

from __future__ import annotations

import array
import csv
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from ._batch import BatchInput, request_key
from ._convert import REQUEST_CLASSES, structure_field
from ._digests import DigestCounter, TextSet
from ._errors import PromptFileError, RequestValidationError
from ._models import GenerationRequest, Inpaint
from ._request_drafts import RequestDraft
from ._shard import shard_of

__all__ = [
    "KINDS",
    "MAX_LINE_BYTES",
    "REQUEST_FIELDS",
    "PromptFile",
    "PromptFormat",
    "detect_format",
    "read_prompts",
]

#: Longest line a prompts file may have (bytes): a prompt, or a JSONL row with a few fields.
MAX_LINE_BYTES = 1024 * 1024
#: The request class of each ``kind`` (a column, ``--kind``, or ``read_prompts(kind=...)``).
KINDS = REQUEST_CLASSES
#: Every request field a prompts file row or a default may set (``extra`` is not one).
REQUEST_FIELDS: tuple[str, ...] = tuple(f.name for f in attrs.fields(Inpaint) if f.name != "extra")

PromptFormat = Literal["auto", "text", "jsonl", "csv"]
"""How to read a prompts file; ``"auto"`` goes by the suffix (``.jsonl``/``.ndjson``,
``.csv``, anything else text)."""

_FORMATS = ("auto", "text", "jsonl", "csv")


def detect_format(path: Path, declared: str) -> str:
    """The format to read ``path`` in: ``declared``, or by the suffix when it is ``"auto"``."""
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
        raise PromptFileError(path, None, f"cannot read: {exc.strerror or exc}") from None
    with handle:
        number = 0
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise PromptFileError(path, number, f"line longer than {MAX_LINE_BYTES} bytes")
            if b"\0" in raw:
                raise PromptFileError(path, number, "contains NUL bytes (is this a binary file?)")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise PromptFileError(
                    path, number, "not UTF-8 text (is this a binary file?)"
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
                raise PromptFileError(path, number, f"not valid JSON ({exc})") from None
            except RecursionError:
                # "[[[[..." fits in a line and is deeper than the decoder goes.
                raise PromptFileError(path, number, "not valid JSON (nested too deeply)") from None
            if not isinstance(value, dict):
                raise PromptFileError(path, number, "expected a JSON object per line")
            yield _Row(number, value)
    elif fmt == "csv":
        yield from _csv_rows(path)
    else:
        raise PromptFileError(path, None, f"unknown format {fmt!r}")


def _csv_rows(path: Path) -> Iterator[_Row]:
    lines = _physical_lines(path)
    reader = csv.reader((text for _number, text in lines), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        names = [name.strip() for name in header]
        if "prompt" not in names:
            raise PromptFileError(path, 1, "the CSV header has no 'prompt' column")
        if len(set(names)) != len(names):
            raise PromptFileError(path, 1, "the CSV header repeats a column")
        for values in reader:
            number = reader.line_num
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(names):
                raise PromptFileError(
                    path, number, f"{len(values)} fields, the header has {len(names)}"
                )
            yield _Row(number, {n: v for n, v in zip(names, values, strict=True) if v != ""})
    except csv.Error as exc:
        raise PromptFileError(path, reader.line_num, f"broken CSV ({exc})") from None


class _SeedDeriver:
    """Deterministic seeds for rows that set none, so reruns reproduce and metadata says which
    seed made each image. Repeats of the same row get different seeds."""

    def __init__(self) -> None:
        # 8 bytes a row (not a dict entry of a hundred): a million prompts are planned.
        self._seen = DigestCounter(8)

    def __call__(self, fields: Mapping[str, Any]) -> int:
        text = json.dumps(fields, sort_keys=True, default=str).encode()
        digest = hashlib.blake2b(text, digest_size=8).digest()
        occurrence = self._seen.add(digest)
        seeded = hashlib.blake2b(digest + occurrence.to_bytes(8, "big"), digest_size=4)
        return int.from_bytes(seeded.digest(), "big")


class RowDraft(RequestDraft):
    """A row's request, not built yet (:class:`~._request_drafts.RequestDraft`, ``origin``
    the file and the row's line): what is wrong with it is raised as the
    :class:`PromptFileError` of its line, as building it in :meth:`PromptFile.checked`
    raises it."""

    __slots__ = ()

    def _failure(self, exc: Exception) -> Exception:
        path, line = self.origin
        return PromptFileError(path, line, str(exc))


@attrs.define(eq=False)
class PromptFile:
    """A prompts file and the defaults its rows are merged with, as :func:`read_prompts`
    returns it (checked).

    Iterating yields one request per row (a ``(key, request)`` pair when the row has a ``key``
    field), read lazily from the file each time, so it can go straight into
    ``client.map()``; ``len()`` is the number of requests.
    """

    path: Path
    #: ``"text"``, ``"jsonl"`` or ``"csv"``.
    format: str
    defaults: Mapping[str, Any] = attrs.field(factory=dict)
    #: The request class for every row without a ``kind`` field; None picks by the fields.
    kind: str | None = None
    #: Give rows that set no seed a deterministic one (as the command line does).
    derive_seeds: bool = True
    #: (I, N): only the rows of shard I of N, split by the key the batch uses.
    shard: tuple[int, int] | None = None
    #: How an error about a missing ``model_id`` says to give one.
    model_id_hint: str = attrs.field(default="defaults={'model_id': ...}", repr=False)
    _count: int = attrs.field(default=0, init=False, repr=False)
    # An array of C longs: a million rows' line numbers in a few MB.
    _lines: Sequence[int] = attrs.field(factory=lambda: array.array("L"), init=False, repr=False)

    def _error(self, line: int, reason: str) -> PromptFileError:
        return PromptFileError(self.path, line, reason)

    def _request(self, row: _Row, seeds: _SeedDeriver) -> tuple[str | None, GenerationRequest]:
        key, cls, merged = self._arguments(row, seeds)
        return key, self._build(row.line, cls, merged)

    def _build(self, line: int, cls: type[GenerationRequest], merged: Any) -> GenerationRequest:
        try:
            return cls(**merged)
        except RequestValidationError as exc:
            raise self._error(line, str(exc)) from None
        except TypeError as exc:
            raise self._error(line, str(exc)) from None

    def _arguments(
        self, row: _Row, seeds: _SeedDeriver
    ) -> tuple[str | None, type[GenerationRequest], dict[str, Any]]:
        """The row's key (None: none given), request class and the arguments to build the
        request with; raises PromptFileError for what it finds wrong before building."""
        fields = dict(row.fields)
        key = fields.pop("key", None)
        if key is not None and (not isinstance(key, str | int) or not str(key).strip()):
            raise self._error(row.line, "key must be non-empty text")
        kind_name = fields.pop("kind", None) or self.kind
        unknown = sorted(set(fields) - set(REQUEST_FIELDS))
        if unknown:
            raise self._error(row.line, f"unknown field {unknown[0]!r}")
        if kind_name is None:
            if "mask_image" in fields or "mask_image" in self.defaults:
                kind_name = "inpaint"
            elif "init_image" in fields or "init_image" in self.defaults:
                kind_name = "img2img"
            else:
                kind_name = "text2img"
        cls = KINDS.get(str(kind_name))
        if cls is None:
            raise self._error(row.line, f"kind must be one of {', '.join(sorted(KINDS))}")
        accepted = {f.name for f in attrs.fields(cls)}
        for name in fields:
            if name not in accepted:
                raise self._error(row.line, f"{name} does not apply to {kind_name} requests")
        merged = {k: v for k, v in self.defaults.items() if k in accepted}
        try:
            merged.update(
                {name: structure_field(cls, name, value) for name, value in fields.items()}
            )
        except ValueError as exc:
            raise self._error(row.line, str(exc)) from None
        if "model_id" not in merged:
            raise self._error(
                row.line, f"no model_id (pass {self.model_id_hint} or add a model_id column)"
            )
        if not str(merged.get("prompt", "")).strip():
            raise self._error(row.line, "empty prompt")
        if merged.get("seed") is None and self.derive_seeds:
            merged["seed"] = seeds({"kind": kind_name, **merged})
        return (str(key) if key is not None else None), cls, merged

    def check(self) -> None:
        """Read the whole file once (streaming), checking every row.

        :raises PromptFileError: naming the file and line of the first bad row.
        """
        lines = array.array("L", (line for line, _ in self._checked_rows()))
        self._count, self._lines = len(lines), lines

    def __iter__(self) -> Iterator[BatchInput]:
        seeds = _SeedDeriver()
        for row in _rows(self.path, self.format):
            # Seeds are derived from every row, in the shard or not, so a shard's requests
            # are the very ones an unsharded run would send.
            key, request = self._request(row, seeds)
            if self._in_shard(key, request):
                yield request if key is None else (key, request)

    def checked(self) -> Iterator[BatchInput]:
        """The requests as iterating gives them, with what :meth:`check` refuses refused as
        they are read (a repeated key; no rows at all, at the end): for a caller that reads
        the file once, such as the dry run.

        :raises PromptFileError: naming the file and line of the first bad row.
        """
        for _, item in self._checked_rows():
            yield item

    def _checked_rows(self) -> Iterator[tuple[int, BatchInput]]:
        """(line, request or (key, request)) of each row in the shard, every row checked as
        it is read; what :meth:`check` refuses, refused."""
        seeds = _SeedDeriver()
        keys = TextSet()
        rows = 0
        for row in _rows(self.path, self.format):
            key, request = self._request(row, seeds)
            if key is not None and not keys.add(key):
                raise self._error(row.line, f"duplicate key {key!r}")
            rows += 1
            if self._in_shard(key, request):
                yield row.line, request if key is None else (key, request)
        if rows == 0:
            raise PromptFileError(self.path, None, "no prompts in the file")

    def drafts(self) -> Iterator[RowDraft | tuple[str, RowDraft]]:
        """What :meth:`checked` yields, each request as a draft not built yet (its class and
        arguments: ``digest()`` its key's, ``check()`` raises what building it would,
        ``build()`` the request), for a plan that keys and checks every row but builds only
        the requests it would send (the dry run). Refused as :meth:`checked` refuses them: a
        row that makes no request (when its draft is keyed, checked or built; at once for a
        row outside ``shard``), a repeated key, no rows at all.

        :raises PromptFileError: naming the file and line of the first bad row.
        """
        seeds = _SeedDeriver()
        keys = TextSet()
        rows = 0
        for row in _rows(self.path, self.format):
            key, cls, merged = self._arguments(row, seeds)
            draft = RowDraft(cls, merged, (self.path, row.line))
            if key is not None and not keys.add(key):
                draft.check()  # what is wrong with the row itself is said first, as in checked()
                raise self._error(row.line, f"duplicate key {key!r}")
            rows += 1
            if self.shard is not None:
                index, count = self.shard
                if shard_of(key if key is not None else draft.digest().hex(), count) != index:
                    draft.check()
                    continue
            yield draft if key is None else (key, draft)
        if rows == 0:
            raise PromptFileError(self.path, None, "no prompts in the file")

    def __len__(self) -> int:
        return self._count

    def _in_shard(self, key: str | None, request: GenerationRequest) -> bool:
        if self.shard is None:
            return True
        index, count = self.shard
        return shard_of(key if key is not None else request_key(request), count) == index

    def line_of(self, index: int) -> int | None:
        """The file's line of the ``index``-th request (0-based), once checked."""
        return self._lines[index] if 0 <= index < len(self._lines) else None


def read_prompts(
    path: str | os.PathLike[str],
    *,
    defaults: Mapping[str, Any] | None = None,
    format: PromptFormat = "auto",
    kind: str | None = None,
    derive_seeds: bool = True,
) -> PromptFile:
    """Read a prompts file exactly as ``dreambooth-async generate`` does, for ``client.map()``.

    A text file has a prompt a line (surrounding whitespace dropped; blank lines and lines
    starting with ``#`` skipped); ``.jsonl`` an object a line; ``.csv`` a header with a
    ``prompt`` column. A row's fields (``model_id``, ``width``, ``seed``, ``init_image``...,
    ``kind``, and ``key`` to name the item) override ``defaults``; rows that set no ``seed``
    get a deterministic one unless ``derive_seeds=False``. ``kind`` picks the request class
    (``text2img``, ``img2img``, ``inpaint``); by default a row with ``mask_image`` is an
    inpainting, one with ``init_image`` image to image.

    The whole file is checked before this returns (streaming, so any size will do); the
    requests are then read again lazily as they are iterated::

        prompts = dba.read_prompts("prompts.txt", defaults={"model_id": "midjourney"})
        async with client.map(prompts, manifest="run.jsonl") as batch: ...

    :raises PromptFileError: a bad row, naming the file and line; nothing has been sent.
    :raises RequestValidationError: a default out of its limits, or not a request field.
    """
    if format not in _FORMATS:
        raise RequestValidationError("format", format, f"one of {', '.join(_FORMATS)}")
    values = dict(defaults or {})
    unknown = sorted(set(values) - set(REQUEST_FIELDS))
    if unknown:
        raise RequestValidationError(
            f"defaults[{unknown[0]!r}]", values[unknown[0]], "a request field"
        )
    if kind is not None and kind not in KINDS:
        raise RequestValidationError("kind", kind, f"one of {', '.join(sorted(KINDS))}")
    for name, value in values.items():
        try:
            values[name] = structure_field(Inpaint, name, value)
        except ValueError as exc:
            raise RequestValidationError(f"defaults[{name!r}]", value, str(exc)) from None
    file = PromptFile(
        path=Path(path),
        format=detect_format(Path(path), format),
        defaults=values,
        kind=kind,
        derive_seeds=derive_seeds,
    )
    file.check()
    return file
