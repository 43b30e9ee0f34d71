"""The result cache against the emulator over real HTTP on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import dreambooth_async as dba
from dreambooth_async._cache import CachedResult, ResultCache, cache_key
from dreambooth_async.emulator import DEFAULT_KEY, CostModel, Emulator, EmulatorConfig

pytestmark = pytest.mark.anyio

SCALE = 0.01


def fixed_cost(seconds: float) -> CostModel:
    return CostModel(base=seconds, per_step=0, per_sample=0, per_megapixel=0, noise=0)


def emulator(**config: Any) -> Emulator:
    config.setdefault("time_scale", SCALE)
    config.setdefault("cost", fixed_cost(20))  # 0.2 s real: long enough to be "processing"
    config.setdefault("sync_window", 0.0)
    return Emulator(EmulatorConfig(**config))


@contextlib.asynccontextmanager
async def client_for(
    emu: Emulator | str, cache: Path | None
) -> AsyncIterator[dba.DreamboothClient]:
    base_url = emu if isinstance(emu, str) else emu.base_url
    async with dba.DreamboothClient(
        DEFAULT_KEY, base_url=base_url, poll=dba.PollPolicy().scaled(SCALE), cache=cache
    ) as client:
        yield client


def req(seed: int | None = 5, prompt: str = "a lighthouse at dusk") -> dba.Text2Img:
    return dba.Text2Img(model_id="midjourney", prompt=prompt, seed=seed)


async def test_a_seeded_request_is_paid_for_once_across_clients_and_saves_offline(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cache.sqlite"
    async with emulator() as emu:
        async with client_for(emu, db) as first:
            paid = await first.generate(req())
        async with client_for(emu, db) as second:
            again = await second.generate(req())
        assert emu.stats.submissions_accepted == 1
    assert isinstance(again, CachedResult)
    assert again.id == paid.id and again.output == paid.output and again.seed == paid.seed
    # The service is gone (its links with it): the stored copies still save.
    assert len(again.files) == 1 and again.files[0].parent == tmp_path / "cache-images"
    saved = await again.save(tmp_path / "out")
    assert [p.read_bytes() for p in saved] == [again.files[0].read_bytes()]
    assert saved[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_random_seeds_and_other_parameters_are_new_requests(tmp_path: Path) -> None:
    db = tmp_path / "cache.sqlite"
    async with emulator() as emu, client_for(emu, db) as client:
        await client.generate(req(seed=None))
        await client.generate(req(seed=None))
        await client.generate(req(seed=1))
        await client.generate(req(seed=2))
        await client.generate(req(seed=2, prompt="another prompt"))
        await client.generate(req(seed=2))  # the only hit
        assert emu.stats.submissions_accepted == 5
    assert cache_key(req(seed=None), "v6", "http://x") is None
    # Origin and API version are part of the key; the key is not.
    assert cache_key(req(), "v6", "http://a") != cache_key(req(), "v6", "http://b")
    assert cache_key(req(), "v6", "http://a") != cache_key(req(), "v7", "http://a")


async def test_identical_requests_in_flight_share_one_submission(tmp_path: Path) -> None:
    async with emulator() as emu, client_for(emu, tmp_path / "c.sqlite") as client:
        results = await asyncio.gather(*(client.generate(req()) for _ in range(4)))
        jobs = await asyncio.gather(*(client.submit(req(seed=9)) for _ in range(3)))
        assert len({job.id for job in jobs}) == 1
        await asyncio.gather(*(job.wait() for job in jobs))
        assert emu.stats.submissions_accepted == 2
        assert emu.stats.duplicate_requests() == {}
    assert len({r.id for r in results}) == 1


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    import dreambooth_async as dba

    async def main() -> None:
        base_url, db, key = sys.argv[1], sys.argv[2], sys.argv[3]
        async with dba.DreamboothClient(
            key, base_url=base_url, poll=dba.PollPolicy().scaled(0.01), cache=db
        ) as client:
            result = await client.generate(
                dba.Text2Img(model_id="midjourney", prompt="two processes, one image", seed=77)
            )
            print(result.id, flush=True)

    asyncio.run(main())
    """
)


async def test_two_processes_reach_the_service_once(tmp_path: Path) -> None:
    db = tmp_path / "shared.sqlite"
    # Long enough (1 s real) that the second process starts while the first job runs.
    async with emulator(cost=fixed_cost(100)) as emu:
        children = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _CHILD,
                emu.base_url,
                str(db),
                DEFAULT_KEY,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(2)
        ]
        outputs = await asyncio.wait_for(
            asyncio.gather(*(child.communicate() for child in children)), timeout=60
        )
        assert [child.returncode for child in children] == [0, 0], outputs
        ids = {out.decode().strip() for out, _err in outputs}
        assert len(ids) == 1
        assert emu.stats.submissions_accepted == 1
        assert list(emu.stats.accepted_by_request.values()) == [1]


async def test_the_key_is_never_stored(tmp_path: Path) -> None:
    db = tmp_path / "cache.sqlite"
    async with emulator() as emu, client_for(emu, db) as client:
        await client.generate(req())
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT * FROM results").fetchall()
    assert rows and DEFAULT_KEY not in json.dumps(rows)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert DEFAULT_KEY.encode() not in path.read_bytes(), path


