"""``dreambooth-async cache stats|prune PATH``."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

import attrs

from .._cache import ResultCache

__all__ = ["add_cache_parser", "cache_command"]


def add_cache_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cache stats PATH`` and ``cache prune PATH --older-than DAYS`` (runs
    :func:`cache_command`)."""
    parser = subparsers.add_parser(
        "cache",
        help="inspect or trim a result cache (generate --cache PATH)",
        description="Inspect or trim the result cache of `generate --cache PATH`.",
    )
    parser.add_argument("action", choices=("stats", "prune"))
    parser.add_argument("path", metavar="PATH", help="the cache file")
    parser.add_argument(
        "--older-than",
        type=float,
        default=30.0,
        metavar="DAYS",
        help="prune: drop results stored more than DAYS ago, and unused images (default 30)",
    )
    parser.set_defaults(func=cache_command)


def cache_command(args: argparse.Namespace) -> int:
    """``dreambooth-async cache stats|prune PATH``: print what the cache holds (JSON) or
    trim it; exit 2 when PATH is not a cache file."""
    path = Path(args.path)
    if not path.is_file():
        print(f"dreambooth-async: error: no cache file at {path}", file=sys.stderr)
        return 2
    try:
        cache = ResultCache(path)
    except sqlite3.Error as exc:
        print(f"dreambooth-async: error: {path} is not a cache file ({exc})", file=sys.stderr)
        return 2
    try:
        if args.action == "prune":
            if not args.older_than >= 0:
                print("dreambooth-async: error: --older-than must be 0 or more", file=sys.stderr)
                return 2
            dropped = cache.prune(args.older_than * 86400.0)
            print(json.dumps({"dropped": dropped, **attrs.asdict(cache.stats())}))
        else:
            print(json.dumps(attrs.asdict(cache.stats())))
    finally:
        cache.close()
    return 0
