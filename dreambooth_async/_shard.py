"""Shards: split one stream of batch inputs among N processes with no coordination.

An item belongs to shard ``I`` of ``N`` (1-based) when the SHA-256 of its key, read as an
integer, is ``I - 1`` modulo ``N``. The key is the one the batch itself will use: the explicit
key of a ``(key, request)`` pair, else :func:`~dreambooth_async.request_key`. So the split
depends on nothing but the item: not on its position, not on the other items, not on the
process. A prompts file that grows at the end keeps every old item in its shard, and N
machines that each read the whole file take every item exactly once between them.

Identical requests without explicit keys have one key, so they land in the same shard; the
batch numbers their repeats there exactly as an unsharded run would.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import TypeVar, overload

from ._batch import BatchInput, request_key

__all__ = [
    "add_shard_argument",
    "item_key",
    "parse_shard",
    "shard",
    "shard_manifest_name",
    "shard_of",
]

_Input = TypeVar("_Input", bound=BatchInput)

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def shard_of(key: str, count: int) -> int:
    """The shard (1 to ``count``) that the item with ``key`` belongs to."""
    if count < 1:
        raise ValueError(f"shard count must be at least 1, got {count}")
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest, "big") % count + 1


def item_key(item: BatchInput) -> str:
    """The key a batch gives ``item`` (before numbering repeats of an identical request)."""
    if isinstance(item, tuple):
        return item[0]
    return request_key(item)


def _check(index: int, count: int) -> None:
    if isinstance(index, bool) or isinstance(count, bool):
        raise TypeError("shard index and count are integers")
    if count < 1:
        raise ValueError(f"shard count must be at least 1, got {count}")
    if not 1 <= index <= count:
        raise ValueError(f"shard index must be between 1 and {count}, got {index}")


@overload
def shard(requests: AsyncIterable[_Input], index: int, count: int) -> AsyncIterator[_Input]: ...


@overload
def shard(requests: Iterable[_Input], index: int, count: int) -> Iterator[_Input]: ...


def shard(
    requests: Iterable[_Input] | AsyncIterable[_Input], index: int, count: int
) -> Iterator[_Input] | AsyncIterator[_Input]:
    """The items of ``requests`` that belong to shard ``index`` of ``count`` (1-based).

    ``requests`` is what :meth:`DreamboothClient.map` takes: requests or ``(key, request)``
    pairs, a plain or an async iterable, read lazily. Run ``count`` processes, each with its own
    ``index`` and its own manifest, over the same input: every item is taken by exactly one of
    them, with no coordination, and each resumes on its own::

        items = dba.shard(requests, index=2, count=3)
        async with client.map(items, manifest="manifest-2-of-3.jsonl") as run:
            ...

    The split follows the item's key (see the module notes), so shard on the items you pass to
    the batch, keys included; with ``map(keys=...)`` pass ``(key, request)`` pairs instead.

    :raises ValueError: ``index`` is not between 1 and ``count``.
    """
    _check(index, count)
    if isinstance(requests, AsyncIterable):
        return _shard_async(requests, index, count)
    return (item for item in requests if shard_of(item_key(item), count) == index)


async def _shard_async(
    requests: AsyncIterable[_Input], index: int, count: int
) -> AsyncIterator[_Input]:
    async for item in requests:
        if shard_of(item_key(item), count) == index:
            yield item


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` as ``(I, N)``, 1-based: ``"1/3"`` is the first of three shards."""
    match = _SPEC.match(text)
    if match is None:
        raise ValueError(f"expected I/N (for example 1/3), got {text!r}")
    index, count = int(match[1]), int(match[2])
    _check(index, count)
    return index, count


def _shard_type(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_shard_argument(parser: argparse.ArgumentParser) -> None:
    """``--shard I/N`` on ``parser`` (``args.shard``: ``(I, N)`` or None)."""
    parser.add_argument(
        "--shard",
        type=_shard_type,
        metavar="I/N",
        help="take only shard I of N (1-based) of the prompts, split by each row's key: run N "
        "processes with 1/N ... N/N on the same file and each row is done by exactly one of "
        "them; each keeps its own manifest and resumes on its own",
    )


def shard_manifest_name(name: str, index: int, count: int) -> str:
    """``dreambooth-manifest.jsonl`` as ``dreambooth-manifest.shard-2-of-3.jsonl``."""
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        return f"{name}.shard-{index}-of-{count}"
    return f"{stem}.shard-{index}-of-{count}.{suffix}"
