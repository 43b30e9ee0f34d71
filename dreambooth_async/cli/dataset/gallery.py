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
:class:`~dreambooth_async._manifest.ManifestIndex`, so a folder of a million images is paged
in little memory.
A WebDataset folder (``NNNNN.tar`` shards) gets a preview sample of each shard
(:mod:`.gallery_shards`). This module reads the folder and writes the pages; their HTML is
:mod:`.gallery_pages`.

Everything shown comes from files in the folder; the manifest's error texts went through the
client's redactor when they were written, so they are shown as they are (the API key is in none
of these files). Pillow is not needed: the browser sizes the images.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from ..._digests import TextSet
from ..._exit import EXIT_OK, EXIT_USAGE
from ..._manifest import ManifestError, ManifestIndex, index_manifest
from ..._settings import MANIFEST_NAME, METADATA_NAME
from .atomic import write_atomically
from .gallery_pages import (
    GALLERY_NAME,
    PAGE_SIZE,
    PAGES_FOLDER,
    PROBLEMS_SHOWN,
    SHARDS_SHOWN,
    Picture,
    Sheet,
    first_page,
    listing,
    other_page,
    page_name,
    pages_list,
    problems_table,
    shards_section,
)
from .gallery_shards import read_shard_previews
from .report import report_path

__all__ = [
    "GALLERY_NAME",
    "PAGES_FOLDER",
    "PAGE_SIZE",
    "add_gallery_parser",
    "gallery_command",
    "write_gallery",
]

#: Image files in the folder that no metadata row names are shown too (an interrupted run, or a
#: folder that was not written by ``generate``).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
_PAGE = re.compile(r"^page-(\d+)\.html$")
_UNFINISHED = ("pending", "submitting", "not_landed", "submitted")


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
        names = []
        try:
            # Entry by entry: a folder of a million images is not listed into memory.
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    name = entry.name
                    if (
                        os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
                        and not name.startswith(".")
                        and name not in self.named
                        and entry.is_file()
                    ):
                        names.append(name)
        except OSError as exc:
            notes.append(f"the folder could not be listed: {exc}")
            return []
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


def _prompts_given(manifest: Path) -> int | None:
    """How many prompts the last run was given, from its report beside the manifest."""
    try:
        report = json.loads(report_path(manifest).read_bytes())
    except (OSError, ValueError):
        return None
    prompts = report.get("prompts") if isinstance(report, dict) else None
    return prompts if isinstance(prompts, int) and not isinstance(prompts, bool) else None


def write_gallery(
    folder: Path,
    *,
    manifest: Path | None = None,
    title: str | None = None,
    empty_ok: bool = True,
) -> Path:
    """Write ``folder/index.html`` and, past :data:`PAGE_SIZE` images, the pages after it in
    ``folder/gallery/``: a contact sheet of the folder; returns the first page's path.

    ``manifest`` is the batch manifest when it is not ``folder/dreambooth-manifest.jsonl``.
    Works on any folder: without a manifest no failures are listed, without ``metadata.jsonl``
    the image files are shown by name. Pictures come in item order when the manifest knows the
    items (the order of the prompts file), then sample order; rows it does not know keep their
    order in ``metadata.jsonl``; image files no row names come last, by name. Each page is
    replaced whole. Raises ``NotADirectoryError``/``FileNotFoundError`` when ``folder`` is not
    a folder (or, with ``empty_ok=False``, has nothing to show: no image, no metadata row, no
    manifest entry), and ``OSError`` when a page cannot be written.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"no such folder: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"not a folder: {folder}")
    notes: list[str] = []
    manifest = manifest if manifest is not None else folder / MANIFEST_NAME
    states = _read_states(manifest, notes)
    try:
        rows = _Rows(folder, states, notes)
        problems = sorted(
            (s for s in states.unsettled() if s.status in ("failed", "ambiguous", *_UNFINISHED)),
            key=lambda s: (s.index if s.index is not None else sys.maxsize, s.key),
        )
        known = len(states)
    finally:
        states.close()
    if not empty_ok and not len(rows) and not problems:
        raise FileNotFoundError(
            f"nothing to show in {folder}: no images, no {METADATA_NAME} rows and no batch "
            "manifest (is it the --out folder of a generate run?); no page written"
        )
    # A run the service stopped reads no more prompts: the manifest never heard of the rest.
    given = _prompts_given(manifest)
    not_started = max(0, given - known) if given is not None and known else 0
    if not_started:
        notes.append(
            f"{not_started} of the {given} prompts were never started (the run stopped "
            "first): run the same command again to go on"
        )
    shards = read_shard_previews(folder, folder / PAGES_FOLDER / "shards")
    total = len(rows)
    sheet = Sheet(
        title=title if title is not None else f"{folder.name or folder} · dreambooth-async",
        total=total,
        pages=max(1, -(-total // PAGE_SIZE)),
        problems=tuple(problems),
        notes=tuple(notes),
        shards=tuple(shards),
        not_started=not_started,
    )
    many_problems = len(problems) > PROBLEMS_SHOWN
    many_shards = len(shards) > SHARDS_SHOWN
    if sheet.pages > 1 or many_problems or many_shards:
        (folder / PAGES_FOLDER).mkdir(exist_ok=True)
    for number in range(2, sheet.pages + 1):
        pictures = rows.pictures((number - 1) * PAGE_SIZE, number * PAGE_SIZE)
        write_atomically(folder / page_name(number), other_page(sheet, pictures, number))
    if sheet.pages > 1:
        write_atomically(
            folder / PAGES_FOLDER / "pages.html", listing(sheet, "pages", pages_list(sheet))
        )
    if many_problems:
        write_atomically(
            folder / PAGES_FOLDER / "problems.html",
            listing(sheet, "problems", problems_table(problems)),
        )
    if many_shards:
        write_atomically(
            folder / PAGES_FOLDER / "shards.html",
            listing(sheet, "shards", shards_section(shards, up="../", more=None)),
        )
    _remove_stale(folder, sheet.pages, problems=many_problems, shards=many_shards)
    target = folder / GALLERY_NAME
    write_atomically(target, first_page(sheet, rows.pictures(0, PAGE_SIZE)))
    return target


# --- the command ------------------------------------------------------------------------------


def add_gallery_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``gallery DIR`` to the ``dreambooth-async`` subcommands (runs ``gallery_command``)."""
    parser = subparsers.add_parser(
        "gallery",
        help=f"write DIR/{GALLERY_NAME}, a contact sheet of an output folder",
        description=f"Write DIR/{GALLERY_NAME}: every image with its prompt, seed and "
        "parameters, the failed and ambiguous items with their errors, and a filter box; "
        f"past {PAGE_SIZE} images, the pages after the first go into DIR/{PAGES_FOLDER}/. "
        "Static pages: open them in a browser, no server or network needed.",
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
