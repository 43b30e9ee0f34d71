"""The fold of a manifest saved beside it: a reader uses it only when it is sound and the file's
prefix is the one it folded, folds the lines after it, and otherwise folds the whole file; in
every case the result is the fold of the whole file."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import dreambooth_async as dba
from dreambooth_async import _manifest
from dreambooth_async._manifest import _Fold, index_manifest, read_manifest
from dreambooth_async._manifest_sidecar import load_fold, sidecar_path
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig

SECRET = "sk-sidecar-test-0123456789abcdef"


def write_items(manifest: dba.Manifest, start: int, count: int) -> None:
    """Items of every shape a batch leaves: mostly done, and some of each other state."""
    for i in range(start, start + count):
        key = f"item-{i:06d}"
        manifest.pending(key, i)
        if i % 10 == 1:
            continue  # pending only
        manifest.submitting(key, 1)
        if i % 10 == 2:
            continue  # ambiguous: no outcome
        job = str(70_000_000 + i)
        manifest.submitted(key, job, fetch_url=f"http://127.0.0.1:1/fetch/{job}", eta=1.5)
        if i % 10 == 3:
            continue  # in flight
        if i % 10 == 4:
            manifest.failed(key, dba.JobTimeout(job, 5.0), job_id=job)
            continue
        outputs = [f"http://x/{key}-{n}.png" for n in range(1 + i % 3)]
        files = [f"{key}-{n}.png" for n in range(len(outputs))]
        manifest.done(key, job_id=job, files=files, output=outputs, seed=i)
        if i % 10 == 5:  # resubmitted after done (a line after done), then done again
            manifest.submitting(key, 2)
            manifest.submitted(key, f"{job}9")
            manifest.done(key, job_id=f"{job}9", files=files[:1], output=outputs[:1], seed=i)


def build(path: Path, count: int = 800) -> None:
    with dba.Manifest.open(path, durable=False) as manifest:
        write_items(manifest, 0, count)


def view(states: Any) -> dict[str, tuple[Any, ...]]:
    """What a rerun plans from: each item's status, job, files, outputs, seed and index."""
    return {
        key: (s.status, s.job_id, s.files, s.output, s.seed, s.index)
        for key, s in ((key, states[key]) for key in states)
    }


def images_paid(states: dict[str, dba.ItemState]) -> int:
    return sum(
        max(1, len(s.output)) if s.status == "done" else 1
        for s in states.values()
        if s.status in ("done", "submitted")
    )


def assert_whole_fold(path: Path, index: dba.ManifestIndex) -> None:
    """``index`` is the fold of every line of ``path`` (read without any sidecar)."""
    reference = read_manifest(path)
    assert len(index) == len(reference)
    assert view(index) == view(reference)
    assert index.images_paid() == images_paid(reference)
    for key, state in reference.items():
        assert index.status(key) == state.status
        assert index.index_of(key) == state.index
    # The items kept whole keep every field.
    unsettled = {s.key: s for s in index.unsettled()}
    for key, state in unsettled.items():
        assert state == reference[key]
    assert {k for k, s in reference.items() if s.status != "done"} <= set(unsettled)


