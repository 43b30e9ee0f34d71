"""A preview sample of each WebDataset shard of an output folder, for the gallery.

``generate --output-format webdataset`` writes numbered shards, ``NNNNN.tar`` with
``NNNNN_stats.json`` beside each; a sample is the files of one key, side by side in the tar
(``KEY.png``, ``KEY.txt`` the prompt, ``KEY.json`` its metadata row). A browser cannot show an
image inside a tar, so the gallery copies one image out of each shard (the first sample that
has one) into ``gallery/shards/NNNNN.<ext>``, reading the tar no further than that sample.
Nothing in a tar names where anything is written: the file is named after the shard's number.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from .atomic import write_atomically

__all__ = ["ShardPreview", "read_shard_previews"]

_SHARD = re.compile(r"^(\d+)\.tar$")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
#: The most bytes read of one sample's text or metadata, and of a preview image.
_MAX_TEXT = 64 * 1024
_MAX_IMAGE = 64 * 1024 * 1024


@attrs.frozen(kw_only=True)
class ShardPreview:
    """One shard: its file, its stats, and the sample shown for it (if one could be read)."""

    #: The shard's file name (``00000.tar``).
    name: str
    #: ``NNNNN_stats.json``, when it is there and is a JSON object.
    stats: Mapping[str, Any]
    #: Where the preview image was copied, relative to the folder (None: no image in it).
    image: str | None = None
    #: The sample's key, prompt (``KEY.txt``) and metadata row (``KEY.json``).
    key: str | None = None
    prompt: str | None = None
    row: Mapping[str, Any] = attrs.field(factory=dict)
    #: Why the shard could not be read, if it could not.
    problem: str | None = None


def _stats(path: Path) -> Mapping[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes | None:
    if not member.isfile() or member.size > limit:
        return None
    handle = tar.extractfile(member)
    return handle.read() if handle is not None else None


def _first_sample(tar: tarfile.TarFile) -> dict[str, tuple[str, bytes]]:
    """The files of the first sample that has an image: extension -> (member name, bytes)."""
    current: str | None = None
    files: dict[str, tuple[str, bytes]] = {}
    while (member := tar.next()) is not None:
        base = member.name.rsplit("/", 1)[-1]
        key, dot, extension = base.partition(".")
        if not dot:
            continue
        if key != current:
            if any(s in files for s in _IMAGE_SUFFIXES):
                return files  # the sample is complete: its files are side by side
            current, files = key, {}
        suffix = "." + extension.lower()
        limit = _MAX_IMAGE if suffix in _IMAGE_SUFFIXES else _MAX_TEXT
        data = _read(tar, member, limit)
        if data is not None:
            files[suffix] = (key, data)
    return files if any(s in files for s in _IMAGE_SUFFIXES) else {}


def _preview(folder: Path, tar_path: Path, number: str, target: Path) -> ShardPreview:
    stats = _stats(folder / f"{number}_stats.json")
    try:
        with tarfile.open(tar_path, "r:") as tar:
            files = _first_sample(tar)
    except (OSError, tarfile.TarError) as exc:
        return ShardPreview(name=tar_path.name, stats=stats, problem=f"cannot read: {exc}")
    if not files:
        return ShardPreview(name=tar_path.name, stats=stats, problem="no image in it")
    suffix = next(s for s in _IMAGE_SUFFIXES if s in files)
    key, image = files[suffix]
    target.mkdir(parents=True, exist_ok=True)
    write_atomically(target / f"{number}{suffix}", image)
    prompt = files[".txt"][1].decode("utf-8", "replace") if ".txt" in files else None
    row: Mapping[str, Any] = {}
    if ".json" in files:
        with contextlib.suppress(ValueError):
            loaded = json.loads(files[".json"][1])
            row = loaded if isinstance(loaded, dict) else {}
    return ShardPreview(
        name=tar_path.name,
        stats=stats,
        image=(target / f"{number}{suffix}").relative_to(folder).as_posix(),
        key=key,
        prompt=prompt,
        row=row,
    )


def read_shard_previews(folder: Path, target: Path) -> list[ShardPreview]:
    """A :class:`ShardPreview` for each ``NNNNN.tar`` in ``folder``, in shard order; preview
    images go into ``target`` (inside ``folder``), and old ones of shards gone are removed."""
    try:
        names = sorted(entry.name for entry in os.scandir(folder) if _SHARD.match(entry.name))
    except OSError:
        return []
    previews = []
    for name in names:
        match = _SHARD.match(name)
        assert match is not None
        previews.append(_preview(folder, folder / name, match.group(1), target))
    if target.is_dir():
        kept = {p.image.rsplit("/", 1)[-1] for p in previews if p.image is not None}
        for entry in os.scandir(target):
            if entry.name not in kept and not entry.name.startswith("."):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
    return previews
