"""The result cache: a seeded request that was paid for once is never paid for again.

``DreamboothClient(cache=PATH)`` keeps, in one SQLite file, every finished result of a request
with an explicit seed (a random seed asks for a new image by design, so it is never cached),
keyed by a hash of the request as it goes on the wire (model, prompt, every parameter), the API
version and the service origin; never the key, the webhook or the track id.

How a row lives (one row per key, shared by every process using the file):

- ``claimed``: a process is sending the submission now; others wait for its answer.
- ``submitted``: the service accepted it as job ``job_id``; others attach to that job.
- ``done``: the answer (the service's JSON, with the key redacted) and the stored images.

Images are kept content-addressed (``<sha256>.<ext>``) in the folder ``<name>-images`` beside
the database, fetched when the result is stored: the service's links expire (``temp`` links
after 24 h), the cached answer does not. A result that comes back from the cache is a
:class:`CachedResult`: a :class:`GenerationResult` whose ``output`` keeps the service's links
and whose ``files`` name the stored copies; its ``save()`` copies them, with no download.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ._download import safe_file_name, writable_folder
from ._errors import ClientClosedError
from ._models import DEFAULT_MAX_BYTES, ApiVersion, GenerationRequest, GenerationResult
from ._transport import logger
from ._wire import parse_response, to_wire

if TYPE_CHECKING:
    from ._client import DreamboothClient
    from ._poller import Job
    from ._transport import RetryPolicy

__all__ = [
    "CacheStats",
    "CachedResult",
    "ResultCache",
    "RunPlan",
    "add_cache_parser",
    "cache_command",
    "cache_key",
    "plan_run",
]

# Not part of what a request asks for: who is asking and where the answer goes.
_NOT_THE_REQUEST = ("key", "webhook", "track_id")
#: A claim older than this is from a process that died while submitting: it may be taken over.
CLAIM_TIMEOUT = 180.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    owner TEXT,
    job_id TEXT,
    fetch_url TEXT,
    answer TEXT,
    files TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_job ON results (job_id);
"""


