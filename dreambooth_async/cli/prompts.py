"""The command line's view of a prompts file: the library's reader
(:func:`~dreambooth_async.read_prompts`), its errors turned into the command's input errors."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from .._batch import BatchInput
from .._errors import PromptFileError
from .._prompts import PromptFile, RowDraft, detect_format
from .common import InputError

__all__ = ["PromptSource", "detect_format"]


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
    _file: PromptFile = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._file = PromptFile(
            path=self.path,
            format=self.fmt,
            defaults=self.defaults,
            kind=self.kind,
            derive_seeds=self.derive_seeds,
            shard=self.shard,
            model_id_hint="--model-id",
        )

    @property
    def count(self) -> int:
        return len(self._file)

    def validate(self) -> None:
        """Read the whole file once (streaming), checking every row; raise InputError."""
        try:
            self._file.check()
        except PromptFileError as exc:
            raise InputError(str(exc)) from None

    def requests(self, *, check: bool = False) -> Iterator[BatchInput]:
        """The requests, read lazily (the batch pulls them as slots free up). ``check``: for
        a caller that does not :meth:`validate` first (the dry run reads the file once),
        refuse what validating refuses as the rows are read."""
        try:
            yield from self._file.checked() if check else self._file
        except PromptFileError as exc:  # the file changed since it was checked
            raise InputError(str(exc)) from None

    def drafts(self) -> Iterator[RowDraft | tuple[str, RowDraft]]:
        """The requests as ``requests(check=True)`` gives them, each a draft that is built only
        when asked (``plan_run`` builds only what the run would send). What is wrong with a
        row may be raised by its draft: a PromptFileError, which the caller makes an
        InputError."""
        try:
            yield from self._file.drafts()
        except PromptFileError as exc:
            raise InputError(str(exc)) from None

    def line_of(self, index: int) -> int | None:
        return self._file.line_of(index)
