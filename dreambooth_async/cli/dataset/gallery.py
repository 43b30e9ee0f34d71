"""A contact sheet for an output folder: static pages to look at what was generated.

``generate`` leaves a folder of images, a ``metadata.jsonl`` (one row per image) and a manifest
(one state per item). The sheet shows every image by its relative path, with its prompt, seed
and parameters; lists the items that failed, are ambiguous or never finished, with the errors
the manifest recorded; and filters a page by text. It needs no server and no network: the
styles and the few lines of script are inline, and a Content-Security-Policy allows nothing
else, so a prompt that slipped through the escaping still could not run or load anything.

At scale it is pages of :data:`PAGE_SIZE` images: ``index.html`` is the first (with the counts,
the notes, the first problems and the page index), ``gallery/page-NNNNN.html`` the others, and
``gallery/pages.html`` lists them all; every page links to its neighbours, the first, the last
and that list, so every image is a few clicks away and no page grows with the run. It is
written as it is read: the rows are kept as where they are in ``metadata.jsonl`` (a few dozen
bytes each, sorted into item order) and read back a page at a time, and the manifest as a
:class:`~._manifest.ManifestIndex`, so a folder of a million images is paged in little memory.
A WebDataset folder (``NNNNN.tar`` shards) gets a preview sample of each shard
(:mod:`._gallery_shards`).

Everything shown comes from files in the folder; the manifest's error texts went through the
client's redactor when they were written, so they are shown as they are (the API key is in none
of these files). Pillow is not needed: the browser sizes the images.
"""

from __future__ import annotations

import argparse
import array
import base64
import contextlib
import hashlib
import html
import json
import os
import re
import secrets
import sys
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import attrs

from ._digests import TextSet
from ._gallery_assets import SCRIPT, STYLE
from ._gallery_shards import ShardPreview, read_shard_previews
from ._manifest import ItemState, ManifestError, ManifestIndex, index_manifest
from ._settings import MANIFEST_NAME, METADATA_NAME

__all__ = [
    "GALLERY_NAME",
    "PAGES_FOLDER",
    "PAGE_SIZE",
    "add_gallery_parser",
    "gallery_command",
    "write_gallery",
]

GALLERY_NAME = "index.html"
#: Where the pages after the first, the page list and the shard previews go.
PAGES_FOLDER = "gallery"
#: Images a page shows.
PAGE_SIZE = 200
#: Problems (failed, ambiguous, unfinished items) the first page lists; the rest are on
#: ``gallery/problems.html``.
PROBLEMS_SHOWN = 100
#: Shard previews the first page shows; all of them are on ``gallery/shards.html``.
SHARDS_SHOWN = 24
#: Page numbers shown on each side of the current one.
_NEARBY = 4
#: Image files in the folder that no metadata row names are shown too (an interrupted run, or a
#: folder that was not written by ``generate``).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
_PAGE = re.compile(r"^page-(\d+)\.html$")

EXIT_OK = 0  # as the rest of the command line (cli/common.py)
EXIT_USAGE = 2

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


def _relative_name(file_name: str) -> str | None:
    """``file_name`` as a path inside the folder, or None if it would point outside it."""
    if not file_name or "\\" in file_name or "\x00" in file_name:
        return None
    path = PurePosixPath(file_name)
    if path.is_absolute() or any(part in ("..", "") for part in path.parts):
        return None
    return path.as_posix()


_PRESENT, _INSIDE = 1, 2
# A row's place in the sheet, packed in one int: items the manifest knows first, by item index
# then sample; the rest after them, by their place in metadata.jsonl. The low bits are the
# row's number (to find its offset).
_ROW_BITS = 36
_UNKNOWN = 1 << 40


