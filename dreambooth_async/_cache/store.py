"""The SQLite file of the result cache: one row per request key, shared by every process."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from .._download import SessionSource
from .._models import ApiVersion, CachedResult, GenerationRequest, GenerationResult
from .._wire import parse_response, to_wire
from .files import keep_images

__all__ = ["CLAIM_TIMEOUT", "CacheRow", "CacheStats", "ResultCache", "cache_key"]

# Not part of what a request asks for: who is asking and where the answer goes.
_NOT_THE_REQUEST = ("key", "webhook", "track_id")
#: A claim older than this is from a process that died while submitting: what it sent may
#: have been accepted (and billed), so the row turns ambiguous instead of being taken over.
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

_COLUMNS = "key, state, owner, job_id, fetch_url, answer, files, updated"


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


@attrs.frozen
class CacheStats:
    """What a cache file holds: ``results`` finished, ``pending`` (claimed or submitted rows),
    and the stored ``images`` with their total ``image_bytes``."""

    results: int
    pending: int
    images: int
    image_bytes: int


@attrs.frozen
class CacheRow:
    """One row of the file: ``state`` is ``claimed``, ``submitted``, ``done`` or ``ambiguous``
    (a submission that may have been accepted, whose answer was lost: never sent again by the
    cache; ``dreambooth-async cache prune PATH --older-than 0`` lets it be)."""

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

    def row(self, key: str) -> CacheRow | None:
        """The row of ``key`` as it is now, or None."""
        found = self._db.execute(
            f"SELECT {_COLUMNS} FROM results WHERE key = ?",
            (key,),
        ).fetchone()
        return CacheRow(*found) if found is not None else None

    # --- the life of a row --------------------------------------------------------------------

    def claim(self, key: str) -> CacheRow | None:
        """None when this process now holds the claim on ``key`` (it should submit); else the
        row that someone else's work already put there."""
        now = time.time()
        with self._transaction() as db:
            row = self.row(key)
            if row is not None and row.state == "claimed" and now - row.updated > CLAIM_TIMEOUT:
                # Its process died between sending and recording the answer: it may have paid.
                db.execute(
                    "UPDATE results SET state = 'ambiguous', updated = ? WHERE key = ?",
                    (now, key),
                )
                return attrs.evolve(row, state="ambiguous", updated=now)
            if row is not None:
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

    def ambiguous(self, key: str) -> None:
        """This process's claim sent a submission that may have been accepted: keep the row,
        so that no process sends the request again behind the user's back."""
        self._db.execute(
            "UPDATE results SET state = 'ambiguous', updated = ? "
            "WHERE key = ? AND state = 'claimed' AND owner = ?",
            (time.time(), key, self.owner),
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
        self,
        key: str,
        result: GenerationResult,
        *,
        sessions: SessionSource,
        redact: Callable[[str], str],
    ) -> CachedResult:
        """Keep ``result`` (and its images) under ``key``; the cached form of it. ``sessions``
        fetches the images; ``redact`` masks the keys in what is kept."""
        row = self.row(key)
        if row is not None and row.state == "done" and row.answer is not None:
            return self.restore(row, sessions)  # another process was first
        files = await keep_images(result, self.images, sessions=sessions, redact=redact)
        answer = {
            **result.raw,
            "status": "success",
            "id": result.id,
            "output": list(result.output),
        }
        # Answers may echo what they were sent: the key never reaches the file.
        text = redact(json.dumps(answer, default=str))
        now = time.time()
        names = json.dumps([path.name for path in files])
        self._db.execute(
            "INSERT OR REPLACE INTO results (key, state, owner, job_id, answer, files, created, "
            "updated) VALUES (?, 'done', NULL, ?, ?, ?, ?, ?)",
            (key, result.id, text, names, now, now),
        )
        stored = self.row(key)
        assert stored is not None
        return self.restore(stored, sessions)

    def restore(self, row: CacheRow, sessions: SessionSource | None) -> CachedResult:
        """The cached result of a ``done`` row; it keeps ``sessions`` for ``save()``."""
        assert row.answer is not None
        result = parse_response(200, {}, row.answer.encode(), session=sessions, job_id=row.job_id)
        assert isinstance(result, GenerationResult)
        names: list[str] = json.loads(row.files or "[]")
        fields: dict[str, Any] = {
            str(f.alias): getattr(result, f.name) for f in attrs.fields(GenerationResult)
        }
        return CachedResult(**fields, files=tuple(self.images / name for name in names))

    def done_for(
        self, result: GenerationResult, sessions: SessionSource | None
    ) -> CachedResult | None:
        """The cached form of ``result`` (found by its job id), when its images are stored."""
        if result.id is None:
            return None
        found = self._db.execute(
            f"SELECT {_COLUMNS} FROM results WHERE job_id = ? AND state = 'done'",
            (result.id,),
        ).fetchone()
        if found is None:
            return None
        cached = self.restore(CacheRow(*found), sessions)
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
