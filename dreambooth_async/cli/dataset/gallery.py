"""A contact sheet for an output folder: one static ``index.html`` to look at what was generated.

``generate`` leaves a folder of images, a ``metadata.jsonl`` (one row per image) and a manifest
(one state per item). The page shows every image by its relative path, with its prompt, seed and
parameters; lists the items that failed, are ambiguous or never finished, with the errors the
manifest recorded; and filters by text. It needs no server and no network: the styles and the few
lines of script are inline, and a Content-Security-Policy allows nothing else, so a prompt that
slipped through the escaping still could not run or load anything.

Everything shown comes from files in the folder; the manifest's error texts went through the
client's redactor when they were written, so they are shown as they are (the API key is in none
of these files). Pillow is not needed: the browser sizes the images.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import sys
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import attrs

from ... import _jsonl
from ..._exit import EXIT_OK, EXIT_USAGE
from ..._manifest import ItemState, ManifestError, read_manifest
from ..._settings import MANIFEST_NAME, METADATA_NAME
from .atomic import write_atomically
from .gallery_assets import SCRIPT, STYLE
from .report import report_path

__all__ = [
    "GALLERY_NAME",
    "Gallery",
    "add_gallery_parser",
    "gallery_command",
    "read_gallery",
    "render_gallery",
    "write_gallery",
]

GALLERY_NAME = "index.html"
#: Image files in the folder that no metadata row names are shown too (an interrupted run, or a
#: folder that was not written by ``generate``).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})

# Row fields shown under each image, in this order, with their labels; other fields a row has
# (a user's own imagefolder columns) follow under their own names.
_SHOWN: tuple[tuple[str, str], ...] = (
    ("seed", "seed"),
    ("model_id", "model"),
    ("size", "size"),
    ("steps", "steps"),
    ("guidance_scale", "guidance"),
    ("scheduler", "scheduler"),
    ("strength", "strength"),
    ("kind", "kind"),
    ("sample", "sample"),
    ("job_id", "job"),
    ("key", "key"),
    ("file_name", "file"),
)
# Fields folded into others above, or shown as the caption.
_NOT_LISTED = frozenset({"prompt", "negative_prompt", "width", "height", "samples", "sample_index"})
_UNFINISHED = ("pending", "submitting", "not_landed", "submitted")


@attrs.frozen(kw_only=True)
class Picture:
    """One image of the sheet: its metadata row (empty when no row names it)."""

    #: Relative POSIX path inside the folder, or the row's raw ``file_name`` when it is not one.
    name: str
    row: Mapping[str, Any]
    #: The file is inside the folder and exists.
    present: bool
    #: ``name`` is a relative path that stays inside the folder.
    inside: bool


@attrs.frozen(kw_only=True)
class Gallery:
    """What the page shows, read from one output folder."""

    title: str
    pictures: tuple[Picture, ...]
    #: Items whose last state is failed, ambiguous or unfinished, in item order.
    problems: tuple[ItemState, ...]
    #: Things about the folder's files the reader should know (unreadable lines, a bad manifest).
    notes: tuple[str, ...]
    #: Prompts of the last run that its manifest does not know: the run stopped before them.
    not_started: int = 0


def _relative_name(file_name: str) -> str | None:
    """``file_name`` as a path inside the folder, or None if it would point outside it."""
    if not file_name or "\\" in file_name or "\x00" in file_name:
        return None
    path = PurePosixPath(file_name)
    if path.is_absolute() or any(part in ("..", "") for part in path.parts):
        return None
    return path.as_posix()


def _read_rows(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    skipped: list[int] = []

    def read(number: int, raw: bytes) -> None:
        if not raw.strip():
            return
        try:
            row = json.loads(raw.decode("utf-8", errors="replace"))
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            skipped.append(number)
            return
        rows.append(row)

    def torn(_number: int, raw: bytes) -> None:
        # After the last newline: a row a crash cut short.
        if raw.strip():
            notes.append(f"{path.name}: the last line is incomplete and was left out")

    try:
        _jsonl.scan(path, read, torn=torn)
    except FileNotFoundError:
        return []
    except OSError as exc:
        notes.append(f"{path.name} could not be read: {exc}")
        return []
    if skipped:
        shown = ", ".join(str(n) for n in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
        notes.append(f"{path.name}: lines that are not metadata rows were left out: {shown}")
    return rows


def _read_states(path: Path, notes: list[str]) -> dict[str, ItemState]:
    try:
        return read_manifest(path)
    except (ManifestError, OSError) as exc:
        # The images are still worth showing; say why the failures are not.
        notes.append(f"the manifest could not be read, so failures are not listed: {exc}")
        return {}


def _prompts_given(manifest: Path) -> int | None:
    """How many prompts the last run was given, from its report beside the manifest."""
    try:
        report = json.loads(report_path(manifest).read_bytes())
    except (OSError, ValueError):
        return None
    prompts = report.get("prompts") if isinstance(report, dict) else None
    return prompts if isinstance(prompts, int) and not isinstance(prompts, bool) else None


def read_gallery(
    folder: Path, *, manifest: Path | None = None, title: str | None = None
) -> Gallery:
    """Read ``folder``'s metadata, manifest and image files into what the page shows.

    Pictures come in item order when the manifest knows the items (the order of the prompts
    file), then sample order; rows it does not know keep their order in ``metadata.jsonl``.
    Image files no row names come last, by name.
    """
    notes: list[str] = []
    rows = _read_rows(folder / METADATA_NAME, notes)
    manifest = manifest if manifest is not None else folder / MANIFEST_NAME
    states = _read_states(manifest, notes)

    pictures: list[Picture] = []
    named: set[str] = set()
    for row in rows:
        raw_name = row["file_name"]
        name = _relative_name(raw_name)
        if name is None:
            pictures.append(Picture(name=raw_name, row=row, present=False, inside=False))
            continue
        if name in named:
            continue  # the writer never repeats a row; a hand-edited file might
        named.add(name)
        present = (folder / name).is_file()
        pictures.append(Picture(name=name, row=row, present=present, inside=True))

    def order(item: tuple[int, Picture]) -> tuple[int, int, int]:
        position, picture = item
        state = states.get(str(picture.row.get("key")))
        index = state.index if state is not None and state.index is not None else None
        sample = picture.row.get("sample_index")
        sample_number = sample if isinstance(sample, int) else 0
        # Unknown items keep their place after the known ones.
        return (0, index, sample_number) if index is not None else (1, position, 0)

    pictures = [p for _, p in sorted(enumerate(pictures), key=order)]

    try:
        listing = sorted(folder.iterdir())
    except OSError as exc:
        notes.append(f"the folder could not be listed: {exc}")
        listing = []
    for path in listing:
        if (
            path.suffix.lower() in IMAGE_SUFFIXES
            and not path.name.startswith(".")
            and path.name not in named
            and path.is_file()
        ):
            pictures.append(Picture(name=path.name, row={}, present=True, inside=True))

    missing = sum(1 for p in pictures if p.inside and not p.present)
    if missing:
        notes.append(f"{missing} image file(s) named in {METADATA_NAME} are not in the folder")
    outside = sum(1 for p in pictures if not p.inside)
    if outside:
        notes.append(f"{outside} row(s) name a file outside the folder; they are not shown")

    # A run the service stopped reads no more prompts: the manifest never heard of the rest.
    given = _prompts_given(manifest)
    not_started = max(0, given - len(states)) if given is not None and states else 0
    if not_started:
        notes.append(
            f"{not_started} of the {given} prompts were never started (the run stopped "
            "first): run the same command again to go on"
        )
    problems = sorted(
        (s for s in states.values() if s.status in ("failed", "ambiguous", *_UNFINISHED)),
        key=lambda s: (s.index if s.index is not None else sys.maxsize, s.key),
    )
    return Gallery(
        title=title if title is not None else f"{folder.name or folder} · dreambooth-async",
        pictures=tuple(pictures),
        problems=tuple(problems),
        notes=tuple(notes),
        not_started=not_started,
    )


# --- the page ---------------------------------------------------------------------------------


def _hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


# Only this page's own style and script run; images come from the folder itself. 'self' is
# enough where the page is served over HTTP; file: is named for pages opened from disk.
_CSP = (
    "default-src 'none'; "
    "img-src 'self' file:; "
    f"style-src {_hash(STYLE)}; "
    f"script-src {_hash(SCRIPT)}; "
    "base-uri 'none'; form-action 'none'"
)


def _text(value: Any) -> str:
    if isinstance(value, str):
        shown = value
    elif isinstance(value, int | float):
        shown = str(value)
    else:  # a list or an object in a user's own column
        shown = json.dumps(value, ensure_ascii=False, default=str)
    return html.escape(shown, quote=True)


def _fields(row: Mapping[str, Any], name: str) -> list[tuple[str, Any]]:
    values: dict[str, Any] = {k: v for k, v in row.items() if v not in (None, "")}
    width, height = values.get("width"), values.get("height")
    if width is not None and height is not None:
        values["size"] = f"{width}x{height}"
    samples, sample_index = values.get("samples"), values.get("sample_index")
    if isinstance(samples, int) and samples > 1 and isinstance(sample_index, int):
        values["sample"] = f"{sample_index + 1} of {samples}"
    values["file_name"] = name
    shown = [(label, values[field]) for field, label in _SHOWN if field in values]
    known = {field for field, _ in _SHOWN} | _NOT_LISTED
    shown += [(field, value) for field, value in values.items() if field not in known]
    return shown


def _dimension(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _figure(picture: Picture) -> str:
    row = picture.row
    prompt = row.get("prompt")
    alt = _text(prompt) if isinstance(prompt, str) else _text(picture.name)
    if picture.present:
        src = html.escape(urllib.parse.quote(picture.name), quote=True)
        width, height = _dimension(row.get("width")), _dimension(row.get("height"))
        # The row's size reserves the space before the image loads (no jumping while scrolling).
        size = f' width="{width}" height="{height}"' if width and height else ""
        image = (
            f'<a href="{src}"><img src="{src}" alt="{alt}" loading="lazy" decoding="async"'
            f"{size}></a>"
        )
    elif picture.inside:
        image = '<div class="noimage">file missing</div>'
    else:
        image = '<div class="noimage">names a file outside this folder</div>'
    parts = [f"<figure data-filter>{image}<figcaption>"]
    if isinstance(prompt, str) and prompt:
        parts.append(f'<p class="prompt">{_text(prompt)}</p>')
    elif not row:
        parts.append('<p class="prompt dim">no metadata row</p>')
    negative = row.get("negative_prompt")
    if isinstance(negative, str) and negative:
        parts.append(f'<p class="negative">not: {_text(negative)}</p>')
    fields = _fields(row, picture.name)
    # A contact sheet of hundreds: one line at a glance, every parameter a click away (the
    # filter searches the folded part too).
    glance = [
        f"{label} {value}" if label == "seed" else str(value)
        for label, value in fields
        if label in ("seed", "model", "size")
    ]
    if glance:
        parts.append(f'<p class="glance">{_text(" · ".join(glance))}</p>')
    parts.append("<details><summary>parameters</summary><dl>")
    parts.extend(f"<dt>{_text(label)}</dt><dd>{_text(value)}</dd>" for label, value in fields)
    parts.append("</dl></details></figcaption></figure>")
    return "".join(parts)


def _problem_row(state: ItemState) -> str:
    index = "" if state.index is None else str(state.index)
    cells = (index, state.key, state.status, state.error or "", state.job_id or "")
    body = "".join(f"<td>{_text(cell)}</td>" for cell in cells)
    return f'<tr data-filter>{body}<td class="message">{_text(state.message or "")}</td></tr>'


def _counts(gallery: Gallery) -> str:
    statuses = [s.status for s in gallery.problems]
    failed = statuses.count("failed")
    ambiguous = statuses.count("ambiguous")
    unfinished = len(statuses) - failed - ambiguous + gallery.not_started
    return (
        f"{len(gallery.pictures)} images · {failed} failed · {ambiguous} ambiguous · "
        f"{unfinished} unfinished"
    )


def _problems(problems: Iterable[ItemState]) -> list[str]:
    rows = [_problem_row(state) for state in problems]
    if not rows:
        return []
    return [
        '<section id="problems"><h2>Failed, ambiguous and unfinished items</h2>',
        '<p class="dim">Run the same <code>generate</code> command again to retry failed and '
        "unfinished items; ambiguous ones may already have been accepted (and billed), and are "
        "sent again only with <code>--resubmit-ambiguous</code>.</p>",
        "<table><thead><tr><th>item</th><th>key</th><th>status</th><th>error</th><th>job</th>"
        "<th>message</th></tr></thead><tbody>",
        *rows,
        "</tbody></table></section>",
    ]


def render_gallery(gallery: Gallery) -> str:
    """The whole page: every value from the folder's files is escaped as text."""
    title = _text(gallery.title)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="referrer" content="no-referrer">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="dreambooth-async">',
        f"<title>{title}</title><style>{STYLE}</style></head><body>",
        f"<header><h1>{title}</h1>",
        f'<div class="counts">{_counts(gallery)}</div>',
        '<label><input type="search" id="filter" placeholder="filter by prompt, seed, model, '
        'key…" autocomplete="off" aria-label="filter"></label> ',
        f'<span class="dim"><span id="shown">{len(gallery.pictures)}</span> shown</span>',
        "</header>",
    ]
    if gallery.notes:
        parts.append('<ul class="notes">')
        parts.extend(f"<li>{_text(note)}</li>" for note in gallery.notes)
        parts.append("</ul>")
    parts.extend(_problems(gallery.problems))
    if gallery.pictures:
        parts.append('<main class="grid">')
        parts.extend(_figure(picture) for picture in gallery.pictures)
        parts.append("</main>")
    else:
        parts.append(
            f'<p class="dim">No images in this folder yet (no rows in {METADATA_NAME}).</p>'
        )
    parts.append(f"<script>{SCRIPT}</script></body></html>\n")
    return "\n".join(parts)