async def test_a_failed_job_is_not_cached(tmp_path: Path) -> None:
    db = tmp_path / "cache.sqlite"
    async with emulator() as emu, client_for(emu, db) as client:
        bad = dba.Text2Img(model_id="no-such-model", prompt="x", seed=3)
        for _ in range(2):
            with pytest.raises(dba.DreamboothError):
                await client.generate(bad)
        assert ResultCache(db).stats().pending == 0
        del emu


async def test_batch_downloads_come_from_the_stored_copies(tmp_path: Path) -> None:
    db = tmp_path / "cache.sqlite"
    requests = [req(seed=i, prompt=f"item {i}") for i in range(3)]
    async with emulator() as emu:
        async with client_for(emu, db) as client:
            await client.gather(requests, download_to=tmp_path / "first")
        assert emu.stats.submissions_accepted == 3
        gone = emu.base_url
    # The service is gone: the rerun is answered and saved from the cache alone.
    async with client_for(gone, db) as client:
        items = await client.gather(requests, download_to=tmp_path / "second")
    assert all(item.ok and len(item.files) == 1 for item in items)
    assert all(isinstance(item.result, CachedResult) for item in items)


def test_stats_and_prune(tmp_path: Path) -> None:
    db = tmp_path / "cache.sqlite"
    cache = ResultCache(db)
    cache.images.mkdir()
    (cache.images / "deadbeef.png").write_bytes(b"x" * 10)
    cache._db.execute(
        "INSERT INTO results (key, state, answer, files, created, updated) "
        "VALUES ('k', 'done', '{}', ?, 0, 0)",
        (json.dumps(["deadbeef.png"]),),
    )
    assert cache.stats() == dba.CacheStats(results=1, pending=0, images=1, image_bytes=10)
    assert cache.prune(older_than=3600) == 1
    assert cache.stats() == dba.CacheStats(results=0, pending=0, images=0, image_bytes=0)
    cache.close()


async def test_plan_and_cache_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from dreambooth_async._batch import plan_run
    from dreambooth_async.cli.cache import cache_command

    db = tmp_path / "cache.sqlite"
    requests = [req(seed=i, prompt=f"p {i}") for i in range(3)] + [req(seed=None)]
    async with emulator() as emu, client_for(emu, db) as client:
        await client.generate(requests[0])
        plan = plan_run(
            requests, api_version=client.api_version, base_url=client.base_url, cache=db
        )
    assert (plan.items, plan.cached, plan.submissions, plan.images) == (4, 1, 3, 3)

    assert cache_command(argparse.Namespace(action="stats", path=str(db), older_than=30)) == 0
    assert json.loads(capsys.readouterr().out) == {
        "results": 1,
        "pending": 0,
        "images": 1,
        "image_bytes": (next((tmp_path / "cache-images").iterdir())).stat().st_size,
    }
    assert cache_command(argparse.Namespace(action="prune", path=str(db), older_than=0)) == 0
    assert json.loads(capsys.readouterr().out)["dropped"] == 1
    assert not any((tmp_path / "cache-images").iterdir())
    missing = argparse.Namespace(action="stats", path=str(tmp_path / "nope"), older_than=1)
    assert cache_command(missing) == 2


async def test_a_submission_whose_answer_was_lost_is_never_sent_again_by_the_cache(
    tmp_path: Path,
) -> None:
    # The emulator accepts the job, then drops the connection: it may have paid.
    from dreambooth_async.emulator import FaultConfig

    db = tmp_path / "cache.sqlite"
    async with emulator(faults=FaultConfig(rate_drop_after=1.0)) as emu:
        async with client_for(emu, db) as first:
            with pytest.raises((dba.TransportError, dba.AmbiguousSubmission)):
                await first.generate(req())
        assert emu.stats.submissions_accepted == 1
        async with client_for(emu, db) as second:
            with pytest.raises(dba.AmbiguousSubmission, match="cache prune"):
                await second.generate(req())
        assert emu.stats.submissions_received == 1  # the second client sent nothing
    assert ResultCache(db).stats().pending == 1


async def test_a_claim_left_by_a_dead_process_turns_ambiguous_not_resent(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cache.sqlite"
    async with emulator() as emu:
        key = cache_key(req(), "v6", emu.base_url)
        assert key is not None
        # A process claimed the request, sent it, and died before recording the answer.
        dead = ResultCache(db)
        assert dead.claim(key) is None
        dead.close()
        with sqlite3.connect(db) as raw:
            raw.execute("UPDATE results SET updated = updated - 3600 WHERE key = ?", (key,))
        async with client_for(emu, db) as client:
            with pytest.raises(dba.AmbiguousSubmission):
                await client.generate(req())
        assert emu.stats.submissions_received == 0
        # The user decides: pruning the row lets the request go again.
        cache = ResultCache(db)
        assert cache.prune(0) == 1
        cache.close()
        async with client_for(emu, db) as client:
            assert (await client.generate(req())).output
        assert emu.stats.submissions_accepted == 1