def resumed_from(path: Path) -> tuple[int, int]:
    """Where a reader of ``path`` starts folding lines: (0, 1) when it does not use the
    sidecar."""
    fold = _Fold(path, compact=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        return fold.resume(fd)
    finally:
        os.close(fd)
        assert fold.index is not None
        fold.index.close()


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")


# --- used, and equal to the whole fold ----------------------------------------------------------


def test_closing_saves_the_fold_and_a_reader_starts_after_it(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    build(path)
    assert path.stat().st_size > _manifest.SAVE_FROM
    assert sidecar_path(path).is_file()
    assert sidecar_path(path).stat().st_mode & 0o777 == 0o600
    # The sidecar covers the whole file: nothing is parsed again.
    assert resumed_from(path) == (path.stat().st_size, count_lines(path) + 1)
    index = index_manifest(path)
    assert_whole_fold(path, index)
    index.close()
    with dba.Manifest.open(path) as manifest:
        assert_whole_fold(path, manifest.states)
        # A done item read back through the saved offsets.
        assert manifest.get("item-000000") == dba.ItemState(
            key="item-000000",
            status="done",
            index=0,
            job_id="70000000",
            files=("item-000000-0.png",),
            output=("http://x/item-000000-0.png",),
            seed=0,
        )


def test_a_small_manifest_has_no_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    build(path, count=20)
    index_manifest(path).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]


def test_lines_appended_after_the_sidecar_are_folded(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    build(path)
    old = sidecar_path(path).read_bytes()
    covered = path.stat().st_size
    with dba.Manifest.open(path, durable=False) as manifest:
        write_items(manifest, 800, 200)  # new items
        write_items(manifest, 0, 40)  # items of the prefix change state again
    # As a run killed before closing leaves it: the old sidecar, the new lines after it.
    sidecar_path(path).write_bytes(old)
    assert resumed_from(path)[0] == covered
    index = index_manifest(path)
    assert_whole_fold(path, index)
    index.close()
    assert sidecar_path(path).read_bytes() == old  # a reader writes nothing
    with dba.Manifest.open(path) as manifest:
        assert_whole_fold(path, manifest.states)
        assert manifest.get("item-000005") is not None
        assert manifest.get("item-000001").status == "pending"  # type: ignore[union-attr]


def test_a_torn_last_line_after_the_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    build(path)
    old = sidecar_path(path).read_bytes()
    with dba.Manifest.open(path, durable=False) as manifest:
        write_items(manifest, 800, 30)
    intact = path.read_bytes()
    # SIGKILL: the old sidecar, whole lines after it, and a line cut short.
    sidecar_path(path).write_bytes(old)
    with path.open("ab") as handle:
        handle.write(b'{"key":"item-000900","event":"submi')
    index = index_manifest(path)
    assert "item-000900" not in index
    index.close()
    shutil.copy(path, tmp_path / "whole.jsonl")
    sidecar_path(path).write_bytes(old)
    with dba.Manifest.open(path) as manifest:
        assert path.read_bytes() == intact  # the fragment cut off
        assert_whole_fold(path, manifest.states)
        assert view(manifest.states) == view(read_manifest(tmp_path / "whole.jsonl"))
        manifest.submitting("item-000900", 1)
    index = index_manifest(path)
    assert index.status("item-000900") == "submitting"
    assert_whole_fold(path, index)
    index.close()


# --- any doubt: the whole file is folded --------------------------------------------------------


def _flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _corrupt(path: Path) -> None:
    data = sidecar_path(path).read_bytes()
    sidecar_path(path).write_bytes(_flip_byte(data, len(data) // 2))


def _truncate_sidecar(path: Path) -> None:
    data = sidecar_path(path).read_bytes()
    sidecar_path(path).write_bytes(data[: len(data) - 100])


def _empty_sidecar(path: Path) -> None:
    sidecar_path(path).write_bytes(b"")


def _other_version(path: Path) -> None:
    data = bytearray(sidecar_path(path).read_bytes()[:-32])
    struct.pack_into("<I", data, 8, 2)
    sidecar_path(path).write_bytes(bytes(data) + hashlib.sha256(data).digest())


def _replace_manifest(path: Path) -> None:
    # Another batch's manifest, longer than the one the sidecar folded.
    other = path.with_name("other.jsonl")
    with dba.Manifest.open(other, durable=False) as manifest:
        write_items(manifest, 5000, 900)
    sidecar_path(other).unlink()
    os.replace(other, path)


def _shorter_manifest(path: Path) -> None:
    data = path.read_bytes()
    cut = data.rfind(b"\n", 0, len(data) // 2) + 1
    path.write_bytes(data[:cut])


def _same_size_other_prefix(path: Path) -> None:
    # A job id in the prefix changed, not the length: only the prefix's hash tells.
    data = path.read_bytes()
    at = data.index(b'"job_id":"70000000"') + len('"job_id":"7000000')
    path.write_bytes(data[:at] + b"7" + data[at + 1 :])


def _rewritten_then_longer(path: Path) -> None:
    # Truncated to a few lines and appended to past the old length.
    _shorter_manifest(path)
    with dba.Manifest.open(path, durable=False) as manifest:
        sidecar = sidecar_path(path).read_bytes()
        write_items(manifest, 9000, 900)
    sidecar_path(path).write_bytes(sidecar)


def _other_manifests_sidecar(path: Path) -> None:
    other = path.with_name("other.jsonl")
    build(other, count=900)
    sidecar_path(path).write_bytes(sidecar_path(other).read_bytes())


@pytest.mark.parametrize(
    "spoil",
    [
        _corrupt,
        _truncate_sidecar,
        _empty_sidecar,
        _other_version,
        _replace_manifest,
        _shorter_manifest,
        _same_size_other_prefix,
        _rewritten_then_longer,
        _other_manifests_sidecar,
    ],
)
def test_a_sidecar_in_doubt_is_not_used(tmp_path: Path, spoil: Any) -> None:
    path = tmp_path / "m.jsonl"
    build(path)
    assert resumed_from(path) != (0, 1)
    spoil(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert load_fold(path, fd) is None
    finally:
        os.close(fd)
    assert resumed_from(path) == (0, 1)
    index = index_manifest(path)
    assert_whole_fold(path, index)
    index.close()
    with dba.Manifest.open(path) as manifest:
        assert_whole_fold(path, manifest.states)


def test_a_missing_sidecar_is_a_whole_fold_and_the_next_batch_saves_it(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    build(path)
    sidecar_path(path).unlink()
    assert resumed_from(path) == (0, 1)
    index = index_manifest(path)
    assert_whole_fold(path, index)
    index.close()
    assert not sidecar_path(path).exists()  # a reader (a dry run) writes nothing
    with dba.Manifest.open(path) as manifest:
        assert_whole_fold(path, manifest.states)
        # Saved on opening already: closing then folds only the lines this batch writes.
        covered = path.stat().st_size
        assert resumed_from(path) == (covered, count_lines(path) + 1)
        manifest.pending("new", 5000)
    assert resumed_from(path) == (path.stat().st_size, count_lines(path) + 1)
    index = index_manifest(path)
    assert index.status("new") == "pending"
    assert_whole_fold(path, index)
    index.close()


def test_a_folder_that_cannot_be_written_only_costs_the_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    build(path)
    sidecar_path(path).unlink()
    sidecar_path(path).mkdir()  # where the sidecar would go: not a file
    index = index_manifest(path)
    assert_whole_fold(path, index)
    index.close()
    with dba.Manifest.open(path) as manifest:
        assert_whole_fold(path, manifest.states)


# --- a batch resumed through the sidecar ------------------------------------------------------


@contextlib.asynccontextmanager
async def env() -> AsyncIterator[tuple[Emulator, dba.DreamboothClient]]:
    scale = 0.01
    cost = CostModel(base=5, per_step=0, per_sample=0, per_megapixel=0, noise=0)
    config = EmulatorConfig(time_scale=scale, cost=cost, workers=8, queue_limit=4, keys=(SECRET,))
    async with Emulator(config) as emu:
        client = dba.DreamboothClient(
            SECRET, base_url=emu.base_url, poll=dba.PollPolicy().scaled(scale)
        )
        async with client:
            yield emu, client


@pytest.mark.anyio
async def test_a_rerun_through_the_sidecar_pays_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every manifest gets a sidecar here, however small.
    monkeypatch.setattr(_manifest, "SAVE_FROM", 0)
    path = tmp_path / "batch.jsonl"
    requests = [
        dba.Text2Img(prompt=f"sidecar {i}", seed=i, model_id="midjourney") for i in range(16)
    ]
    async with env() as (emu, client):
        first: list[dba.BatchItem] = []
        async with client.map(requests[:12], concurrency=4, manifest=path) as run:
            async for item in run:
                first.append(item)
                if len(first) == 5:
                    break
        assert sidecar_path(path).is_file()
        assert resumed_from(path)[0] == path.stat().st_size
        states = read_manifest(path)
        done_before = {k for k, s in states.items() if s.status == "done"}
        async with client.map(requests, concurrency=4, manifest=path) as run:
            second = [item async for item in run]
        assert len(second) == 16 and all(item.ok for item in second)
        assert {item.key for item in second if item.resumed} == done_before
        assert emu.stats.submissions_accepted == 16
        assert emu.stats.duplicate_submissions() == {}
        assert resumed_from(path)[0] == path.stat().st_size
        assert all(s.status == "done" for s in read_manifest(path).values())
        index = index_manifest(path)
        assert_whole_fold(path, index)
        index.close()
        assert SECRET.encode() not in sidecar_path(path).read_bytes()


def test_a_save_killed_midway_is_overwritten_not_left_behind(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    build(path)
    sidecar = sidecar_path(path)
    # What a process killed while saving leaves: a part of the temporary file, and no sidecar.
    sidecar.with_name(sidecar.name + ".tmp").write_bytes(sidecar.read_bytes()[:1000])
    sidecar.unlink()
    assert resumed_from(path) == (0, 1)
    with dba.Manifest.open(path, durable=False) as manifest:
        write_items(manifest, 800, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.jsonl.fold", "m.jsonl"]
    assert resumed_from(path)[0] == path.stat().st_size
