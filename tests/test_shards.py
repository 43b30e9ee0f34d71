"""Shards: ``dba.shard`` splits a batch's inputs among N processes with no coordination, and
``generate --shard I/N`` run as N separate processes does every prompt exactly once (checked
against the emulator's own record), each shard resuming on its own after a SIGKILL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dreambooth_async as dba
from dreambooth_async._shard import parse_shard, shard_manifest_name, shard_of
from dreambooth_async.emulator import Emulator, EmulatorConfig

SECRET = "sk-shards-0b9e4d71c2a85f36"
SCALE = 0.01


def _requests(n: int, start: int = 0) -> list[dba.Text2Img]:
    return [dba.Text2Img(model_id="midjourney", prompt=f"prompt {i}", seed=i) for i in range(start, n)]


# --- the library function ---------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_every_item_in_exactly_one_shard(count: int) -> None:
    requests = _requests(200)
    shards = [list(dba.shard(requests, index, count)) for index in range(1, count + 1)]
    taken = [r for part in shards for r in part]
    assert len(taken) == len(requests)
    assert sorted(map(dba.request_key, taken)) == sorted(map(dba.request_key, requests))
    if count > 1:
        # A hash split: no shard is empty or takes (nearly) everything for 200 items.
        assert all(0 < len(part) < len(requests) * 0.8 for part in shards)


def test_growing_the_input_at_the_end_keeps_old_items_in_their_shard() -> None:
    before = {dba.request_key(r) for r in dba.shard(_requests(100), 2, 3)}
    after = {dba.request_key(r) for r in dba.shard(_requests(150), 2, 3)}
    assert before <= after
    assert after - before == {dba.request_key(r) for r in dba.shard(_requests(150, 100), 2, 3)}


def test_pairs_split_by_their_explicit_key_and_identical_requests_stay_together() -> None:
    same = dba.Text2Img(model_id="m", prompt="the same")
    pairs = [(f"row-{i}", same) for i in range(60)]
    for index in (1, 2):
        assert [k for k, _ in dba.shard(pairs, index, 2)] == [
            k for k, _ in pairs if shard_of(k, 2) == index
        ]
    # Without keys, identical requests share a key and so a shard (the batch numbers repeats).
    parts = [list(dba.shard([same] * 5, i, 3)) for i in (1, 2, 3)]
    assert sorted(len(p) for p in parts) == [0, 0, 5]


@given(st.lists(st.text(min_size=1, max_size=12), unique=True, max_size=40), st.integers(1, 6))
def test_shard_of_is_a_partition(keys: list[str], count: int) -> None:
    pairs = [(k, dba.Text2Img(model_id="m", prompt="p")) for k in keys]
    seen = [k for i in range(1, count + 1) for k, _ in dba.shard(pairs, i, count)]
    assert sorted(seen) == sorted(keys)


@pytest.mark.anyio
async def test_async_iterables_are_filtered_lazily() -> None:
    pulled: list[int] = []

    async def source() -> AsyncIterator[dba.Text2Img]:
        for i, request in enumerate(_requests(30)):
            pulled.append(i)
            yield request

    iterator = dba.shard(source(), 1, 2)
    first = await anext(iterator)
    assert len(pulled) < 30  # read as needed, not all at once
    rest = [r async for r in iterator]
    assert [first, *rest] == list(dba.shard(_requests(30), 1, 2))


@pytest.mark.parametrize(
    ("index", "count"), [(0, 3), (4, 3), (1, 0), (-1, 2)], ids=lambda v: str(v)
)
def test_bad_shard_numbers_are_refused(index: int, count: int) -> None:
    with pytest.raises(ValueError, match="shard"):
        dba.shard(_requests(3), index, count)


def test_parse_shard_and_manifest_names() -> None:
    assert parse_shard("2/3") == (2, 3)
    assert parse_shard(" 1 / 1 ") == (1, 1)
    for bad in ("0/3", "4/3", "1", "a/b", "1/0", "-1/2"):
        with pytest.raises(ValueError):
            parse_shard(bad)
    assert shard_manifest_name("dreambooth-manifest.jsonl", 2, 3) == (
        "dreambooth-manifest.shard-2-of-3.jsonl"
    )


@pytest.mark.anyio
@pytest.mark.parametrize("count", [2, 3])
async def test_library_shards_in_parallel_do_each_request_once(tmp_path: Path, count: int) -> None:
    requests = _requests(30)
    config = EmulatorConfig(keys=(SECRET,), queue_limit=8, workers=8, time_scale=SCALE)
    async with Emulator(config) as emu:
        done: dict[int, list[str]] = {}

        async def run_shard(index: int) -> None:
            async with dba.DreamboothClient(
                SECRET, base_url=emu.base_url, poll=dba.PollPolicy().scaled(SCALE)
            ) as client:
                manifest = tmp_path / shard_manifest_name("manifest.jsonl", index, count)
                items = await client.gather(dba.shard(requests, index, count), manifest=manifest)
                assert all(item.ok for item in items)
                done[index] = [item.key for item in items]

        async with anyio.create_task_group() as group:
            for index in range(1, count + 1):
                group.start_soon(run_shard, index)

        assert emu.stats.submissions_accepted == len(requests)
        assert emu.stats.duplicate_submissions() == {}
        assert sorted(p for _m, p, _s in emu.stats.accepted_by_fingerprint) == sorted(
            r.prompt for r in requests
        )
    keys = [k for part in done.values() for k in part]
    assert sorted(keys) == sorted(map(dba.request_key, requests))
    assert all(done[i] for i in done)