class _Rows:
    """``metadata.jsonl`` in sheet order, kept as where each row is, read back a page at a
    time; then the image files no row names, by name."""

    def __init__(self, folder: Path, states: ManifestIndex, notes: list[str]) -> None:
        self.folder = folder
        self.path = folder / METADATA_NAME
        self.offsets = array.array("q")
        self.flags = bytearray()
        self.order: list[int] = []
        self.named = TextSet()
        self._read(states, notes)
        self.unnamed = self._unnamed(notes)
        missing = sum(1 for f in self.flags if f & _INSIDE and not f & _PRESENT)
        if missing:
            notes.append(f"{missing} image file(s) named in {METADATA_NAME} are not in the folder")
        outside = sum(1 for f in self.flags if not f & _INSIDE)
        if outside:
            notes.append(f"{outside} row(s) name a file outside the folder; they are not shown")

    def __len__(self) -> int:
        return len(self.order) + len(self.unnamed)

    def _read(self, states: ManifestIndex, notes: list[str]) -> None:
        skipped: list[int] = []
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return
        except OSError as exc:
            notes.append(f"{self.path.name} could not be read: {exc}")
            return
        with handle:
            offset = 0
            for number, raw in enumerate(handle, start=1):
                start, offset = offset, offset + len(raw)
                if not raw.endswith(b"\n"):
                    # After the last newline: a row a crash cut short.
                    if raw.strip():
                        notes.append(
                            f"{self.path.name}: the last line is incomplete and was left out"
                        )
                    break
                if not raw.strip():
                    continue
                row = _row(raw)
                if row is None:
                    skipped.append(number)
                    continue
                self._add(row, start, states)
        if skipped:
            shown = ", ".join(str(n) for n in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
            notes.append(
                f"{self.path.name}: lines that are not metadata rows were left out: {shown}"
            )
        self.order.sort()

    def _add(self, row: Mapping[str, Any], offset: int, states: ManifestIndex) -> None:
        raw_name = row["file_name"]
        name = _relative_name(raw_name)
        if name is not None:
            if not self.named.add(name):
                return  # the writer never repeats a row; a hand-edited file might
            flags = _INSIDE | (_PRESENT if (self.folder / name).is_file() else 0)
        else:
            flags = 0
        number = len(self.offsets)
        self.offsets.append(offset)
        self.flags.append(flags)
        key = row.get("key")
        index = states.index_of(key) if isinstance(key, str) and states else None
        sample = row.get("sample_index")
        sample_number = sample if isinstance(sample, int) and 0 <= sample < 256 else 0
        place = (index << 8 | sample_number) if index is not None else _UNKNOWN + number << 8
        self.order.append(place << _ROW_BITS | number)

    def _unnamed(self, notes: list[str]) -> list[str]:
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            notes.append(f"the folder could not be listed: {exc}")
            return []
        names = []
        for entry in entries:
            name = entry.name
            if (
                os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
                and not name.startswith(".")
                and name not in self.named
                and entry.is_file()
            ):
                names.append(name)
        return sorted(names)

    def pictures(self, start: int, stop: int) -> list[Picture]:
        """The pictures from ``start`` to ``stop`` in sheet order."""
        found: list[Picture] = []
        with contextlib.ExitStack() as stack:
            handle = None
            for position in range(start, min(stop, len(self))):
                if position >= len(self.order):
                    unnamed = self.unnamed[position - len(self.order)]
                    found.append(Picture(name=unnamed, row={}, present=True, inside=True))
                    continue
                if handle is None:
                    handle = stack.enter_context(self.path.open("rb"))
                number = self.order[position] & ((1 << _ROW_BITS) - 1)
                handle.seek(self.offsets[number])
                row = _row(handle.readline()) or {"file_name": ""}
                flags = self.flags[number]
                raw_name = row["file_name"]
                name = _relative_name(raw_name) if flags & _INSIDE else None
                found.append(
                    Picture(
                        name=name if name is not None else raw_name,
                        row=row,
                        present=bool(flags & _PRESENT),
                        inside=bool(flags & _INSIDE),
                    )
                )
        return found


def _row(raw: bytes) -> dict[str, Any] | None:
    try:
        row = json.loads(raw.decode("utf-8", errors="replace"))
    except ValueError:
        return None
    if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
        return None
    return row


def _read_states(path: Path, notes: list[str]) -> ManifestIndex:
    try:
        return index_manifest(path)
    except (ManifestError, OSError) as exc:
        # The images are still worth showing; say why the failures are not.
        notes.append(f"the manifest could not be read, so failures are not listed: {exc}")
        return ManifestIndex(path)


@attrs.frozen(kw_only=True)
class _Sheet:
    """What every page shares: the title, the counts, the notes, the problems, the shards."""

    title: str
    total: int
    pages: int
    problems: Sequence[ItemState]
    notes: Sequence[str]
    shards: Sequence[ShardPreview]


# --- the pages -------------------------------------------------------------------------------


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


def _figure(picture: Picture, up: str = "") -> str:
    row = picture.row
    prompt = row.get("prompt")
    alt = _text(prompt) if isinstance(prompt, str) else _text(picture.name)
    if picture.present:
        src = html.escape(up + urllib.parse.quote(picture.name), quote=True)
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


def _counts(sheet: _Sheet) -> str:
    statuses = [s.status for s in sheet.problems]
    failed = statuses.count("failed")
    ambiguous = statuses.count("ambiguous")
    unfinished = len(statuses) - failed - ambiguous
    return (
        f"{sheet.total} images · {failed} failed · {ambiguous} ambiguous · {unfinished} unfinished"
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


def _page_name(number: int) -> str:
    return GALLERY_NAME if number == 1 else f"{PAGES_FOLDER}/page-{number:05d}.html"


def _link(number: int, here: int) -> str:
    """The relative address of page ``number`` from page ``here``."""
    if here == 1:
        return _page_name(number)
    return f"../{GALLERY_NAME}" if number == 1 else f"page-{number:05d}.html"


def _nav(sheet: _Sheet, here: int) -> str:
    """Links to the first, previous, nearby, next and last pages, and the list of them all."""
    if sheet.pages <= 1:
        return ""
    first = (here - 1) * PAGE_SIZE + 1
    last = min(here * PAGE_SIZE, sheet.total)
    parts = [
        f'<nav class="pages"><span class="dim">page {here} of {sheet.pages} · images '
        f"{first} to {last} of {sheet.total}</span> "
    ]

    def link(number: int, label: str, rel: str = "") -> str:
        attribute = f' rel="{rel}"' if rel else ""
        return f'<a href="{_link(number, here)}"{attribute}>{label}</a>'

    if here > 1:
        parts.append(
            link(1, "&laquo; first") + " " + link(here - 1, "&lsaquo; previous", "prev") + " "
        )
    for number in range(max(1, here - _NEARBY), min(sheet.pages, here + _NEARBY) + 1):
        parts.append(f"<b>{number}</b> " if number == here else link(number, str(number)) + " ")
    if here < sheet.pages:
        parts.append(
            link(here + 1, "next &rsaquo;", "next") + " " + link(sheet.pages, "last &raquo;") + " "
        )
    listing = "pages.html" if here > 1 else f"{PAGES_FOLDER}/pages.html"
    parts.append(f'<a href="{listing}">all {sheet.pages} pages</a></nav>')
    return "".join(parts)


def _head(title: str, sheet: _Sheet, *, shown: int) -> list[str]:
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="referrer" content="no-referrer">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="dreambooth-async">',
        f"<title>{title}</title><style>{STYLE}</style></head><body>",
        f"<header><h1>{_text(sheet.title)}</h1>",
        f'<div class="counts">{_counts(sheet)}</div>',
        '<label><input type="search" id="filter" placeholder="filter this page by prompt, '
        'seed, model, key…" autocomplete="off" aria-label="filter"></label> ',
        f'<span class="dim"><span id="shown">{shown}</span> shown</span>',
        "</header>",
    ]


def _shard_figure(shard: ShardPreview, up: str) -> str:
    name = _text(shard.name)
    if shard.image is not None:
        src = html.escape(up + urllib.parse.quote(shard.image), quote=True)
        alt = _text(shard.prompt or shard.name)
        image = f'<img src="{src}" alt="{alt}" loading="lazy" decoding="async">'
    else:
        image = f'<div class="noimage">{_text(shard.problem or "no preview")}</div>'
    parts = [f"<figure data-filter>{image}<figcaption>"]
    parts.append(f'<p class="prompt">{_text(shard.prompt)}</p>' if shard.prompt else "")
    href = html.escape(up + urllib.parse.quote(shard.name), quote=True)
    parts.append(f'<p class="glance"><a href="{href}">{name}</a></p>')
    fields = [(k, v) for k, v in shard.stats.items() if isinstance(v, str | int | float)]
    if shard.key:
        fields.insert(0, ("sample", shard.key))
    if fields:
        parts.append("<details><summary>shard</summary><dl>")
        parts.extend(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in fields)
        parts.append("</dl></details>")
    parts.append("</figcaption></figure>")
    return "".join(parts)


def _shards(shards: Sequence[ShardPreview], *, up: str, more: str | None) -> list[str]:
    if not shards:
        return []
    parts = [
        '<section id="shards"><h2>Shards: a preview sample of each</h2><div class="grid">',
        *(_shard_figure(shard, up) for shard in shards),
        "</div>",
    ]
    if more is not None:
        parts.append(f'<p><a href="{more}">all shards</a></p>')
    parts.append("</section>")
    return parts


def _first_page(sheet: _Sheet, pictures: Sequence[Picture]) -> str:
    title = _text(sheet.title)
    parts = _head(title, sheet, shown=len(pictures))
    if sheet.notes:
        parts.append('<ul class="notes">')
        parts.extend(f"<li>{_text(note)}</li>" for note in sheet.notes)
        parts.append("</ul>")
    problems = _problems(sheet.problems[:PROBLEMS_SHOWN])
    if len(sheet.problems) > PROBLEMS_SHOWN:
        problems.insert(
            -1,
            f'<p><a href="{PAGES_FOLDER}/problems.html">all {len(sheet.problems)} failed, '
            "ambiguous and unfinished items</a></p>",
        )
    parts.extend(problems)
    more = f"{PAGES_FOLDER}/shards.html" if len(sheet.shards) > SHARDS_SHOWN else None
    parts.extend(_shards(sheet.shards[:SHARDS_SHOWN], up="", more=more))
    parts.extend(_grid(sheet, pictures, 1, up=""))
    parts.append(f"<script>{SCRIPT}</script></body></html>\n")
    return "\n".join(parts)


def _grid(sheet: _Sheet, pictures: Sequence[Picture], here: int, *, up: str) -> list[str]:
    nav = _nav(sheet, here)
    if not pictures:
        return [f'<p class="dim">No images in this folder yet (no rows in {METADATA_NAME}).</p>']
    return [
        nav,
        '<main class="grid">',
        *(_figure(picture, up) for picture in pictures),
        "</main>",
        nav,
    ]


def _other_page(sheet: _Sheet, pictures: Sequence[Picture], here: int) -> str:
    title = _text(f"{sheet.title} · page {here}")
    parts = _head(title, sheet, shown=len(pictures))
    parts.extend(_grid(sheet, pictures, here, up="../"))
    parts.append(f"<script>{SCRIPT}</script></body></html>\n")
    return "\n".join(parts)


def _listing(sheet: _Sheet, title: str, body: Iterable[str]) -> str:
    parts = _head(_text(f"{sheet.title} · {title}"), sheet, shown=0)
    parts.append(f'<p><a href="../{GALLERY_NAME}">first page</a></p>')
    parts.extend(body)
    parts.append(f"<script>{SCRIPT}</script></body></html>\n")
    return "\n".join(parts)


def _pages_list(sheet: _Sheet) -> Iterator[str]:
    yield "<h2>All pages</h2><ol>"
    for number in range(1, sheet.pages + 1):
        first = (number - 1) * PAGE_SIZE + 1
        last = min(number * PAGE_SIZE, sheet.total)
        yield (
            f'<li data-filter><a href="{_link(number, 2)}">page {number}</a> '
            f'<span class="dim">images {first} to {last}</span></li>'
        )
    yield "</ol>"


def _write_atomically(path: Path, text: str) -> None:
    # A page that is being rewritten is never seen half-written: the new one replaces it whole.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _remove_stale(folder: Path, pages: int, *, problems: bool, shards: bool) -> None:
    """Remove pages an earlier, larger sheet left behind."""
    target = folder / PAGES_FOLDER
    if not target.is_dir():
        return
    for entry in os.scandir(target):
        match = _PAGE.match(entry.name)
        stale = (
            (match is not None and int(match.group(1)) > pages)
            or (entry.name == "pages.html" and pages <= 1)
            or (entry.name == "problems.html" and not problems)
            or (entry.name == "shards.html" and not shards)
        )
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
    with contextlib.suppress(OSError):
        target.rmdir()  # only when nothing is left in it


def write_gallery(folder: Path, *, manifest: Path | None = None, title: str | None = None) -> Path:
    """Write ``folder/index.html`` and, past :data:`PAGE_SIZE` images, the pages after it in
    ``folder/gallery/``: a contact sheet of the folder; returns the first page's path.

    ``manifest`` is the batch manifest when it is not ``folder/dreambooth-manifest.jsonl``.
    Works on any folder: without a manifest no failures are listed, without ``metadata.jsonl``
    the image files are shown by name. Pictures come in item order when the manifest knows the
    items (the order of the prompts file), then sample order; rows it does not know keep their
    order in ``metadata.jsonl``; image files no row names come last, by name. Each page is
    replaced whole. Raises ``NotADirectoryError``/``FileNotFoundError`` when ``folder`` is not
    a folder, and ``OSError`` when a page cannot be written.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"no such folder: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"not a folder: {folder}")
    notes: list[str] = []
    states = _read_states(manifest if manifest is not None else folder / MANIFEST_NAME, notes)
    try:
        rows = _Rows(folder, states, notes)
        problems = sorted(
            (s for s in states.unsettled() if s.status in ("failed", "ambiguous", *_UNFINISHED)),
            key=lambda s: (s.index if s.index is not None else sys.maxsize, s.key),
        )
    finally:
        states.close()
    shards = read_shard_previews(folder, folder / PAGES_FOLDER / "shards")
    total = len(rows)
    sheet = _Sheet(
        title=title if title is not None else f"{folder.name or folder} · dreambooth-async",
        total=total,
        pages=max(1, -(-total // PAGE_SIZE)),
        problems=tuple(problems),
        notes=tuple(notes),
        shards=tuple(shards),
    )
    many_problems = len(problems) > PROBLEMS_SHOWN
    many_shards = len(shards) > SHARDS_SHOWN
    if sheet.pages > 1 or many_problems or many_shards:
        (folder / PAGES_FOLDER).mkdir(exist_ok=True)
    for number in range(2, sheet.pages + 1):
        pictures = rows.pictures((number - 1) * PAGE_SIZE, number * PAGE_SIZE)
        _write_atomically(folder / _page_name(number), _other_page(sheet, pictures, number))
    if sheet.pages > 1:
        _write_atomically(
            folder / PAGES_FOLDER / "pages.html", _listing(sheet, "pages", _pages_list(sheet))
        )
    if many_problems:
        _write_atomically(
            folder / PAGES_FOLDER / "problems.html",
            _listing(sheet, "problems", _problems(problems)),
        )
    if many_shards:
        _write_atomically(
            folder / PAGES_FOLDER / "shards.html",
            _listing(sheet, "shards", _shards(shards, up="../", more=None)),
        )
    _remove_stale(folder, sheet.pages, problems=many_problems, shards=many_shards)
    target = folder / GALLERY_NAME
    _write_atomically(target, _first_page(sheet, rows.pictures(0, PAGE_SIZE)))
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
    is not a folder or the page cannot be written there."""
    folder = Path(args.folder).resolve()
    manifest = Path(args.manifest).resolve() if getattr(args, "manifest", None) else None
    try:
        path = write_gallery(folder, manifest=manifest, title=getattr(args, "title", None))
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
