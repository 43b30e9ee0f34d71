"""Shards: ``dba.shard`` splits a batch's inputs among N processes with no coordination, and
``generate --shard I/N`` run as N separate processes does every prompt exactly once (checked
against the emulator's own record), each shard resuming on its own after a SIGKILL."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from _cli_commands import emulator_generate_args, generate_command
from anyio.abc import Process
from hypothesis import given
from hypothesis import strategies as st

import dreambooth_async as dba
from dreambooth_async._shard import parse_shard, shard_manifest_name, shard_of
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig

SECRET = "sk-shards-0b9e4d71c2a85f36"
SCALE = 0.01


def _requests(n: int, start: int = 0) -> list[dba.Text2Img]:
    return [
        dba.Text2Img(model_id="midjourney", prompt=f"prompt {i}", seed=i) for i in range(start, n)
    ]


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


# --- generate --shard I/N as separate processes -----------------------------------------------

CLI_PROMPTS = 48


def _generate(prompts: Path, out: Path, base_url: str, index: int, count: int) -> list[str]:
    return generate_command(
        prompts, out, base_url, SECRET, "--shard", f"{index}/{count}", poll_scale=SCALE
    )


def _state(pid: int) -> str:
    # The third field of /proc/<pid>/stat: R, S, T (stopped), Z, ...
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def _stopped(pid: int) -> None:
    with anyio.fail_after(5):
        while True:
            if _state(pid) == "T":
                return
            await anyio.sleep(0.001)


async def _kill_mid_batch(process: Process, manifest: Path) -> dict[str, dba.ItemState]:
    """SIGKILL the process once its manifest shows done and submitted items and no POST on the
    wire (frozen with SIGSTOP first, so what the manifest says is final; see
    test_cli_resume.py)."""
    with anyio.fail_after(40):
        while True:
            await anyio.sleep(0.01)
            if process.returncode is not None:
                pytest.fail("the shard finished before the test could kill it")
            states = dba.read_manifest(manifest) if manifest.exists() else {}
            statuses = [s.status for s in states.values()]
            if statuses.count("done") < 2 or statuses.count("submitted") < 1:
                continue
            process.send_signal(signal.SIGSTOP)
            await _stopped(process.pid)
            states = dba.read_manifest(manifest)
            statuses = [s.status for s in states.values()]
            if "submitting" in statuses or statuses.count("submitted") < 1:
                process.send_signal(signal.SIGCONT)
                continue
            process.kill()
            await process.wait()
            return states


@pytest.mark.anyio
@pytest.mark.parametrize("count", [2, 3])
async def test_cli_shards_as_processes_do_every_prompt_once_and_a_killed_one_resumes(
    tmp_path: Path, count: int
) -> None:
    texts = [
        f"shard prompt {i}: a {['red', 'green', 'blue'][i % 3]} thing" for i in range(CLI_PROMPTS)
    ]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(texts) + "\n")
    outs = [tmp_path / f"shard-{i}-of-{count}" for i in range(1, count + 1)]
    manifests = [
        out / f"dreambooth-manifest.shard-{i}-of-{count}.jsonl"
        for i, out in enumerate(outs, start=1)
    ]
    config = EmulatorConfig(
        keys=(SECRET,),
        queue_limit=9,
        workers=9,
        time_scale=SCALE,
        cost=CostModel(base=25, per_step=0, per_sample=0, per_megapixel=0, noise=0),
    )
    async with Emulator(config) as emu:
        commands = [
            _generate(prompts, out, emu.base_url, i, count) for i, out in enumerate(outs, start=1)
        ]
        processes = [await anyio.open_process(c, stdout=None, stderr=None) for c in commands]
        # The last shard is killed mid-batch while the others run on.
        killed_at = await _kill_mid_batch(processes[-1], manifests[-1])
        for process in processes[:-1]:
            assert await process.wait() == 0
            await process.aclose()
        await processes[-1].aclose()
        done_before = [k for k, s in killed_at.items() if s.status == "done"]
        assert done_before

        rerun = await anyio.run_process(commands[-1], check=False)
        stdout = rerun.stdout.decode()
        assert rerun.returncode == 0, stdout + rerun.stderr.decode()
        assert f"({len(done_before)} from an earlier run)" in stdout

        # The emulator's own record: every prompt accepted exactly once, over all shards.
        assert emu.stats.submissions_accepted == CLI_PROMPTS
        assert emu.stats.duplicate_submissions() == {}
        assert emu.stats.duplicate_requests() == {}
        assert sorted(p for _m, p, _s in emu.stats.accepted_by_fingerprint) == sorted(texts)

    per_shard = []
    for out, manifest in zip(outs, manifests, strict=True):
        rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
        per_shard.append(sorted(row["prompt"] for row in rows))
        states = dba.read_manifest(manifest)
        assert {s.status for s in states.values()} == {"done"} and len(states) == len(rows)
        assert not (out / "dreambooth-manifest.jsonl").exists()
    assert all(per_shard)  # every shard had work
    assert sorted(p for part in per_shard for p in part) == sorted(texts)

    # The shards' folders merge into one dataset with every prompt once.
    merged = tmp_path / "dataset"
    done = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "dreambooth_async.cli",
            "merge",
            *map(str, outs),
            "--out",
            str(merged),
        ],
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    rows = [json.loads(line) for line in (merged / "metadata.jsonl").read_text().splitlines()]
    assert sorted(row["prompt"] for row in rows) == sorted(texts)
    for row in rows:
        assert (merged / row["file_name"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_with_another_shard_split_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    # The shard is a run option: images of shard 1/2 and of 1/3 do not mix in one folder.
    from dreambooth_async.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(12)))
    out = tmp_path / "out"

    def shard(split: str) -> int:
        return main(emulator_generate_args(prompts, out, "-q", "--shard", split, time_scale=0.002))

    assert shard("1/2") == 0
    assert (out / "dreambooth-manifest.shard-1-of-2.jsonl").exists()
    assert shard("1/3") == 2
    assert shard("1/2") == 0  # the same shard resumes
