"""The ``dreambooth-async`` command: ``generate``, ``demo``, ``emulator`` and ``merge``.

``generate PROMPTS --model-id M --out DIR`` turns a prompts file into a folder of images with a
``metadata.jsonl`` in the Hugging Face imagefolder convention, through a resumable batch: run the
same command again after a crash (or Ctrl-C) and it picks up where it stopped, without paying for
an image twice. ``demo`` does the same with a bundled prompts file against the embedded emulator.
``emulator`` serves the emulator.

Exit codes: 0 every item done; 1 some failed or are ambiguous, or the batch stopped (no credits,
a refused key, the service unreachable; see the summary); 2 a usage or input error, an output
folder that cannot be written, or options that differ from the ones the folder's images were made
with (nothing was submitted); 130 interrupted (run the command again to resume).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import copy
import csv
import hashlib
import json
import logging
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import attrs

from . import __version__
from ._batch import BatchItem, request_key
from ._cache import add_cache_parser, plan_run
from ._client import (
    API_KEY_ENV,
    API_KEY_ENV_FALLBACK,
    BASE_URL_ENV,
    DEFAULT_API_VERSION,
    DEFAULT_BASE_URL,
    DreamboothClient,
    api_keys_from_env,
)
from ._errors import (
    AuthenticationError,
    DreamboothError,
    InsufficientCredits,
    RequestValidationError,
    TransportError,
)
from ._fsout import (
    FsOutput,
    OutputURLError,
    RemoteMirror,
    UploadError,
    is_url,
    restore_state,
    state_folder,
)
from ._gallery import add_gallery_parser, write_gallery
from ._manifest import ManifestError
from ._merge import add_merge_parser
from ._models import (
    API_VERSIONS,
    GenerationRequest,
    Img2Img,
    Inpaint,
    Scheduler,
    Text2Img,
    is_http_url,
)
from ._poller import PollPolicy
from ._progress import ProgressReporter, format_duration
from ._report import accounting_lines, build_report, report_path, write_report
from ._shard import add_shard_argument, shard_manifest_name, shard_of
from ._spend import read_balances
from ._webhooks import WebhookReceiver

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

MANIFEST_NAME = "dreambooth-manifest.jsonl"
METADATA_NAME = "metadata.jsonl"
LOCK_NAME = ".dreambooth.lock"
#: The options that shaped the folder's requests, so a rerun with other ones does not mix sets.
RUN_NAME = "dreambooth-run.json"
#: What to install for the embedded emulator (Pillow draws its images).
CLI_EXTRA = "pip install 'dreambooth-async[cli]'"
EMULATOR_EXTRA = "pip install 'dreambooth-async[emulator]'"
#: Longest line a prompts file may have (bytes): a prompt, or a JSONL row with a few fields.
MAX_LINE_BYTES = 1024 * 1024
DEMO_TIME_SCALE = 0.02

# --- request fields as options and columns ----------------------------------------------------

_KINDS: dict[str, type[Text2Img] | type[Img2Img] | type[Inpaint]] = {
    "text2img": Text2Img,
    "img2img": Img2Img,
    "inpaint": Inpaint,
}
_INT_FIELDS = frozenset({"width", "height", "samples", "steps", "clip_skip", "seed"})
_FLOAT_FIELDS = frozenset({"guidance_scale", "strength"})
_BOOL_FIELDS = frozenset(
    {
        "safety_checker",
        "enhance_prompt",
        "multi_lingual",
        "panorama",
        "self_attention",
        "upscale",
        "tomesd",
        "use_karras_sigmas",
        "highres_fix",
        "temp",
    }
)
_TEXT_FIELDS = frozenset(
    {
        "model_id",
        "prompt",
        "negative_prompt",
        "webhook",
        "track_id",
        "embeddings_model",
        "lora_model",
        "lora_strength",
        "algorithm_type",
        "vae",
        "safety_checker_type",
        "init_image",
        "mask_image",
        "scheduler",
    }
)
#: Every request field a prompts file row or a default may set (``extra`` is not one).
REQUEST_FIELDS: tuple[str, ...] = tuple(f.name for f in attrs.fields(Inpaint) if f.name != "extra")
#: Row fields that are not request fields.
_ROW_ONLY = frozenset({"key", "kind"})
#: Fields recorded in metadata.jsonl, after file_name.
_METADATA_FIELDS = (
    "prompt",
    "negative_prompt",
    "seed",
    "model_id",
    "width",
    "height",
    "steps",
    "guidance_scale",
    "scheduler",
    "strength",
)


class InputError(Exception):
    """A prompts file (or an option) that cannot be used; the message names the line."""


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("yes", "true", "1", "on", "y"):
        return True
    if value in ("no", "false", "0", "off", "n"):
        return False
    raise ValueError(f"expected yes or no, got {text!r}")


def _convert(name: str, value: Any) -> Any:
    """A row or option value as the request field wants it (CSV and text give strings)."""
    if value is None:
        return None
    if name in _INT_FIELDS:
        if isinstance(value, bool):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if name in _FLOAT_FIELDS:
        if isinstance(value, bool):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if name in _BOOL_FIELDS:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return _parse_bool(value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        raise ValueError(f"{name}: expected yes or no, got {value!r}")
    if name == "track_id" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected text, got {value!r}")
    return value


def _option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _add_request_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "request defaults", "every request field, applied to rows that do not set it"
    )
    for name in REQUEST_FIELDS:
        if name == "prompt":
            continue
        flag = _option_name(name)
        if name in _INT_FIELDS:
            group.add_argument(flag, dest=f"field_{name}", type=int, metavar="N")
        elif name in _FLOAT_FIELDS:
            group.add_argument(flag, dest=f"field_{name}", type=float, metavar="X")
        elif name in _BOOL_FIELDS:
            group.add_argument(flag, dest=f"field_{name}", type=_parse_bool, metavar="yes|no")
        elif name == "scheduler":
            group.add_argument(
                flag, dest=f"field_{name}", choices=[s.value for s in Scheduler], metavar="NAME"
            )
        else:
            group.add_argument(flag, dest=f"field_{name}", metavar="TEXT")
    group.add_argument(
        "--kind",
        choices=sorted(_KINDS),
        help="endpoint for every row (default: inpaint if a row has mask_image, img2img if "
        "init_image, else text2img)",
    )


def _defaults_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        name: getattr(args, f"field_{name}")
        for name in REQUEST_FIELDS
        if getattr(args, f"field_{name}", None) is not None
    }


# --- reading prompts files --------------------------------------------------------------------


def _detect_format(path: Path, declared: str) -> str:
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
        cls = _KINDS.get(str(kind_name))
        if cls is None:
            raise InputError(f"{where}: kind must be one of {', '.join(sorted(_KINDS))}")
        accepted = {f.name for f in attrs.fields(cls)}
        for name in fields:
            if name not in accepted:
                raise InputError(f"{where}: {name} does not apply to {kind_name} requests")
        merged = {k: v for k, v in self.defaults.items() if k in accepted}
        try:
            merged.update({name: _convert(name, value) for name, value in fields.items()})
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


# --- the output folder ------------------------------------------------------------------------


def _probe_writable(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (None when one can). Tried for real: a
    read-only file system, an immutable folder or an ACL say no only when asked, and
    ``os.access`` does not see them (nor does it say no to root)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".dreambooth-probe-", dir=folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return None


def check_output_folder(path: Path, flag: str = "--out") -> None:
    """Raise InputError, naming ``flag``, when ``path`` cannot be (or become) a writable
    folder; creates nothing. Called before anything is submitted: an image the run cannot
    save is an image paid for and lost."""
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{flag} {path}: exists and is not a folder")
        problem = _probe_writable(path)
        if problem is not None:
            raise InputError(f"{flag} {path}: cannot write in this folder ({problem})")
        return
    # The nearest ancestor that exists must be a folder we can create the rest in.
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{flag} {path}: {ancestor} is a file, not a folder")
    problem = _probe_writable(ancestor)
    if problem is not None:
        raise InputError(f"{flag} {path}: cannot create it in {ancestor} ({problem})")


def _make_output_folder(path: Path, flag: str = "--out") -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # changed since the check, or a race
        raise InputError(f"{flag} {path}: cannot create it ({exc.strerror or exc})") from None


class OutputLock:
    """An exclusive lock on the output folder for the length of a run."""

    def __init__(self, folder: Path) -> None:
        try:
            self._fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise InputError(
                f"--out {folder}: cannot write in it ({exc.strerror or exc})"
            ) from None
        if fcntl is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._fd)
                raise InputError(f"{folder} is in use by another dreambooth-async run") from None

    def close(self) -> None:
        os.close(self._fd)


# --- the options a folder's images were made with ---------------------------------------------


def manifest_name(args: argparse.Namespace) -> str:
    """The default manifest's name in DIR: a shard's has the shard in it, so that each shard
    keeps (and resumes from) its own."""
    if getattr(args, "shard", None) is None:
        return MANIFEST_NAME
    index, count = args.shard
    return shard_manifest_name(MANIFEST_NAME, index, count)


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options that shape the requests of a ``generate`` run, by flag. Every request
    default counts, even one that cannot change a picture (``--webhook``), and a value
    spelled out is not the request's own default: derived seeds come from the fields given,
    so ``--steps 30`` and no ``--steps`` make different images."""
    options: dict[str, Any] = {
        "--api-version": args.api_version,
        "--random-seeds": bool(args.random_seeds),
    }
    if args.kind is not None:
        options["--kind"] = args.kind
    if getattr(args, "shard", None) is not None:
        options["--shard"] = "{}/{}".format(*args.shard)
    for name, value in _defaults_from_args(args).items():
        options[_option_name(name)] = value
    return options


