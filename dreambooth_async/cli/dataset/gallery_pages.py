"""The gallery's pages: the HTML of a sheet of pictures, the first page, the others, the page
list, the problems and the shard previews (see :mod:`.gallery`, which reads the folder and
writes them).

Every value from the folder's files is escaped as text; the pages link to each other and to
the images by relative paths only, and a Content-Security-Policy lets nothing but the pages'
own hashed style and script run.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from ..._manifest import ItemState
from ..._settings import METADATA_NAME
from .gallery_assets import SCRIPT, STYLE
from .gallery_shards import ShardPreview

__all__ = [
    "GALLERY_NAME",
    "PAGES_FOLDER",
    "PAGE_SIZE",
    "PROBLEMS_SHOWN",
    "SHARDS_SHOWN",
    "Picture",
    "Sheet",
    "first_page",
    "listing",
    "other_page",
    "page_name",
    "pages_list",
    "problems_table",
    "shards_section",
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
class Sheet:
    """What every page shares: the title, the counts, the notes, the problems, the shards."""

    title: str
    total: int
    pages: int
    problems: Sequence[ItemState]
    notes: Sequence[str]
    shards: Sequence[ShardPreview]
    #: Prompts of the last run that its manifest does not know: the run stopped before them.
    not_started: int = 0


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


def _counts(sheet: Sheet) -> str:
    statuses = [s.status for s in sheet.problems]
    failed = statuses.count("failed")
    ambiguous = statuses.count("ambiguous")
    unfinished = len(statuses) - failed - ambiguous + sheet.not_started
    return (
        f"{sheet.total} images · {failed} failed · {ambiguous} ambiguous · {unfinished} unfinished"
    )


def problems_table(problems: Iterable[ItemState]) -> list[str]:
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


def page_name(number: int) -> str:
    return GALLERY_NAME if number == 1 else f"{PAGES_FOLDER}/page-{number:05d}.html"


def _link(number: int, here: int) -> str:
    """The relative address of page ``number`` from page ``here``."""
    if here == 1:
        return page_name(number)
    return f"../{GALLERY_NAME}" if number == 1 else f"page-{number:05d}.html"


def _nav(sheet: Sheet, here: int) -> str:
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


def _head(title: str, sheet: Sheet, *, shown: int) -> list[str]:
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


def shards_section(shards: Sequence[ShardPreview], *, up: str, more: str | None) -> list[str]:
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


def first_page(sheet: Sheet, pictures: Sequence[Picture]) -> str:
    title = _text(sheet.title)
    parts = _head(title, sheet, shown=len(pictures))
    if sheet.notes:
        parts.append('<ul class="notes">')
        parts.extend(f"<li>{_text(note)}</li>" for note in sheet.notes)
        parts.append("</ul>")
    problems = problems_table(sheet.problems[:PROBLEMS_SHOWN])
    if len(sheet.problems) > PROBLEMS_SHOWN:
        problems.insert(
            -1,
            f'<p><a href="{PAGES_FOLDER}/problems.html">all {len(sheet.problems)} failed, '
            "ambiguous and unfinished items</a></p>",
        )
    parts.extend(problems)
    more = f"{PAGES_FOLDER}/shards.html" if len(sheet.shards) > SHARDS_SHOWN else None
    parts.extend(shards_section(sheet.shards[:SHARDS_SHOWN], up="", more=more))
    parts.extend(_grid(sheet, pictures, 1, up=""))
    parts.append(f"<script>{SCRIPT}</script></body></html>\n")
    return "\n".join(parts)


def _grid(sheet: Sheet, pictures: Sequence[Picture], here: int, *, up: str) -> list[str]:
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


def other_page(sheet: Sheet, pictures: Sequence[Picture], here: int) -> str:
    title = _text(f"{sheet.title} · page {here}")
    parts = _head(title, sheet, shown=len(pictures))
    parts.extend(_grid(sheet, pictures, here, up="../"))
    parts.append(f"<script>{SCRIPT}</script></body></html>\n")
    return "\n".join(parts)


def listing(sheet: Sheet, title: str, body: Iterable[str]) -> str:
    parts = _head(_text(f"{sheet.title} · {title}"), sheet, shown=0)
    parts.append(f'<p><a href="../{GALLERY_NAME}">first page</a></p>')
    parts.extend(body)
    parts.append(f"<script>{SCRIPT}</script></body></html>\n")
    return "\n".join(parts)


def pages_list(sheet: Sheet) -> Iterator[str]:
    yield "<h2>All pages</h2><ol>"
    for number in range(1, sheet.pages + 1):
        first = (number - 1) * PAGE_SIZE + 1
        last = min(number * PAGE_SIZE, sheet.total)
        yield (
            f'<li data-filter><a href="{_link(number, 2)}">page {number}</a> '
            f'<span class="dim">images {first} to {last}</span></li>'
        )
    yield "</ol>"
