"""The batch scheduler against the emulator over real HTTP on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import dreambooth_async as dba
from dreambooth_async._batch import _LIVE_TASKS, SlotWindow, request_key
from dreambooth_async.emulator import DEFAULT_KEY, CostModel, Emulator, EmulatorConfig, FaultConfig

pytestmark = pytest.mark.anyio

SCALE = 0.01


def fixed_cost(seconds: float) -> CostModel:
    """Every job takes ``seconds`` service seconds (so ``seconds * SCALE`` real ones)."""
    return CostModel(base=seconds, per_step=0, per_sample=0, per_megapixel=0, noise=0)


@contextlib.asynccontextmanager
async def env(**config: Any) -> AsyncIterator[tuple[Emulator, dba.DreamboothClient]]:
    config.setdefault("time_scale", SCALE)
    config.setdefault("cost", fixed_cost(5))
    config.setdefault("workers", 8)
    config.setdefault("queue_limit", 5)
    async with (
        Emulator(EmulatorConfig(**config)) as emu,
        dba.DreamboothClient(
            DEFAULT_KEY, base_url=emu.base_url, poll=dba.PollPolicy().scaled(SCALE)
        ) as client,
    ):
        yield emu, client


def req(i: int, **fields: Any) -> dba.Text2Img:
    fields.setdefault("model_id", "midjourney")
    return dba.Text2Img(prompt=f"prompt number {i}", seed=i, **fields)


def batch_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("dreambooth-batch")]


async def test_gather_returns_input_order_and_map_as_completed() -> None:
    # Steps change the job cost, so later items can finish first.
    cost = CostModel(base=1, per_step=0.5, per_sample=0, per_megapixel=0, noise=0)
    async with env(cost=cost, queue_limit=10) as (_emu, client):
        requests = [req(i, steps=40 - 3 * i) for i in range(12)]
        items = await client.gather(requests, concurrency=10)
        assert [item.index for item in items] == list(range(12))
        assert all(item.ok and item.result is not None for item in items)
        assert [item.request for item in items] == requests
        assert len({item.job_id for item in items}) == 12

        seen = [item.index async for item in client.map(requests, concurrency=10)]
        assert sorted(seen) == list(range(12))
        assert seen != list(range(12))  # completion order, not input order


async def test_item_errors_stay_in_their_items() -> None:
    async with env(faults=FaultConfig(rate_failed=0.0)) as (_emu, client):
        requests = [
            req(i, model_id="no-such-model" if i % 4 == 1 else "midjourney") for i in range(12)
        ]
        items = await client.gather(requests, concurrency=4)
        failed = [item for item in items if not item.ok]
        assert [item.index for item in failed] == [1, 5, 9]
        for item in failed:
            assert isinstance(item.error, dba.APIError)
            assert "Model id not found" in str(item.error)
            assert item.result is None and item.status == "failed"
        assert all(item.result is not None for item in items if item.index % 4 != 1)


async def test_generation_failures_are_typed() -> None:
    async with env(faults=FaultConfig(rate_failed=1.0)) as (_emu, client):
        items = await client.gather([req(i) for i in range(3)], concurrency=3)
        assert all(isinstance(item.error, dba.GenerationFailed) for item in items)
        assert all(item.job_id for item in items)  # the job existed: its id is kept


async def test_fail_fast_cancels_the_rest_and_raises() -> None:
    async with env(queue_limit=3) as (emu, client):
        requests = [req(i, model_id="no-such-model" if i == 2 else "midjourney") for i in range(40)]
        with pytest.raises(dba.APIError, match="Model id not found") as caught:
            async with client.map(requests, concurrency=3, fail_fast=True) as run:
                async for _item in run:
                    pass
        assert any("fail_fast" in note for note in caught.value.__notes__)
        assert emu.stats.submissions_received < 40
        assert batch_tasks() == []


async def test_leaving_early_cancels_cleanly() -> None:
    consumed = 0

    def source() -> Iterator[dba.Text2Img]:
        nonlocal consumed
        for i in range(10_000):
            consumed += 1
            yield req(i)

    async with env(queue_limit=4) as (emu, client):
        async with client.map(source(), concurrency=4, buffer=2) as run:
            got = 0
            async for _item in run:
                got += 1
                if got == 3:
                    break
        # Nothing is left running once the block is left...
        assert batch_tasks() == []
        # ...the input was read only a few items ahead of the slots...
        assert consumed <= got + 4 + 2 + 1
        # ...and what was submitted was accepted once.
        assert emu.stats.duplicate_submissions() == {}
        # The client is still usable.
        result = await client.generate(req(99_999))
        assert result.output


async def test_bare_async_for_break_is_cleaned_up_when_dropped() -> None:
    async with env(queue_limit=4) as (_emu, client):
        async for _item in client.map((req(i) for i in range(1000)), concurrency=4):
            break
        gc.collect()
        live = set(_LIVE_TASKS)
        if live:
            _done, pending = await asyncio.wait(live, timeout=10)
            assert not pending
        assert batch_tasks() == []


async def test_input_is_read_lazily_from_an_endless_generator() -> None:
    consumed = 0

    def endless() -> Iterator[dba.Text2Img]:
        nonlocal consumed
        i = 0
        while True:
            consumed += 1
            yield req(i)
            i += 1

    async with env(queue_limit=3, cost=fixed_cost(2)) as (_emu, client):
        done = 0
        async with client.map(endless(), concurrency=3, buffer=0) as run:
            async for item in run:
                assert item.ok
                done += 1
                assert consumed <= done + 3 + 1
                if done == 12:
                    break


async def test_async_iterable_input_is_closed_on_early_exit() -> None:
    closed = asyncio.Event()

    async def source() -> AsyncIterator[dba.Text2Img]:
        try:
            for i in range(1000):
                yield req(i)
        finally:
            closed.set()

    async with env(queue_limit=3) as (_emu, client):
        async with client.map(source(), concurrency=3) as run:
            async for _item in run:
                break
        assert closed.is_set()


async def test_adaptive_concurrency_finds_a_hidden_queue_limit() -> None:
    trace: list[int] = []
    async with env(queue_limit=5, cost=fixed_cost(8)) as (emu, client):
        async with client.map(
            [req(i) for i in range(80)], on_event=lambda e: trace.append(e.concurrency or 0)
        ) as run:
            items = [item async for item in run]
        assert all(item.ok for item in items)
        stats = run.stats
        # After slow start it holds at the limit, probing one above now and then.
        settled = trace[len(trace) // 3 :]
        assert set(settled) <= {5, 6}, trace
        assert settled.count(5) >= 0.8 * len(settled), trace
        assert stats["peak_concurrency"] <= 8
        # A few rejections to find the limit and the odd probe; nothing like one per job.
        assert emu.stats.rejected_queue_full <= 6
        assert stats["rejected_queue_full"] == emu.stats.rejected_queue_full
        assert emu.stats.submissions_accepted == 80
        assert emu.stats.duplicate_submissions() == {}
        assert trace[0] <= 3  # it started low


async def test_adaptive_concurrency_respects_max_concurrency() -> None:
    async with env(queue_limit=20) as (emu, client):
        async with client.map([req(i) for i in range(30)], max_concurrency=4) as run:
            assert all([item.ok async for item in run])
        assert run.stats["peak_concurrency"] == 4
        assert emu.stats.rejected_queue_full == 0


async def test_fixed_concurrency_above_the_limit_still_finishes() -> None:
    async with env(queue_limit=3) as (emu, client):
        items = await client.gather([req(i) for i in range(12)], concurrency=6)
        assert all(item.ok for item in items)
        assert emu.stats.rejected_queue_full > 0
        assert emu.stats.duplicate_submissions() == {}


async def test_events_tell_the_story_without_the_key() -> None:
    events: list[dba.BatchEvent] = []
    async with env(queue_limit=3, faults=FaultConfig(rate_failed=0.0)) as (_emu, client):
        requests = [req(i, model_id="no-such-model" if i == 4 else "midjourney") for i in range(10)]
        await client.gather(requests, concurrency=5, on_event=events.append)
    kinds = {e.kind for e in events}
    assert {"submitted", "queued", "done", "failed", "rate_limited"} <= kinds
    done = {e.index for e in events if e.kind == "done"}
    assert done == set(range(10)) - {4}
    assert all(e.key == request_key(requests[e.index]) for e in events)
    queued = [e for e in events if e.kind == "queued"]
    assert all(e.eta is not None and e.eta > 0 and e.job_id for e in queued)
    assert not any(DEFAULT_KEY in repr(e) for e in events)


async def test_a_broken_event_hook_does_not_break_the_batch() -> None:
    def hook(event: dba.BatchEvent) -> None:
        raise RuntimeError("progress bar exploded")

    async with env() as (_emu, client):
        items = await client.gather([req(i) for i in range(3)], on_event=hook)
        assert all(item.ok for item in items)


async def test_rate_limit_paces_submissions() -> None:
    async with env(queue_limit=50, cost=fixed_cost(0)) as (_emu, client):
        loop = asyncio.get_running_loop()
        started = loop.time()
        items = await client.gather([req(i) for i in range(11)], concurrency=11, rate_limit=25)
        assert all(item.ok for item in items)
        assert loop.time() - started >= 10 / 25 * 0.95


async def test_generic_429_pauses_and_retries() -> None:
    events: list[dba.BatchEvent] = []
    faults = FaultConfig(rate_429=0.3, retry_after_429=2, seed=3)
    async with env(queue_limit=10, faults=faults) as (emu, client):
        items = await client.gather(
            [req(i) for i in range(15)], concurrency=5, on_event=events.append
        )
        assert all(item.ok for item in items), [item.error for item in items if not item.ok]
        assert emu.stats.faults["429"] > 0
        assert any(e.kind == "rate_limited" for e in events)
        assert emu.stats.duplicate_submissions() == {}


async def test_spam_filter_rejection_is_waited_out() -> None:
    async with env(queue_limit=10, spam_window=20) as (emu, client):
        twin = dba.Text2Img(model_id="midjourney", prompt="the very same", seed=5)
        items = await client.gather([twin, twin], concurrency=2)
        assert all(item.ok for item in items)
        assert emu.stats.rejected_spam >= 1
        assert items[0].key == items[1].key  # no manifest: identical requests share a key


async def test_dropped_answers_are_ambiguous_and_not_resent() -> None:
    events: list[dba.BatchEvent] = []
    async with env(faults=FaultConfig(rate_drop_after=1.0)) as (emu, client):
        items = await client.gather(
            [req(i) for i in range(4)], concurrency=4, on_event=events.append
        )
        assert [item.status for item in items] == ["ambiguous"] * 4
        for item in items:
            assert isinstance(item.error, dba.AmbiguousSubmission)
            assert isinstance(item.error.cause, dba.TransportError)
        # Each was accepted by the service exactly once: none was sent again.
        assert emu.stats.submissions_accepted == 4
        assert emu.stats.duplicate_submissions() == {}
        assert sum(e.kind == "ambiguous" for e in events) == 4


async def test_authentication_error_stops_the_batch() -> None:
    async with Emulator(EmulatorConfig(time_scale=SCALE)) as emu:
        client = dba.DreamboothClient("wrong-key", base_url=emu.base_url)
        async with client:
            with pytest.raises(dba.AuthenticationError):
                await client.gather([req(i) for i in range(5)])
            assert batch_tasks() == []


async def test_bad_input_surfaces_from_the_iterator() -> None:
    async with env() as (_emu, client):
        with pytest.raises(TypeError, match="batch input 1"):
            await client.gather([req(0), "not a request"])  # type: ignore[list-item]


async def test_downloads_land_under_key_names(tmp_path: Any) -> None:
    async with env() as (_emu, client):
        requests = [req(i, samples=2) for i in range(3)]
        items = await client.gather(requests, download_to=tmp_path)
        for item in items:
            assert item.ok and len(item.files) == 2
            for number, path in enumerate(item.files):
                assert path.name == f"{item.key}-{number}.png"
                assert path.read_bytes().startswith(b"\x89PNG")
        assert not (tmp_path / ".partial").exists() or not any((tmp_path / ".partial").iterdir())


async def test_slot_window_hands_slots_to_priority_waiters_first() -> None:
    window = SlotWindow(fixed=1, initial=1, maximum=1)
    await window.acquire()
    order: list[str] = []

    async def take(name: str, priority: bool) -> None:
        await window.acquire(priority=priority)
        order.append(name)
        window.release()

    normal = asyncio.create_task(take("normal", False))
    await asyncio.sleep(0)
    urgent = asyncio.create_task(take("urgent", True))
    await asyncio.sleep(0)
    window.release()
    await asyncio.gather(normal, urgent)
    assert order == ["urgent", "normal"]
    assert window.held == 0


def test_request_key_is_stable_and_discriminating() -> None:
    a = dba.Text2Img(model_id="m", prompt="p", seed=1)
    assert request_key(a) == request_key(dba.Text2Img(model_id="m", prompt="p", seed=1))
    assert request_key(a) != request_key(dba.Text2Img(model_id="m", prompt="p", seed=2))
    assert request_key(a) != request_key(dba.Text2Img(model_id="m", prompt="p", seed=1, steps=20))