def write_gallery(
    folder: Path,
    *,
    manifest: Path | None = None,
    title: str | None = None,
    empty_ok: bool = True,
) -> Path:
    """Write ``folder/index.html``, a contact sheet of the folder; returns its path.

    ``manifest`` is the batch manifest when it is not ``folder/dreambooth-manifest.jsonl``.
    Works on any folder: without a manifest no failures are listed, without ``metadata.jsonl``
    the image files are shown by name. Raises ``NotADirectoryError``/``FileNotFoundError`` when
    ``folder`` is not a folder (or, with ``empty_ok=False``, has nothing to show: no image, no
    metadata row, no manifest entry), and ``OSError`` when the page cannot be written.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"no such folder: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"not a folder: {folder}")
    gallery = read_gallery(folder, manifest=manifest, title=title)
    if not empty_ok and not gallery.pictures and not gallery.problems:
        raise FileNotFoundError(
            f"nothing to show in {folder}: no images, no {METADATA_NAME} rows and no batch "
            "manifest (is it the --out folder of a generate run?); no page written"
        )
    target = folder / GALLERY_NAME
    write_atomically(target, render_gallery(gallery))
    return target


# --- the command ------------------------------------------------------------------------------


def add_gallery_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``gallery DIR`` to the ``dreambooth-async`` subcommands (runs ``gallery_command``)."""
    parser = subparsers.add_parser(
        "gallery",
        help=f"write DIR/{GALLERY_NAME}, a contact sheet of an output folder",
        description=f"Write DIR/{GALLERY_NAME}: every image with its prompt, seed and "
        "parameters, the failed and ambiguous items with their errors, and a filter box. "
        "A static page: open it in a browser, no server or network needed.",
    )
    parser.add_argument("folder", metavar="DIR", help="an output folder of `generate`")
    parser.add_argument(
        "--manifest", metavar="PATH", help=f"batch manifest (default DIR/{MANIFEST_NAME})"
    )
    parser.add_argument("--title", help="the page's title (default: the folder's name)")
    parser.set_defaults(func=gallery_command)


def gallery_command(args: argparse.Namespace) -> int:
    """``dreambooth-async gallery DIR``: write the page and print where it is; exit 2 when DIR
    is not a folder, has nothing to show, or the page cannot be written there."""
    folder = Path(args.folder).resolve()
    manifest = Path(args.manifest).resolve() if getattr(args, "manifest", None) else None
    try:
        path = write_gallery(
            folder, manifest=manifest, title=getattr(args, "title", None), empty_ok=False
        )
    except (FileNotFoundError, NotADirectoryError) as exc:
        print(f"dreambooth-async: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        # Not the temporary file's name: the page is what could not be written.
        reason = exc.strerror or str(exc)
        print(
            f"dreambooth-async: error: cannot write {folder / GALLERY_NAME}: {reason}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    print(path.as_uri())
    return EXIT_OK
