"""The batch manifest: its file format, and resuming a batch from it against the emulator."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import dreambooth_async as dba
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig, FaultConfig

SCALE = 0.01
SECRET = "sk-manifest-test-0123456789abcdef"


def fixed_cost(seconds: float) -> CostModel:
    return CostModel(base=seconds, per_step=0, per_sample=0, per_megapixel=0, noise=0)


@contextlib.asynccontextmanager
async def env(**config: Any) -> AsyncIterator[tuple[Emulator, dba.DreamboothClient]]:
    config.setdefault("time_scale", SCALE)
    config.setdefault("cost", fixed_cost(5))
    config.setdefault("workers", 8)
    config.setdefault("queue_limit", 4)
    config.setdefault("keys", (SECRET,))
    async with Emulator(EmulatorConfig(**config)) as emu:
        client = dba.DreamboothClient(
            SECRET, base_url=emu.base_url, poll=dba.PollPolicy().scaled(SCALE)
        )
        async with client:
            yield emu, client


def req(i: int, **fields: Any) -> dba.Text2Img:
    fields.setdefault("model_id", "midjourney")
    return dba.Text2Img(prompt=f"manifest prompt {i}", seed=i, **fields)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the file ---------------------------------------------------------------------------------


def test_records_fold_into_states(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with dba.Manifest.open(path) as manifest:
        manifest.pending("a", 0)
        manifest.submitting("a", 1)
        manifest.submitted("a", "101", fetch_url="http://127.0.0.1:1/api/v3/dreambooth/fetch/101")
        manifest.done("a", job_id="101", files=["a-0.png"], output=["http://x/a.png"], seed=7)
        manifest.pending("b", 1)
        manifest.submitting("b", 1)
        manifest.submitted("b", "102")
        manifest.failed("b", dba.JobTimeout("102", 5.0), job_id="102")
        manifest.pending("c", 2)
        manifest.submitting("c", 1)
    states = dba.read_manifest(path)
    assert states["a"].status == "done" and states["a"].files == ("a-0.png",)
    assert states["a"].seed == 7 and states["a"].job_id == "101"
    assert states["b"].status == "failed" and states["b"].error == "JobTimeout"
    assert states["b"].job_id == "102"
    assert states["c"].status == "submitting" and states["c"].index == 2
    assert lines(path)[0] == {"manifest": "dreambooth-async-manifest", "version": 1}


def test_a_torn_last_line_is_dropped_and_appending_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with dba.Manifest.open(path) as manifest:
        manifest.submitting("a", 1)
        manifest.submitted("a", "101")
    intact = path.read_bytes()
    with path.open("ab") as handle:
        handle.write(b'{"key":"a","event":"do')  # the process died mid-write
    with dba.Manifest.open(path) as manifest:
        assert manifest.get("a") is not None and manifest.get("a").status == "submitted"  # type: ignore[union-attr]
        assert path.read_bytes() == intact  # the fragment is gone
        manifest.done("a", job_id="101", files=[], output=[], seed=None)
    assert dba.read_manifest(path)["a"].status == "done"


def test_a_torn_header_is_a_new_manifest(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"manifest":"dreambo')
    with dba.Manifest.open(path) as manifest:
        assert manifest.states == {}
    assert lines(path) == [{"manifest": "dreambooth-async-manifest", "version": 1}]


def test_corruption_before_the_end_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with dba.Manifest.open(path) as manifest:
        manifest.submitting("a", 1)
    with path.open("ab") as handle:
        handle.write(b"garbage\n" + b'{"key":"a","event":"submitted","job_id":"1"}\n')
    with pytest.raises(dba.ManifestError, match="line 3"):
        dba.Manifest.open(path)


def test_a_file_that_is_not_a_manifest_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("a cat\na dog")
    with pytest.raises(dba.ManifestError, match="not a dreambooth-async manifest"):
        dba.Manifest.open(path)
    assert path.read_text() == "a cat\na dog"


def test_two_batches_cannot_share_a_manifest(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with dba.Manifest.open(path), pytest.raises(dba.ManifestError, match="in use"):
        dba.Manifest.open(path)
    dba.Manifest.open(path).close()  # released on close


def test_the_redactor_sees_every_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with dba.Manifest.open(path, redact=lambda text: text.replace(SECRET, "***")) as manifest:
        manifest.failed("a", dba.APIError(f"echoed {SECRET}"))
    assert SECRET not in path.read_text()


# --- resuming ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_rerun_skips_done_attaches_submitted_and_submits_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    requests = [req(i) for i in range(16)]
    async with env(queue_limit=4) as (emu, client):
        first: list[dba.BatchItem] = []
        async with client.map(requests, concurrency=4, manifest=path) as run:
            async for item in run:
                first.append(item)
                if len(first) == 5:
                    break  # slots still hold accepted jobs: they are recorded as submitted
        states = dba.read_manifest(path)
        submitted_only = {k for k, s in states.items() if s.status == "submitted"}
        assert len(first) == 5 and submitted_only

        events: list[dba.BatchEvent] = []
        async with client.map(
            requests, concurrency=4, manifest=path, on_event=events.append
        ) as run:
            second = [item async for item in run]
        assert len(second) == 16 and all(item.ok for item in second)
        # Done before the break: the items seen, and any that finished in the buffer meanwhile.
        done_before = {k for k, s in states.items() if s.status == "done"}
        assert {item.key for item in first} <= done_before
        assert {item.key for item in second if item.resumed} == done_before
        assert run.stats["skipped"] == len(done_before)
        assert {e.key for e in events if e.kind == "attached"} == submitted_only
        # Every request was accepted by the service exactly once over both runs.
        assert emu.stats.submissions_accepted == 16
        assert emu.stats.duplicate_submissions() == {}
        assert all(s.status == "done" for s in dba.read_manifest(path).values())
        # A resumed item carries what the manifest knew.
        resumed = next(item for item in second if item.resumed)
        assert resumed.result is not None and resumed.result.output and resumed.job_id
        assert SECRET not in path.read_text()


@pytest.mark.anyio
async def test_resume_tolerates_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    requests = [req(i) for i in range(6)]
    async with env() as (emu, client):
        await client.gather(requests[:3], manifest=path)
        with path.open("ab") as handle:
            handle.write(b'{"key":"deadbeef","event":"submi')
        items = await client.gather(requests, manifest=path)
        assert [item.resumed for item in items] == [True] * 3 + [False] * 3
        assert emu.stats.duplicate_submissions() == {}


@pytest.mark.anyio
async def test_a_submission_without_an_outcome_is_ambiguous(tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    requests = [req(i) for i in range(3)]
    key = dba.request_key(requests[1])
    with dba.Manifest.open(path) as manifest:
        manifest.pending(key, 1)
        manifest.submitting(key, 1)  # and then the process was killed
    async with env() as (emu, client):
        items = await client.gather(requests, manifest=path)
        assert [item.status for item in items] == ["done", "ambiguous", "done"]
        assert isinstance(items[1].error, dba.AmbiguousSubmission)
        assert emu.stats.submissions_received == 2  # it was not sent again
        assert dba.read_manifest(path)[key].status == "ambiguous"

        # It stays ambiguous on the next run...
        again = await client.gather(requests, manifest=path)
        assert again[1].status == "ambiguous" and emu.stats.submissions_received == 2
        # ...until the user says to send it.
        final = await client.gather(requests, manifest=path, resubmit_ambiguous=True)
        assert all(item.ok for item in final)
        assert emu.stats.submissions_accepted == 3


@pytest.mark.anyio
async def test_failed_items_are_retried_on_a_rerun(tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    requests = [req(i) for i in range(4)]
    async with env(faults=FaultConfig(rate_failed=1.0)) as (_emu, client):
        items = await client.gather(requests, manifest=path)
        assert all(isinstance(item.error, dba.GenerationFailed) for item in items)
    states = dba.read_manifest(path)
    assert {s.error for s in states.values()} == {"GenerationFailed"}
    async with env() as (_emu, client):
        kept = await client.gather(requests, manifest=path, retry_failed=False)
        assert all(item.status == "failed" and item.resumed for item in kept)
        items = await client.gather(requests, manifest=path)
        assert all(item.ok and not item.resumed for item in items)


@pytest.mark.anyio
async def test_a_timed_out_job_is_attached_to_not_paid_again(tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    request = req(1)
    async with env(cost=fixed_cost(40)) as (emu, client):
        (item,) = await client.gather([request], manifest=path, job_timeout=0.05)
        assert isinstance(item.error, dba.JobTimeout)
        assert dba.read_manifest(path)[item.key or ""].job_id == item.job_id
        (again,) = await client.gather([request], manifest=path)
        assert again.ok and again.job_id == item.job_id
        assert emu.stats.submissions_accepted == 1


@pytest.mark.anyio
async def test_keys_given_or_numbered(tmp_path: Path) -> None:
    twin = dba.Text2Img(model_id="midjourney", prompt="same", seed=None)
    async with env(spam_filter=False) as (_emu, client):
        items = await client.gather([twin, twin, twin], manifest=tmp_path / "a.jsonl")
        base = dba.request_key(twin)
        assert [item.key for item in items] == [base, f"{base}.2", f"{base}.3"]

        named = await client.gather(
            [("first", req(1)), ("second", req(2))], manifest=tmp_path / "b.jsonl"
        )
        assert [item.key for item in named] == ["first", "second"]

        by_function = await client.gather(
            [req(1), req(2)], keys=lambda index, request: f"row-{index}"
        )
        assert [item.key for item in by_function] == ["row-0", "row-1"]

        with pytest.raises(ValueError, match="duplicate key"):
            await client.gather([("x", req(1)), ("x", req(2))], manifest=tmp_path / "c.jsonl")


@pytest.mark.anyio
async def test_downloads_are_recorded_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    out = tmp_path / "out"
    requests = [req(i) for i in range(3)]
    async with env() as (_emu, client):
        items = await client.gather(requests, manifest=path, download_to=out)
        names = sorted(p.name for item in items for p in item.files)
        again = await client.gather(requests, manifest=path, download_to=out)
        assert sorted(p.name for item in again for p in item.files) == names
        assert all(p.exists() for item in again for p in item.files)
        assert (
            sorted(os.listdir(out)) == names
            or sorted(n for n in os.listdir(out) if not n.startswith(".")) == names
        )