def cache_key(request: GenerationRequest, api_version: ApiVersion, base_url: str) -> str | None:
    """The cache key of ``request`` (hex sha256), or None when it has no explicit seed."""
    if request.seed is None:
        return None
    body = {k: v for k, v in to_wire(request, api_version).items() if k not in _NOT_THE_REQUEST}
    canonical = {
        "kind": request.kind,
        "api_version": api_version,
        "origin": base_url.rstrip("/"),
        "body": body,
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@attrs.frozen(kw_only=True)
class CachedResult(GenerationResult):
    """A :class:`GenerationResult` kept by the cache. ``files`` are the stored copies of the
    images, one per ``output`` entry (empty when they could not be fetched when stored)."""

    files: tuple[Path, ...] = attrs.field(default=(), repr=False)

    async def save(
        self,
        directory: str | os.PathLike[str],
        *,
        not_found_grace: float = 30.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> list[Path]:
        """Copy the stored images into ``directory`` (no download); the links are used only
        when a stored copy is missing."""
        if len(self.files) != len(self.output) or not all(p.is_file() for p in self.files):
            return await super().save(
                directory, not_found_grace=not_found_grace, max_bytes=max_bytes
            )
        return copy_files(self, directory)


def copy_files(result: CachedResult, directory: str | os.PathLike[str]) -> list[Path]:
    """Copy ``result.files`` into ``directory``, named like a download of ``output`` would be."""
    folder = writable_folder(directory)
    paths: list[Path] = []
    taken: set[str] = set()
    for index, (url, source) in enumerate(zip(result.output, result.files, strict=True)):
        stem = (
            safe_file_name(url, f"{result.id or 'image'}-{index}")
            if url.startswith(("http://", "https://"))
            else f"{result.id or 'image'}-{index}"
        )
        stem = stem.rsplit(".", 1)[0] if "." in stem else stem
        name = stem + source.suffix
        number = 1
        while name.lower() in taken:
            number += 1
            name = f"{stem}-{number}{source.suffix}"
        taken.add(name.lower())
        target = folder / name
        partial = folder / f".{name}.{uuid.uuid4().hex[:8]}.part"
        try:
            shutil.copyfile(source, partial)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        paths.append(target)
    return paths


@attrs.frozen
class CacheStats:
    """What a cache file holds: ``results`` finished, ``pending`` (claimed or submitted rows),
    and the stored ``images`` with their total ``image_bytes``."""

    results: int
    pending: int
    images: int
    image_bytes: int


@attrs.frozen
class _Row:
    key: str
    state: str
    owner: str | None
    job_id: str | None
    fetch_url: str | None
    answer: str | None
    files: str | None
    updated: float


class ResultCache:
    """The SQLite file and the image folder beside it (see the module docs). Safe for several
    processes: WAL, a busy timeout, and claims taken in ``BEGIN IMMEDIATE`` transactions."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.images = self.path.parent / f"{self.path.stem}-images"
        #: Who holds this process's claims (a process may open the file twice: each is one).
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._db = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA busy_timeout = 30000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"<ResultCache {str(self.path)!r}>"

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _row(self, key: str) -> _Row | None:
        found = self._db.execute(
            "SELECT key, state, owner, job_id, fetch_url, answer, files, updated "
            "FROM results WHERE key = ?",
            (key,),
        ).fetchone()
        return _Row(*found) if found is not None else None

    # --- the life of a row --------------------------------------------------------------------

    def claim(self, key: str) -> _Row | None:
        """None when this process now holds the claim on ``key`` (it should submit); else the
        row that someone else's work already put there."""
        now = time.time()
        with self._transaction() as db:
            row = self._row(key)
            if row is not None and not (
                row.state == "claimed" and now - row.updated > CLAIM_TIMEOUT
            ):
                return row
            db.execute(
                "INSERT OR REPLACE INTO results (key, state, owner, created, updated) "
                "VALUES (?, 'claimed', ?, ?, ?)",
                (key, self.owner, now, now),
            )
        return None

    def submitted(self, key: str, job_id: str, fetch_url: str | None) -> None:
        self._db.execute(
            "UPDATE results SET state = 'submitted', job_id = ?, fetch_url = ?, updated = ? "
            "WHERE key = ? AND state != 'done'",
            (job_id, fetch_url, time.time(), key),
        )

    def release(self, key: str, *, job_id: str | None = None) -> None:
        """Forget an unfinished row: this process's claim, or the row of ``job_id`` (failed)."""
        if job_id is None:
            self._db.execute(
                "DELETE FROM results WHERE key = ? AND state = 'claimed' AND owner = ?",
                (key, self.owner),
            )
        else:
            self._db.execute(
                "DELETE FROM results WHERE key = ? AND state = 'submitted' AND job_id = ?",
                (key, job_id),
            )

    async def store(
        self, key: str, result: GenerationResult, client: DreamboothClient
    ) -> CachedResult:
        """Keep ``result`` (and its images) under ``key``; the cached form of it."""
        row = self._row(key)
        if row is not None and row.state == "done" and row.answer is not None:
            return self.restore(row, client)  # another process was first
        files = await self._keep_images(result, client)
        answer = {
            **result.raw,
            "status": "success",
            "id": result.id,
            "output": list(result.output),
        }
        # Answers may echo what they were sent: the key never reaches the file.
        text = client._transport.redact(json.dumps(answer, default=str))
        now = time.time()
        names = json.dumps([path.name for path in files])
        self._db.execute(
            "INSERT OR REPLACE INTO results (key, state, owner, job_id, answer, files, created, "
            "updated) VALUES (?, 'done', NULL, ?, ?, ?, ?, ?)",
            (key, result.id, text, names, now, now),
        )
        stored = self._row(key)
        assert stored is not None
        return self.restore(stored, client)

    async def _keep_images(
        self, result: GenerationResult, client: DreamboothClient
    ) -> tuple[Path, ...]:
        """The images of ``result`` in the content-addressed folder (best effort: a failure
        leaves the links as the only copy, and says so)."""
        from ._download import download_result

        staging = self.images / f".staging-{uuid.uuid4().hex[:12]}"
        try:
            paths = await download_result(result, staging, client=client)
            kept: list[Path] = []
            for path in paths:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                target = self.images / f"{digest}{path.suffix.lower()}"
                os.replace(path, target)
                kept.append(target)
            return tuple(kept)
        except Exception as error:
            logger.warning(
                "cache: the images of job %s were not stored (%s); a later hit has only links",
                result.id,
                client._transport.redact(str(error)),
            )
            return ()
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def restore(self, row: _Row, client: DreamboothClient | None) -> CachedResult:
        assert row.answer is not None
        result = parse_response(200, {}, row.answer.encode(), client=client, job_id=row.job_id)
        assert isinstance(result, GenerationResult)
        names: list[str] = json.loads(row.files or "[]")
        fields: dict[str, Any] = {
            str(f.alias): getattr(result, f.name) for f in attrs.fields(GenerationResult)
        }
        return CachedResult(**fields, files=tuple(self.images / name for name in names))

    def done_for(self, result: GenerationResult, client: DreamboothClient) -> CachedResult | None:
        """The cached form of ``result`` (found by its job id), when its images are stored."""
        if result.id is None:
            return None
        found = self._db.execute(
            "SELECT key, state, owner, job_id, fetch_url, answer, files, updated FROM results "
            "WHERE job_id = ? AND state = 'done'",
            (result.id,),
        ).fetchone()
        if found is None:
            return None
        cached = self.restore(_Row(*found), client)
        if cached.output != result.output or len(cached.files) != len(cached.output):
            return None
        return cached

    # --- inspecting and trimming --------------------------------------------------------------

    def stats(self) -> CacheStats:
        done, pending = self._db.execute(
            "SELECT COALESCE(SUM(state = 'done'), 0), COALESCE(SUM(state != 'done'), 0) "
            "FROM results"
        ).fetchone()
        images = [p for p in self.images.glob("*") if p.is_file() and not p.name.startswith(".")]
        return CacheStats(
            results=int(done),
            pending=int(pending),
            images=len(images),
            image_bytes=sum(p.stat().st_size for p in images),
        )

    def prune(self, older_than: float) -> int:
        """Drop results stored more than ``older_than`` seconds ago (and unfinished rows as
        old), then every image no remaining result names; the number of results dropped."""
        cutoff = time.time() - older_than
        with self._transaction() as db:
            dropped = db.execute("DELETE FROM results WHERE updated < ?", (cutoff,)).rowcount
            names: set[str] = set()
            for (files,) in db.execute("SELECT files FROM results WHERE files IS NOT NULL"):
                names.update(json.loads(files))
        if self.images.is_dir():
            for path in self.images.iterdir():
                if path.is_file() and path.name not in names and not path.name.startswith("."):
                    path.unlink(missing_ok=True)
        return int(dropped)


# --- the client's side: one submission per seeded request ------------------------------------


@attrs.define
class _Flight:
    """One cached request being resolved in this process: every caller shares it."""

    answer: asyncio.Future[GenerationResult | Job]
    final: asyncio.Future[GenerationResult]
    task: asyncio.Task[None] | None = None


def _quiet(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _settle(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


async def cached_answer(
    client: DreamboothClient,
    cache: ResultCache,
    request: GenerationRequest,
    *,
    timeout: float | None,
    retry: RetryPolicy | None,
    final: bool,
) -> GenerationResult | Job | None:
    """The cache's part of ``submit`` (``final=False``: the answer, a result or the job) and
    ``generate`` (``final=True``: the result). None when ``request`` is not cacheable."""
    key = cache_key(request, client.api_version, client.base_url)
    if key is None:
        return None
    flights: dict[str, _Flight] = client._flights
    flight = flights.get(key)
    if flight is None:
        loop = asyncio.get_running_loop()
        flight = _Flight(loop.create_future(), loop.create_future())
        flight.answer.add_done_callback(_quiet)
        flight.final.add_done_callback(_quiet)
        flights[key] = flight
        # Its own task: a caller that gives up must not take the shared submission with it.
        flight.task = loop.create_task(
            _fly(client, cache, key, request, flight, timeout=timeout, retry=retry),
            name="dreambooth-cache",
        )
        flight.task.add_done_callback(lambda _: flights.pop(key, None))
    if final:
        return await asyncio.shield(flight.final)
    return await asyncio.shield(flight.answer)


async def _fly(
    client: DreamboothClient,
    cache: ResultCache,
    key: str,
    request: GenerationRequest,
    flight: _Flight,
    *,
    timeout: float | None,
    retry: RetryPolicy | None,
) -> None:
    try:
        await _resolve(client, cache, key, request, flight, timeout=timeout, retry=retry)
    except asyncio.CancelledError:
        closed = ClientClosedError("the client closed while the request was in flight")
        _settle(flight.answer, closed)
        _settle(flight.final, closed)
        raise
    except BaseException as error:
        _settle(flight.answer, error)
        _settle(flight.final, error)


async def _resolve(
    client: DreamboothClient,
    cache: ResultCache,
    key: str,
    request: GenerationRequest,
    flight: _Flight,
    *,
    timeout: float | None,
    retry: RetryPolicy | None,
) -> None:
    delay = 0.02
    attached = False
    while True:
        row = cache.claim(key)
        if row is None:
            break  # ours to submit
        if row.state == "done":
            cached = cache.restore(row, client)
            logger.debug("cache hit for job %s", cached.id)
            flight.answer.set_result(cached)
            flight.final.set_result(cached)
            return
        if row.state == "submitted" and row.job_id:
            # Another process (or an earlier run) paid for it: follow its job.
            job = client.attach(row.job_id, timeout=timeout, fetch_url=row.fetch_url)
            attached = True
            break
        # Claimed by another process that is sending it now: its answer is a moment away.
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    if not attached:
        try:
            answer = await client._send(request, timeout=timeout, retry=retry)
        except BaseException:
            cache.release(key)
            raise
        if isinstance(answer, GenerationResult):
            stored = await _store(cache, key, answer, client)
            flight.answer.set_result(stored)
            flight.final.set_result(stored)
            return
        job = answer
        cache.submitted(key, job.id, job._state.fetch_url)
    flight.answer.set_result(job)
    try:
        result = await job.wait()
    except BaseException as error:
        if not isinstance(error, asyncio.CancelledError):
            cache.release(key, job_id=job.id)
        raise
    flight.final.set_result(await _store(cache, key, result, client))


async def _store(
    cache: ResultCache, key: str, result: GenerationResult, client: DreamboothClient
) -> GenerationResult:
    try:
        return await cache.store(key, result, client)
    except (OSError, sqlite3.Error) as error:
        # The image was paid for and is here: a cache that cannot keep it must not lose it.
        logger.warning("cache: could not store job %s: %s", result.id, error)
        return result


# --- what a run would cost (``--dry-run``) -----------------------------------------------------


@attrs.frozen
class RunPlan:
    """What a batch would do, without submitting: ``items`` read; ``submissions`` it would
    send and their ``images`` (samples count); ``cached`` items the result cache answers;
    ``done`` and ``in_flight`` items an earlier run's manifest covers; ``over_budget`` items
    ``max_images`` would leave pending."""

    items: int = 0
    submissions: int = 0
    images: int = 0
    cached: int = 0
    done: int = 0
    in_flight: int = 0
    over_budget: int = 0

    def to_json(self) -> dict[str, int]:
        return attrs.asdict(self)


def plan_run(
    requests: Iterable[GenerationRequest | tuple[str, GenerationRequest]],
    *,
    api_version: ApiVersion,
    base_url: str,
    cache: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    max_images: int | None = None,
) -> RunPlan:
    """The :class:`RunPlan` of ``client.map(requests, manifest=..., max_images=...)`` with a
    client using ``cache``: reads the files, contacts nobody. Items are keyed as the batch keys
    them (``request_key``, repeats numbered, when no explicit key is given)."""
    from ._batch import _images_paid, request_key
    from ._manifest import read_manifest

    states = read_manifest(manifest) if manifest is not None and Path(manifest).exists() else {}
    store = ResultCache(cache) if cache is not None and Path(cache).exists() else None
    counts = dict.fromkeys(attrs.fields_dict(RunPlan), 0)
    spent = 0
    if max_images is not None and states:
        spent = _images_paid(states.values())
    seen: dict[str, int] = {}
    try:
        for raw in requests:
            counts["items"] += 1
            if isinstance(raw, tuple):
                key, request = raw
            else:
                request = raw
                key = request_key(request)
                seen[key] = seen.get(key, 0) + 1
                if manifest is not None and seen[key] > 1:
                    key = f"{key}.{seen[key]}"
            state = states.get(key)
            if state is not None and state.status == "done":
                counts["done"] += 1
                continue
            if state is not None and state.status == "submitted":
                counts["in_flight"] += 1
                continue
            hit = cache_key(request, api_version, base_url) if store is not None else None
            if store is not None and hit is not None:
                row = store._row(hit)
                if row is not None and row.state != "claimed":
                    counts["cached"] += 1
                    continue
            if max_images is not None and spent + request.samples > max_images:
                counts["over_budget"] += 1
                continue
            spent += request.samples
            counts["submissions"] += 1
            counts["images"] += request.samples
    finally:
        if store is not None:
            store.close()
    return RunPlan(**counts)


# --- ``dreambooth-async cache stats|prune`` ----------------------------------------------------


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
