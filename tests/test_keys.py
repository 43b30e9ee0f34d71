"""Several API keys in one client, against the emulator over real HTTP on 127.0.0.1: each key
its own queue slots, a key out of credit retired while the others carry on, every job fetched
with the key that paid for it (also after a restart), and no key anywhere it could leak."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from _cli_commands import generate_command
from aiohttp import web

import dreambooth_async as dba
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig

pytestmark = pytest.mark.anyio

SCALE = 0.01
K1 = "sk-first-account-0123456789"
K2 = "sk-second-account-9876543210"


@contextlib.asynccontextmanager
async def emulator(**config: Any) -> AsyncIterator[Emulator]:
    config.setdefault("keys", (K1, K2))
    config.setdefault("time_scale", SCALE)
    config.setdefault("cost", CostModel(base=5, per_step=0, per_sample=0, per_megapixel=0, noise=0))
    config.setdefault("workers", 16)
    config.setdefault("key_queue_limits", {K1: 3, K2: 3})
    async with Emulator(EmulatorConfig(**config)) as emu:
        yield emu


def client(emu: Emulator, keys: Sequence[str] | str, **options: Any) -> dba.DreamboothClient:
    return dba.DreamboothClient(
        keys, base_url=emu.base_url, poll=dba.PollPolicy().scaled(SCALE), **options
    )


def prompts(n: int) -> list[dba.Text2Img]:
    return [dba.Text2Img(model_id="midjourney", prompt=f"prompt {i}", seed=i) for i in range(n)]


def peak_in_flight(emu: Emulator, key: str | None = None) -> int:
    """The most jobs (of ``key``, or of all keys) queued or running on the emulator at once."""
    moments: list[tuple[float, int]] = []
    for job in emu.jobs.values():
        if key is None or job.key == key:
            moments += [(job.created_at, 1), (job.scheduled_finish, -1)]
    peak = current = 0
    # A slot frees at the finish instant: ends sort before starts at the same time.
    for _, step in sorted(moments):
        current += step
        peak = max(peak, current)
    return peak


async def test_two_keys_with_three_slots_each_hold_six_jobs_in_flight() -> None:
    # Jobs long enough that a key's first answer (the others wait for it) comes back well
    # before its first job ends, on a loaded machine too.
    cost = CostModel(base=20, per_step=0, per_sample=0, per_megapixel=0, noise=0)
    async with emulator(cost=cost) as emu, client(emu, [K1, K2]) as dbc:
        async with dbc.map(prompts(30)) as run:
            items = [item async for item in run]
        assert len(items) == 30 and all(item.ok for item in items)
        # Each key filled its own three slots, at the same time: six in flight.
        assert peak_in_flight(emu, K1) == 3 and peak_in_flight(emu, K2) == 3
        assert peak_in_flight(emu) == 6
        accepted = [counts.accepted for counts in emu.stats.per_key]
        assert sum(accepted) == 30 and min(accepted) >= 10  # spread over both
        assert emu.stats.duplicate_requests() == {}
        stats = run.key_stats
        assert [row["key"] for row in stats] == ["#1", "#2"]
        assert [row["accepted"] for row in stats] == accepted
        assert [row["done"] for row in stats] == accepted
        assert all(row["retired"] is None for row in stats)
        assert run.stats["accepted"] == 30 and run.stats["images"] == 30


async def test_one_key_holds_three() -> None:
    async with emulator() as emu, client(emu, K1) as dbc:
        items = await dbc.gather(prompts(12))
        assert all(item.ok for item in items)
        assert peak_in_flight(emu) == 3
        assert emu.stats.per_key[1].accepted == 0


async def test_a_key_out_of_credit_is_retired_and_the_batch_completes_on_the_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wallets = {K1: 3.0, K2: 100.0}
    caplog.set_level(logging.INFO, logger="dreambooth_async")
    async with (
        emulator(key_wallets=wallets, price_per_image=1.0) as emu,
        client(emu, [K1, K2]) as dbc,
    ):
        async with dbc.map(prompts(20)) as run:
            items = [item async for item in run]  # no error: another key carried on
        assert len(items) == 20 and all(item.ok for item in items)
        first, second = emu.stats.per_key
        assert first.accepted == 3 and first.rejected_402 >= 1
        assert second.accepted == 17
        assert emu.stats.duplicate_requests() == {}
        assert run.key_stats[0]["retired"] == "InsufficientCredits"
        assert run.key_stats[1]["retired"] is None
        assert dbc.retired_keys == {0: "InsufficientCredits"}
        assert run.stats["done"] == 20 and run.stats["unsent"] == 0
    retired = [r.getMessage() for r in caplog.records if "retired" in r.getMessage()]
    assert retired and "key #1 retired" in retired[0]
    assert K1 not in caplog.text and K2 not in caplog.text


async def test_when_every_key_is_out_of_credit_the_batch_stops_and_leaves_the_rest_pending(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "run.jsonl"
    async with (
        emulator(key_wallets={K1: 2.0, K2: 2.0}, price_per_image=1.0) as emu,
        client(emu, [K1, K2]) as dbc,
    ):
        done: list[dba.BatchItem] = []
        with pytest.raises(dba.InsufficientCredits):
            async with dbc.map(prompts(10), manifest=manifest) as run:
                async for item in run:
                    done.append(item)
        assert emu.stats.submissions_accepted == 4 and len(done) == 4
        assert set(dbc.retired_keys) == {0, 1}
    states = dba.read_manifest(manifest).values()
    assert sum(1 for state in states if state.status == "done") == 4
    # The rest were never accepted: pending (or never read), none failed or ambiguous.
    assert all(state.status in ("done", "pending", "not_landed") for state in states)


async def test_jobs_are_fetched_with_the_key_that_paid_also_after_a_restart(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "run.jsonl"
    requests = prompts(12)
    # Long jobs: the first run stops with jobs of both keys still on the service.
    cost = CostModel(base=40, per_step=0, per_sample=0, per_megapixel=0, noise=0)
    async with emulator(cost=cost) as emu:
        async with client(emu, [K1, K2]) as dbc, dbc.map(requests, manifest=manifest) as run:
            async for _ in run:
                break  # leave with six jobs in flight
        states = dba.read_manifest(manifest)
        paid = {state.key_index for state in states.values() if state.job_id is not None}
        assert paid == {0, 1}  # the manifest says which key paid, by position
        accepted = emu.stats.submissions_accepted

        # With only the first key, the second key's jobs cannot be fetched: they are reported
        # and left for a run with both keys, not paid for again.
        async with client(emu, [K1]) as dbc:
            items = await dbc.gather(requests, manifest=manifest)
        stranded = [item for item in items if not item.ok]
        assert stranded and all("key #2" in str(item.error) for item in stranded)
        assert all(item.job_id is not None for item in stranded)
        assert emu.stats.duplicate_requests() == {}

        async with client(emu, [K1, K2]) as dbc:
            items = await dbc.gather(requests, manifest=manifest)
        assert all(item.ok for item in items)
        assert emu.stats.duplicate_requests() == {}
        assert emu.stats.submissions_accepted == 12
        assert accepted <= 12


async def test_a_single_call_goes_to_a_key_that_can_pay() -> None:
    async with (
        emulator(key_wallets={K1: 0.0, K2: 10.0}, price_per_image=1.0) as emu,
        client(emu, [K1, K2]) as dbc,
    ):
        result = await dbc.generate(prompts(1)[0])
        assert result.output
        assert [counts.accepted for counts in emu.stats.per_key] == [0, 1]
        assert dbc.retired_keys == {0: "InsufficientCredits"}
        balance = await dbc.wallet_balance(key_index=1)
        assert balance.balance == pytest.approx(9.0)


async def test_keys_from_the_environment_are_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MODELSLAB_API_KEY", raising=False)
    monkeypatch.setenv("DREAMBOOTH_API_KEY", f" {K1} , {K2},")
    dbc = dba.DreamboothClient(base_url="http://127.0.0.1:9")
    assert dbc.key_count == 2
    assert K1 not in repr(dbc) and K2 not in repr(dbc)


def test_keys_are_checked_without_showing_them() -> None:
    with pytest.raises(dba.RequestValidationError) as repeated:
        dba.DreamboothClient([K1, K2, K1], base_url="http://127.0.0.1:9")
    assert "key #3 repeats key #1" in str(repeated.value)
    with pytest.raises(dba.RequestValidationError) as empty:
        dba.DreamboothClient([K1, " "], base_url="http://127.0.0.1:9")
    assert "key #2" in str(empty.value)
    for error in (repeated.value, empty.value):
        assert K1 not in str(error) and K1 not in repr(error.value)
    dbc = dba.DreamboothClient([K1, K2], base_url="http://127.0.0.1:9")
    with pytest.raises(dba.RequestValidationError):
        dbc._key_index(2)


async def test_every_key_is_redacted_from_what_the_service_echoes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A service that repeats the key it was sent in its error (and in a JSON escape).
    async def echo(request: web.Request) -> web.Response:
        key = (await request.json())["key"]
        escaped = "".join(f"\\u{ord(c):04x}" for c in key)
        body = f'{{"status": "error", "message": "Invalid Api Key {key}", "tip": "{escaped}"}}'
        return web.Response(text=body, status=401, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    caplog.set_level(logging.DEBUG, logger="dreambooth_async")
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with dba.DreamboothClient([K1, K2], base_url=url) as dbc:
            with pytest.raises(dba.AuthenticationError) as refused:
                await dbc.generate(prompts(1)[0])
            assert dbc.retired_keys == {0: "AuthenticationError", 1: "AuthenticationError"}
            redact = dbc._transport.redact
            assert redact(f"{K1}/{K2}") == "***/***"
    finally:
        await runner.cleanup()
    shown = f"{refused.value} {refused.value!r} {refused.value.body} {caplog.text}"
    assert K1 not in shown and K2 not in shown
    assert "key #1 retired" in caplog.text and "key #2 retired" in caplog.text


async def test_no_key_in_outputs_manifest_or_cache(tmp_path: Path) -> None:
    out = tmp_path / "out"
    async with (
        emulator(key_wallets={K1: 2.0}, price_per_image=1.0) as emu,
        client(emu, [K1, K2], cache=tmp_path / "cache.sqlite") as dbc,
    ):
        items = await dbc.gather(prompts(8), manifest=tmp_path / "run.jsonl", download_to=out)
        assert all(item.ok and item.files for item in items)
        async with dbc.map(prompts(8), download_to=tmp_path / "again") as run:
            again = [item async for item in run]
        assert all(item.ok for item in again)
        # Answered by the cache: nothing sent, nothing counted as a submission.
        assert run.stats["cache_hits"] == 8
        assert run.stats["submissions"] == 0 and run.stats["accepted"] == 0
        assert emu.stats.submissions_accepted == 8
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(files) > 10
    for path in files:
        data = path.read_bytes()
        assert K1.encode() not in data and K2.encode() not in data, path


# --- the command line: repeated --api-key, the run's accounting --------------------------------


def _generate(prompts: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return generate_command(prompts, out, base_url, None, *extra, poll_scale=SCALE)


async def _run(command: list[str], **env: str) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    with anyio.fail_after(90):
        done = await anyio.run_process(command, check=False, env={**clean, **env})
    return done.returncode, (done.stdout + done.stderr).decode()


async def test_generate_with_two_keys_reports_each_and_the_balances(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(12)))
    out = tmp_path / "out"
    wallets = {K1: 4.0, K2: 50.0}
    async with emulator(key_wallets=wallets, price_per_image=1.0) as emu:
        command = _generate(prompts, out, emu.base_url, "--cache", str(tmp_path / "c.sqlite"))
        code, text = await _run([*command, "--api-key", K1, "--api-key", K2])
        assert code == 0, text
        per_key = [counts.accepted for counts in emu.stats.per_key]
        assert per_key == [4, 8]
        report = json.loads((out / "dreambooth-report.json").read_text())
        assert report["submissions"] >= 12 and report["accepted"] == 12
        assert report["images"] == 12 and report["done"] == 12 and report["cache_hits"] == 0
        assert [key["accepted"] for key in report["keys"]] == per_key
        assert report["keys"][0]["retired"] == "InsufficientCredits"
        assert [key["spent"] for key in report["keys"]] == [4.0, 8.0]
        assert [key["wallet_drop"] for key in report["keys"]] == [4.0, 8.0]
        assert report["balance_before"] == 54.0 and report["balance_after"] == 42.0
        assert report["spent"] == 12.0 and report["currency"] == "USD"
        assert report["price_per_image"] == 1.0 and report["price_source"] == "measured"
        assert report["wallet_drop"] == 12.0
        assert "key #1 retired" in text
        assert "key #1: submissions" in text and "key #2: submissions" in text
        assert "spent 4.00 USD (its wallet dropped 4.00 USD)" in text
        assert "spent 12.00 USD: this run's 12 images at 1.00 USD (measured" in text
        assert "account balance 54.00 USD -> 42.00 USD (the account's drop 12.00 USD" in text

        # The same prompts into another folder: every one from the cache, nothing sent; the
        # keys from the environment this time.
        again = tmp_path / "again"
        command = _generate(prompts, again, emu.base_url, "--cache", str(tmp_path / "c.sqlite"))
        code, text = await _run(command, DREAMBOOTH_API_KEY=f"{K1},{K2}")
        assert code == 0, text
        report = json.loads((again / "dreambooth-report.json").read_text())
        assert report["cache_hits"] == 12 and report["submissions"] == 0
        assert report["spent"] == 0.0
        assert emu.stats.submissions_accepted == 12
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert K1.encode() not in data and K2.encode() not in data, path
    assert K1 not in text and K2 not in text