def _shown(flag: str, value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


@attrs.frozen
class RunRecord:
    """``DIR/dreambooth-run.json``: the options of every run whose images are in the folder.

    A rerun with options that are not among them would put a second, different set of images
    next to the first, silently; it is refused unless ``--allow-mixed`` says to mix.
    """

    path: Path
    runs: tuple[Mapping[str, Any], ...] = ()

    FORMAT = "dreambooth-async-run"

    @classmethod
    def read(cls, folder: Path) -> RunRecord:
        path = folder / RUN_NAME
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return cls(path)
        except NotADirectoryError:  # the folder is a file: check_output_folder says so
            return cls(path)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read the run record ({exc})") from None
        runs = data.get("runs") if isinstance(data, dict) else None
        if not isinstance(runs, list) or data.get("format") != cls.FORMAT:
            raise InputError(f"{path}: not a dreambooth-async run record")
        return cls(
            path,
            tuple(
                run["options"]
                for run in runs
                if isinstance(run, dict) and isinstance(run.get("options"), dict)
            ),
        )

    def check(self, options: Mapping[str, Any], *, has_images: bool, allow_mixed: bool) -> None:
        """Raise InputError when this run would mix its images with another set's."""
        if not self.runs or not has_images or allow_mixed or dict(options) in self.runs:
            return
        before = self.runs[-1]
        changes = [
            f"{flag} {_shown(flag, options.get(flag))} (the folder's images: "
            f"{_shown(flag, before.get(flag))})"
            for flag in sorted(set(before) | set(options))
            if before.get(flag) != options.get(flag)
        ]
        raise InputError(
            f"--out {self.path.parent} holds images made with other options: "
            f"{'; '.join(changes)}. Run with the same options to resume that set, choose "
            "another --out, or add --allow-mixed to put both sets in this folder"
        )

    def save(self, options: Mapping[str, Any], *, has_images: bool) -> None:
        """Record ``options`` (replacing the record when the folder has no images yet)."""
        if dict(options) in self.runs and has_images:
            return
        runs = [*self.runs, options] if has_images else [options]
        data = {"format": self.FORMAT, "version": 1, "runs": [{"options": o} for o in runs]}
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(temporary, self.path)


def _has_images(out: Path) -> bool:
    try:
        return (out / METADATA_NAME).stat().st_size > 0
    except OSError:
        return False


# Where the service's ``meta`` says what ran (v6 caps steps silently, a random seed is drawn):
# field -> the names meta uses for it.
_META_NAMES: Mapping[str, tuple[str, ...]] = {
    "seed": ("seed",),
    "width": ("W", "width"),
    "height": ("H", "height"),
    "steps": ("steps", "num_inference_steps"),
    "guidance_scale": ("guidance_scale", "guidance"),
    "scheduler": ("scheduler",),
}


def _what_ran(item: BatchItem) -> dict[str, Any]:
    """The generation settings the service reports in the result's ``meta``, typed as the
    request's fields; a value the meta lacks or garbles is left to the request."""
    meta = item.result.meta if item.result is not None else {}
    ran: dict[str, Any] = {}
    for field, names in _META_NAMES.items():
        value = next((meta[name] for name in names if meta.get(name) not in (None, "")), None)
        if value is None:
            continue
        try:
            ran[field] = _convert(field, value) if field != "scheduler" else str(value)
        except ValueError:
            continue
    if "seed" not in ran and item.request.seed is None and item.result is not None:
        ran["seed"] = item.result.seed
    return ran


class MetadataWriter:
    """``metadata.jsonl``: one row per image, appended once the image is on disk, never twice.

    Rows already in the file (from an earlier run) are remembered by ``file_name``; a row torn
    by a crash is cut off before appending.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.known: set[str] = set()
        self.written = 0
        good_end = 0
        if path.exists():
            with path.open("rb") as handle:
                for number, raw in enumerate(handle, start=1):
                    if not raw.endswith(b"\n"):
                        break  # torn by a crash: dropped below
                    try:
                        row = json.loads(raw)
                    except ValueError:
                        raise InputError(f"{path}:{number}: not a metadata row") from None
                    if isinstance(row, dict) and isinstance(row.get("file_name"), str):
                        self.known.add(row["file_name"])
                    good_end += len(raw)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if os.fstat(self._fd).st_size > good_end:
            os.ftruncate(self._fd, good_end)

    def add(self, item: BatchItem) -> int:
        """Append the rows for ``item``'s files that are not in the file yet; returns how many."""
        rows = []
        request = item.request
        ran = _what_ran(item)
        for number, path in enumerate(item.files):
            if path.name in self.known:
                continue
            row: dict[str, Any] = {"file_name": path.name}
            for name in _METADATA_FIELDS:
                value = ran[name] if name in ran else getattr(request, name, None)
                row[name] = value.value if isinstance(value, Scheduler) else value
            row.update(
                kind=request.kind,
                samples=request.samples,
                sample_index=number,
                job_id=item.job_id,
                key=item.key,
            )
            rows.append(row)
        if rows:
            data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            os.write(self._fd, data.encode("utf-8"))
            os.fsync(self._fd)
            for row in rows:
                self.known.add(row["file_name"])
            self.written += len(rows)
        return len(rows)

    def close(self) -> None:
        os.close(self._fd)


# --- generate ---------------------------------------------------------------------------------


@attrs.define
class _Summary:
    done: int = 0
    resumed: int = 0
    failed: int = 0
    ambiguous: int = 0
    images: int = 0
    new_rows: int = 0
    problems: list[str] = attrs.field(factory=list)
    #: Why the batch stopped submitting (a bad key, no credits, no service), if it did.
    stopped: str | None = None
    #: What to do about it before running the command again.
    remedy: str = "fix the cause"
    #: What the run sent and spent (see ``_report``).
    accounting: list[str] = attrs.field(factory=list)


def _describe(item: BatchItem, source: PromptSource) -> str:
    line = source.line_of(item.index)
    where = f"line {line}" if line is not None else f"item {item.index}"
    error = item.error
    name = type(error).__name__ if error is not None else "?"
    return f"{where} (key {item.key}): {item.status}: {name}: {error}"


def _base_url(args: argparse.Namespace) -> str:
    """The service root the run will use, checked (the client would refuse it later)."""
    if args.base_url:
        url, origin = args.base_url, "--base-url"
    else:
        url = os.environ.get(BASE_URL_ENV, "").strip()
        origin = f"${BASE_URL_ENV}"
        if not url:
            return DEFAULT_BASE_URL
    if not is_http_url(url):
        raise InputError(f"{origin} {url!r} is not an http:// or https:// URL")
    return str(url)


def emulator_missing() -> str | None:
    """Why the emulator cannot be imported (Pillow is missing), or None when it can."""
    try:
        from . import emulator  # noqa: F401 - imported to see that it can be
    except ImportError as exc:
        return str(exc)
    return None


def _require_emulator(what: str, extra: str) -> None:
    problem = emulator_missing()
    if problem is not None:
        raise InputError(
            f"{what} needs the embedded emulator, which needs Pillow: {extra} ({problem})"
        )


def _api_key(args: argparse.Namespace) -> str | list[str]:
    """The key, or the keys (``--api-key`` repeated, or commas in the variable)."""
    given = args.api_key or []
    keys = [part.strip() for value in given for part in str(value).split(",") if part.strip()]
    keys = keys or api_keys_from_env()
    if not keys:
        raise InputError(
            f"no API key: pass --api-key or set {API_KEY_ENV} or {API_KEY_ENV_FALLBACK} "
            "(or use --emulator)"
        )
    if len(set(keys)) < len(keys):
        raise InputError("--api-key: the same key is given twice (name each account once)")
    return keys[0] if len(keys) == 1 else keys


@contextlib.asynccontextmanager
async def _service(
    args: argparse.Namespace,
) -> AsyncIterator[tuple[str, str | list[str], float | None]]:
    """(base URL, key or keys, time scale) of the service to use: the embedded emulator or
    the real."""
    if not args.emulator:
        yield args.base_url, _api_key(args), args.poll_scale
        return
    _require_emulator("--emulator", CLI_EXTRA)
    from .emulator import DEFAULT_KEY, EmulatorConfig, serve

    scale = args.emulator_time_scale
    config = EmulatorConfig(
        time_scale=scale, queue_limit=args.emulator_queue_limit, workers=args.emulator_workers
    )
    async with serve(config) as base_url:
        yield base_url, DEFAULT_KEY, scale


def _webhook_receiver(args: argparse.Namespace) -> WebhookReceiver | None:
    """A receiver when the service can reach us: given a public URL, or the local emulator
    (which calls loopback webhooks). It resolves jobs early and names the job of a
    submission whose answer was lost, so that image is not lost."""
    if not (args.webhook_url or args.webhook_listen or args.emulator):
        return None
    host, _, port = (args.webhook_listen or "127.0.0.1:0").rpartition(":")
    try:
        port_number = int(port)
    except ValueError:
        raise InputError(f"--webhook-listen wants HOST:PORT, not {args.webhook_listen!r}") from None
    return WebhookReceiver(host=host or "127.0.0.1", port=port_number, public_url=args.webhook_url)


async def _run_generate(
    args: argparse.Namespace,
    source: PromptSource,
    out: Path,
    stdout: TextIO,
    remote: FsOutput | None = None,
) -> int:
    started = time.monotonic()
    manifest = Path(args.manifest) if args.manifest else out / manifest_name(args)
    summary = _Summary()
    # A URL --out: the batch fills the local state folder, each item's images are uploaded
    # (then dropped locally) before the metadata that names them; a copy of the manifest
    # follows it there, for a rerun whose state folder is gone.
    mirror = (
        RemoteMirror(out, remote, manifest=manifest, record=RUN_NAME)
        if remote is not None
        else None
    )
    metadata = MetadataWriter(out / METADATA_NAME)
    try:
        # The manifest's copy is kept current until the batch has ended, then saved whole.
        state = mirror.keeping_state() if mirror is not None else contextlib.nullcontext()
        async with state, _service(args) as (base_url, key, scale):
            poll = PollPolicy().scaled(scale) if scale else PollPolicy()
            client = DreamboothClient(
                key,
                base_url=base_url,
                api_version=args.api_version,
                poll=poll,
                max_concurrency=args.max_concurrency,
                webhooks=_webhook_receiver(args),
                cache=args.cache,
            )
            show = not args.quiet and not args.no_progress
            progress = ProgressReporter(
                source.count,
                stream=sys.stderr,
                bar=None if show else False,
                redact=client.redact,
            )
            hooks: list[Callable[[Any], None]] = [progress] if show else []
            if mirror is not None:
                hooks.append(mirror.on_event)
            try:
                async with client:
                    # For the report: what the accounts had before anything was sent.
                    before = await read_balances(client)
                    run = client.map(
                        source.requests(),
                        args.concurrency,
                        manifest=manifest,
                        download_to=out,
                        on_event=hooks,
                        rate_limit=args.rate_limit,
                        resubmit_ambiguous=args.resubmit_ambiguous,
                        recover_ambiguous=args.recover_seconds,
                        retry_failed=not args.no_retry_failed,
                        job_timeout=args.job_timeout,
                        max_images=args.max_images,
                        max_spend=args.max_spend,
                    )
                    async with run:
                        try:
                            async for item in run:
                                _tally(item, summary, metadata, source, client)
                                if mirror is not None:
                                    await mirror.upload(item.files if item.ok else ())
                        except (AuthenticationError, InsufficientCredits) as error:
                            # The batch stopped submitting; accepted jobs were collected above.
                            summary.stopped = client.redact(
                                f"{type(error).__name__}: {error}"
                            )
                            summary.remedy = (
                                "top up the wallet"
                                if isinstance(error, InsufficientCredits)
                                else "use a valid key"
                            )
                        except TransportError as error:
                            # Connections kept failing: the batch gave up on the service rather
                            # than fail every item one by one; nothing more was sent.
                            summary.stopped = client.redact(
                                f"cannot reach {client.base_url}: {error}"
                            )
                        except UploadError:
                            # In mirror.failure, for the summary; nothing more is sent, and what
                            # was not uploaded stays staged for the rerun.
                            pass
                            summary.remedy = (
                                "check --base-url (or $" + BASE_URL_ENV + ") and the network"
                            )
                    after = await read_balances(client)
                    report = build_report(
                        stats=run.stats,
                        key_stats=run.key_stats,
                        before=before,
                        after=after,
                        elapsed=time.monotonic() - started,
                        stopped=summary.stopped,
                        budget={"max_images": args.max_images, "max_spend": args.max_spend},
                    )
                    summary.accounting = accounting_lines(report)
                    try:
                        write_report(report_path(manifest), report, client.redact)
                    except OSError as exc:  # the images are fine; only the report is lost
                        summary.accounting.append(f"could not write the report: {exc}")
                    else:
                        summary.accounting.append(f"report: {report_path(manifest)}")
            finally:
                if show:
                    progress.close()
    except UploadError:
        pass  # the first save of the manifest's copy failed, before anything was sent
    finally:
        metadata.close()
    upload_error = mirror.finish(manifest=manifest) if mirror is not None else None
    if upload_error is not None:
        print(f"error: {upload_error}", file=stdout)
    shown = str(remote.url) if remote is not None else out
    _print_summary(summary, shown, manifest, time.monotonic() - started, stdout)
    if upload_error is not None and mirror is not None:
        staged = mirror.staged()
        print(
            f"the manifest is intact: run the same command again to upload the {staged} "
            f"image{'' if staged == 1 else 's'} kept in {out} and go on (nothing is paid "
            "for twice)",
            file=stdout,
        )
    if mirror is None:
        try:
            gallery = write_gallery(out, manifest=manifest)
        except OSError as exc:  # the images are fine; only the page could not be written
            print(f"could not write the gallery: {exc}", file=stdout)
        else:
            print(f"gallery: {gallery.as_uri()}", file=stdout)
    ok = summary.failed == 0 and summary.ambiguous == 0 and summary.stopped is None
    ok = ok and upload_error is None
    return EXIT_OK if ok else EXIT_PARTIAL


def _tally(
    item: BatchItem,
    summary: _Summary,
    metadata: MetadataWriter,
    source: PromptSource,
    client: DreamboothClient,
) -> None:
    if item.ok:
        summary.done += 1
        summary.resumed += item.resumed
        summary.images += len(item.files)
        summary.new_rows += metadata.add(item)
    else:
        if item.status == "ambiguous":
            summary.ambiguous += 1
        else:
            summary.failed += 1
        # The service may echo the key in an error: never print it.
        summary.problems.append(client.redact(_describe(item, source)))


def _print_summary(
    summary: _Summary, out: Path | str, manifest: Path, elapsed: float, stdout: TextIO
) -> None:
    earlier = f" ({summary.resumed} from an earlier run)" if summary.resumed else ""
    print(
        f"done {summary.done}{earlier}, failed {summary.failed}, ambiguous {summary.ambiguous}, "
        f"images {summary.images} ({summary.new_rows} new metadata rows), "
        f"time {format_duration(elapsed)}",
        file=stdout,
    )
    for line in summary.accounting:
        print(line, file=stdout)
    print(f"images and {METADATA_NAME} in {out}", file=stdout)
    for problem in summary.problems[:20]:
        print(f"  {problem}", file=stdout)
    if len(summary.problems) > 20:
        print(f"  ... and {len(summary.problems) - 20} more (see {manifest})", file=stdout)
    if summary.stopped is not None:
        print(
            f"stopped submitting: {summary.stopped}; the items not sent stay pending: "
            f"{summary.remedy}, then run the same command again",
            file=stdout,
        )
    if summary.failed:
        print("run the same command again to retry the failed items", file=stdout)
    if summary.ambiguous:
        print(
            "ambiguous items may have been accepted (and billed) already; they are not sent "
            "again unless you add --resubmit-ambiguous",
            file=stdout,
        )
    stdout.flush()


def _remote_output(url: str) -> FsOutput:
    """The fsspec output at ``url``, proven writable before anything is submitted."""
    try:
        remote = FsOutput(url)
        remote.probe()
    except OutputURLError as exc:
        raise InputError(str(exc)) from None
    return remote


def _restore_remote_state(
    args: argparse.Namespace, remote: FsOutput, out: Path, stdout: TextIO
) -> None:
    """A URL --out whose manifest is not here (a pod restarted without its volume): restore
    it from its copy beside the outputs, or refuse to pay for outputs already there again."""
    manifest = Path(args.manifest) if args.manifest else out / manifest_name(args)
    allow_new = bool(getattr(args, "new_manifest", False))
    try:
        notes = restore_state(remote, manifest, local=out, record=RUN_NAME, allow_new=allow_new)
    except OutputURLError as exc:
        raise InputError(str(exc)) from None
    except OSError as exc:  # the state folder or --manifest could not take it
        raise InputError(f"cannot restore {manifest}: {exc}") from None
    for note in notes:
        print(note, file=stdout)


def _generate(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    stdout = stdout or sys.stdout
    path = Path(args.prompts)
    source = PromptSource(
        path=path,
        fmt=_detect_format(path, args.format),
        defaults=_defaults_from_args(args),
        kind=args.kind,
        derive_seeds=not args.random_seeds,
        shard=getattr(args, "shard", None),
    )
    # Everything is checked before anything is written or sent: a bad file, a missing key or
    # extra, or an output folder that cannot take the images leaves no trace.
    source.validate()
    if args.emulator:
        _require_emulator("--emulator", CLI_EXTRA)
    else:
        _api_key(args)
        _base_url(args)
    # A URL --out keeps its manifest and staged images in a local state folder.
    url = is_url(args.out)
    out = state_folder(args.out).resolve() if url else Path(args.out).resolve()
    if args.dry_run:
        return _dry_run(args, source, out, stdout)
    remote = _remote_output(args.out) if url else None
    check_output_folder(out, "--out")
    if args.manifest:
        check_output_folder(Path(args.manifest).resolve().parent, "--manifest")
    _make_output_folder(out, "--out")
    lock = OutputLock(out)
    try:
        # Under the lock: no other run changes the record between the check and the save.
        options = run_options(args)
        if remote is not None:
            _restore_remote_state(args, remote, out, stdout)
        record = RunRecord.read(out)
        has_images = _has_images(out)
        record.check(options, has_images=has_images, allow_mixed=args.allow_mixed)
        try:
            record.save(options, has_images=has_images)
        except OSError as exc:
            raise InputError(f"--out {out}: cannot write in it ({exc.strerror or exc})") from None
        return _run_async(_run_generate(args, source, out, stdout, remote))
    finally:
        lock.close()


def _dry_run(args: argparse.Namespace, source: PromptSource, out: Path, stdout: TextIO) -> int:
    """``generate --dry-run``: what the run would submit and what is already covered, from
    the files alone; nothing is sent or written."""
    plan = plan_run(
        source.requests(),
        api_version=args.api_version,
        # The embedded emulator's address is new every run: nothing cached matches it.
        base_url="" if args.emulator else _base_url(args),
        cache=args.cache,
        manifest=Path(args.manifest) if args.manifest else out / manifest_name(args),
        max_images=args.max_images,
    )
    print(
        f"dry run: {plan.submissions} submissions, {plan.images} images; covered: "
        f"{plan.done} done and {plan.in_flight} in flight (manifest), {plan.cached} cached; "
        f"{plan.over_budget} over --max-images",
        file=stdout,
    )
    return EXIT_OK


def _run_async(coro: Any) -> int:
    """Run ``coro``; SIGTERM cancels it like Ctrl-C does, so the batch stops cleanly."""

    async def wrapper() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            assert task is not None
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            result: int = await coro
            return result
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGTERM)

    return asyncio.run(wrapper())


# --- demo and emulator ------------------------------------------------------------------------


def _demo_prompts() -> Path:
    # A regular file inside the installed package (wheels are unpacked), so a plain path works.
    return Path(str(resources.files("dreambooth_async").joinpath("data/demo_prompts.txt")))


def _demo(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    stdout = stdout or sys.stdout
    _require_emulator("demo", CLI_EXTRA)
    parser = build_parser(emulator_options=False)
    argv = [
        "generate",
        str(_demo_prompts()),
        "--model-id",
        "midjourney",
        "--out",
        str(args.out),
        "--emulator",
        "--emulator-time-scale",
        str(args.time_scale),
    ]
    if args.no_progress:
        argv.append("--no-progress")
    generate_args = parser.parse_args(argv)
    code = _generate(generate_args, stdout)
    out = Path(args.out).resolve()
    images = sum(1 for p in out.iterdir() if p.suffix in (".png", ".jpg"))
    print(
        f"\nthe demo ran {images} prompts against the embedded emulator: the images are in "
        f"{out}, described in {out / METADATA_NAME}.\nrun it again and it resumes (nothing "
        "is generated twice); point `dreambooth-async generate` at your own prompts file and "
        "--base-url to use the real service.",
        file=stdout,
    )
    return code


def _emulator(args: argparse.Namespace) -> int:
    problem = emulator_missing()
    if problem is not None:
        raise InputError(
            f"the emulator needs Pillow: {EMULATOR_EXTRA} (or [cli], which has it too) ({problem})"
        )
    from .emulator import config_from_args, run

    try:
        config = config_from_args(args)
    except (ValueError, TypeError) as exc:
        raise InputError(f"emulator: {_in_flag_names(str(exc), args.emulator_flags)}") from None
    try:
        asyncio.run(run(config))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def _emulator_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Configuration field name -> the emulator option that sets it."""
    by_dest = {
        action.dest: max(action.option_strings, key=len)
        for action in parser._actions
        if action.option_strings and action.dest != "help"
    }
    flags = dict(by_dest)
    # config_from_args's nesting: cost_base -> CostModel.base, fault_5xx -> FaultConfig.rate_5xx;
    # list-valued options are plural in the configuration (--key -> keys).
    for dest, flag in by_dest.items():
        if dest.startswith("cost_"):
            flags[dest.removeprefix("cost_")] = flag
        elif dest.startswith("fault_") and dest != "fault_seed":
            flags["rate_" + dest.removeprefix("fault_")] = flag
    return flags


def _in_flag_names(message: str, flags: Mapping[str, str]) -> str:
    """An emulator configuration error in the words of its command line: ``'queue_limit'
    must be >= 1`` becomes ``--queue-limit must be >= 1``."""
    for name in sorted(flags, key=len, reverse=True):
        message = re.sub(rf"(?<![\w-])'?{re.escape(name)}'?(?![\w-])", flags[name], message)
    return message


class _AllDefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the default of every option that takes a value, options without a help text of
    their own too; a list default reads as the comma-separated text the option takes."""

    def _format_action(self, action: argparse.Action) -> str:
        if action.option_strings and action.nargs != 0 and action.default is not argparse.SUPPRESS:
            action = copy.copy(action)  # the parser's own action stays as it is
            if isinstance(action.default, tuple | list):
                action.default = ",".join(map(str, action.default)) or "none"
            if not action.help:
                action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0 or (action.help and "default" in action.help):
            return action.help  # a switch, or a help text that names its default already
        return super()._get_help_string(action)


# --- the parser -------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser(*, emulator_options: bool = True) -> argparse.ArgumentParser:
    """The ``dreambooth-async`` argument parser (subcommands generate, demo, emulator).

    ``emulator_options=False`` leaves out the ``emulator`` subcommand's options, whose
    description imports the emulator (aiohttp.web, Pillow): other commands start faster.
    """
    parser = argparse.ArgumentParser(
        prog="dreambooth-async",
        description="Bulk image generation with the Dreambooth API: resumable, within the "
        "account's queue limit, never paying twice.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv)")
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="show the version"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser(
        "generate",
        help="a prompts file in, a folder of images and metadata.jsonl out",
        description="Generate an image set from PROMPTS into DIR. Running the same command "
        "again resumes: done items are skipped, accepted ones fetched by id.",
    )
    gen.add_argument(
        "prompts",
        metavar="PROMPTS",
        help="a text file, a prompt a line (blank lines and lines starting with # are "
        "skipped), or .jsonl (an object a line) or .csv (a header with a prompt column)",
    )
    gen.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder, or an fsspec URL (s3://bucket/run/, file://...; needs the "
        "[fsspec] or [s3] extra) whose manifest stays in a local ./.dreambooth-state folder",
    )
    gen.add_argument(
        "--format",
        choices=("auto", "text", "jsonl", "csv"),
        default="auto",
        help="how to read PROMPTS (default: from its extension)",
    )
    gen.add_argument(
        "--concurrency",
        type=_positive_int,
        metavar="N",
        help="queue slots to use (default: find the account's limit)",
    )
    gen.add_argument(
        "--max-concurrency",
        type=_positive_int,
        default=64,
        metavar="N",
        help="ceiling for the adaptive concurrency (default %(default)s)",
    )
    gen.add_argument(
        "--rate-limit",
        type=_positive_float,
        metavar="RPS",
        help="at most this many submissions per second",
    )
    gen.add_argument(
        "--base-url",
        default=None,
        help=f"the service root (default: ${BASE_URL_ENV}, else {DEFAULT_BASE_URL})",
    )
    gen.add_argument(
        "--api-version",
        choices=API_VERSIONS,
        default=DEFAULT_API_VERSION,
        help="v6 (default) and v7 are today's API; v3 and v4 the legacy one of the 2023 pages",
    )
    gen.add_argument(
        "--api-key",
        action="append",
        metavar="KEY",
        help="the account key; repeat it for several accounts, whose queue slots the run "
        "pools (a key refused or out of credit is retired, the others carry on) "
        f"(default: ${API_KEY_ENV}, else ${API_KEY_ENV_FALLBACK}; keys separated by commas)",
    )
    gen.add_argument(
        "--manifest",
        metavar="PATH",
        help=f"batch manifest (default DIR/{MANIFEST_NAME}; with --shard I/N "
        f"DIR/{shard_manifest_name(MANIFEST_NAME, 1, 2).replace('1-of-2', 'I-of-N')})",
    )
    gen.add_argument(
        "--new-manifest",
        action="store_true",
        help="with a URL --out that holds outputs but no manifest (local or its copy there): "
        "start a new one anyway (every prompt is submitted and paid for again)",
    )
    gen.add_argument(
        "--resubmit-ambiguous",
        action="store_true",
        help="send again submissions that may already have been accepted (risks paying twice)",
    )
    gen.add_argument(
        "--webhook-url",
        metavar="URL",
        help="public URL where the service can reach this process's webhook receiver: "
        "deliveries resolve jobs early and name the job of a submission whose answer was lost",
    )
    gen.add_argument(
        "--webhook-listen",
        metavar="HOST:PORT",
        help="where the webhook receiver listens (default 127.0.0.1:0); without --webhook-url "
        "the service must reach this address itself (on by itself with --emulator)",
    )
    gen.add_argument(
        "--recover-seconds",
        type=_positive_float,
        metavar="SECONDS",
        help="how long to wait for a webhook to name the job of a submission whose answer "
        "was lost (default: 10x the longest poll interval, 300 s)",
    )
    gen.add_argument(
        "--allow-mixed",
        action="store_true",
        help="add images made with other options (model, size, steps, seeds, API version...) "
        "to a folder that has images already (default: refuse, so two sets do not mix)",
    )
    gen.add_argument(
        "--no-retry-failed",
        action="store_true",
        help="on resume, leave items that failed earlier as failed",
    )
    gen.add_argument(
        "--job-timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="give up waiting for a job after this long (it can be resumed)",
    )
    gen.add_argument(
        "--random-seeds",
        action="store_true",
        help="rows without a seed let the service pick one (default: a seed "
        "derived from the row, so reruns reproduce)",
    )
    gen.add_argument(
        "--emulator",
        action="store_true",
        help="serve the batch from the embedded emulator (no key needed)",
    )
    gen.add_argument(
        "--emulator-time-scale",
        type=_positive_float,
        default=DEMO_TIME_SCALE,
        metavar="X",
        help="emulator seconds per service second (%(default)s)",
    )
    gen.add_argument(
        "--emulator-queue-limit",
        type=_positive_int,
        default=5,
        metavar="N",
        help="the embedded emulator's queue slots per key (default %(default)s)",
    )
    gen.add_argument(
        "--emulator-workers",
        type=_positive_int,
        default=4,
        metavar="N",
        help="the embedded emulator's simulated GPU workers (default %(default)s)",
    )
    gen.add_argument(
        "--poll-scale",
        type=_positive_float,
        metavar="X",
        help="scale polling for a time-scaled emulator at --base-url",
    )
    gen.add_argument("--no-progress", action="store_true", help="no progress display")
    gen.add_argument("-q", "--quiet", action="store_true", help="only the summary")
    gen.add_argument(
        "--cache",
        metavar="PATH",
        help="a result cache (SQLite): seeded requests answered before are not paid again",
    )
    gen.add_argument(
        "--max-images",
        type=_positive_int,
        metavar="N",
        help="submit no more once N images are paid for or in flight (reruns continue)",
    )
    gen.add_argument(
        "--max-spend",
        type=_positive_float,
        metavar="AMOUNT",
        help="submit no more once the wallets' balance has dropped by AMOUNT in this run "
        "(read at the start and every few seconds or submissions; reruns continue)",
    )
    gen.add_argument(
        "--dry-run",
        action="store_true",
        help="say how many submissions and images the run would make; send nothing",
    )
    add_shard_argument(gen)
    _add_request_options(gen)
    gen.set_defaults(func=_generate)

    demo = commands.add_parser(
        "demo",
        help="generate the bundled prompts with the embedded emulator",
        description="Run 24 bundled prompts against the embedded emulator and show where the "
        "images went.",
    )
    demo.add_argument(
        "--out",
        default="dreambooth-demo",
        metavar="DIR",
        help="output folder (default %(default)s)",
    )
    demo.add_argument(
        "--time-scale", type=_positive_float, default=DEMO_TIME_SCALE, help=argparse.SUPPRESS
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress display")
    demo.set_defaults(func=_demo)

    emulator = commands.add_parser(
        "emulator",
        help="run the emulator of the service",
        description="A local emulator of the Dreambooth API. Durations are service seconds; "
        "--time-scale turns them into real seconds.",
        formatter_class=_AllDefaultsShown,
    )
    flags: dict[str, str] = {}
    if emulator_options:
        try:
            from .emulator import build_arg_parser
        except ImportError:  # Pillow missing: the subcommand says what to install when used
            emulator.description = (
                f"A local emulator of the Dreambooth API. Not available: it needs Pillow "
                f"({EMULATOR_EXTRA})."
            )
        else:
            build_arg_parser(emulator)
            flags = _emulator_flags(emulator)
        if "-v" not in emulator._option_string_actions:
            emulator.add_argument(
                "-v",
                "--verbose",
                dest="emulator_verbose",
                action="count",
                default=0,
                help="log every request to stderr (-vv: more)",
            )
    emulator.set_defaults(func=_emulator, emulator_flags=flags)
    add_merge_parser(commands)
    add_cache_parser(commands)
    add_gallery_parser(commands)
    return parser


def _configure_logging(verbosity: int) -> None:
    if verbosity <= 0:
        return
    logging.basicConfig(
        level=logging.DEBUG if verbosity > 1 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: parse ``argv`` and run the command; returns the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    # Only the emulator subcommand needs its options described (and the emulator imported).
    parser = build_parser(emulator_options="emulator" in arguments)
    args, unknown = parser.parse_known_args(arguments)
    if unknown and not (args.command == "emulator" and emulator_missing() is not None):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    # Without Pillow the emulator's options are unknown: its command says what to install
    # (exit 2) rather than argparse calling them unrecognized.
    _configure_logging(args.verbose + getattr(args, "emulator_verbose", 0))
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except InputError as exc:
        print(f"dreambooth-async: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ManifestError as exc:
        print(f"dreambooth-async: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except asyncio.CancelledError:
        print("\nstopped: run the same command again to resume", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except DreamboothError as exc:
        print(f"dreambooth-async: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_PARTIAL


if __name__ == "__main__":
    raise SystemExit(main())
