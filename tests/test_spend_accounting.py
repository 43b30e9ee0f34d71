"""The run's own spend (``dreambooth_async._spend.SpendGuard``): exact money, the price per
image given or measured from the wallet around a lone submission (the lowest of its brackets
when another client was charged inside one), the budget on the run's own images, and the
report's figures. The wallets are the emulator's, over HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from _cli_commands import emulator_generate_args
from aiohttp import web
from anyio.from_thread import start_blocking_portal

import dreambooth_async as dba
from dreambooth_async._models import WalletBalance
from dreambooth_async._spend import SpendGuard, money
from dreambooth_async.cli import main
from dreambooth_async.cli.dataset.report import accounting_lines, build_report
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig

pytestmark = pytest.mark.anyio

SCALE = 0.01
KEY = "sk-accounting-7d3e91c0b2"
OTHER = "sk-accounting-other-55a1"


@contextlib.asynccontextmanager
async def emulator(**config: Any) -> AsyncIterator[Emulator]:
    config.setdefault("keys", (KEY,))
    config.setdefault("time_scale", SCALE)
    config.setdefault("cost", CostModel(base=5, per_step=0, per_sample=0, per_megapixel=0, noise=0))
    config.setdefault("workers", 8)
    config.setdefault("queue_limit", 8)
    config.setdefault("wallet", 10.0)
    config.setdefault("spam_filter", False)
    async with Emulator(EmulatorConfig(**config)) as emu:
        yield emu


def client(emu: Emulator) -> dba.DreamboothClient:
    return dba.DreamboothClient(KEY, base_url=emu.base_url, poll=dba.PollPolicy().scaled(SCALE))


def request(n: int, samples: int = 1) -> dba.Text2Img:
    return dba.Text2Img(model_id="midjourney", prompt=f"a harbour {n}", seed=n, samples=samples)


def charged(emu: Emulator) -> float:
    return sum(counts.spent for counts in emu.stats.per_key)


async def post(guard: SpendGuard, dbc: dba.DreamboothClient, n: int, samples: int = 1) -> None:
    """One submission as the batch makes it: through the budget, bracketed, settled."""
    assert await guard.allows(samples)
    bracket = await guard.before_post(0)
    await dbc.submit(request(n, samples))
    await guard.after_post(bracket, accepted=True, images=samples)
    guard.settled(samples, accepted=True)


# --- exact money ------------------------------------------------------------------------------


def test_money_is_the_floats_shortest_text() -> None:
    assert money(0.1) == Decimal("0.1") and money(99.99) == Decimal("99.99")
    assert money(100.0) - money(99.99) == Decimal("0.01")  # as floats: 0.010000000000005116
    assert money(Decimal("0.3")) == Decimal("0.3")


@pytest.mark.parametrize(
    ("amount", "price", "images"),
    [(0.05, 0.01, 5), (0.3, 0.1, 3), (0.07, 0.01, 7), (1.0, 0.1, 10), (0.06, 0.02, 3)],
)
async def test_a_given_price_fills_the_budget_exactly(
    amount: float, price: float, images: int
) -> None:
    # Issue 23: --max-spend 0.05 at 0.01 per image stopped at 4 images (0.04 + 0.01 > 0.05 in
    # floats). No wallet is read with a given price: the client is never opened.
    guard = SpendGuard(dba.DreamboothClient(KEY), amount, price=price)
    await guard.start()
    let_through = 0
    while await guard.allows(1):
        guard.settled(1, accepted=True)
        let_through += 1
        assert let_through <= images
    assert let_through == images and guard.exhausted
    assert guard.spent == money(price) * images <= money(amount)
    assert guard.readings == 0 and guard.price_source == "given"


async def test_images_in_flight_count_against_the_budget() -> None:
    guard = SpendGuard(dba.DreamboothClient(KEY), 0.05, price=0.01)
    await guard.start()
    assert await guard.allows(4)  # four samples on the wire, no answer yet
    assert not await guard.allows(2)  # 0.06 would pass 0.05
    guard2 = SpendGuard(dba.DreamboothClient(KEY), 0.05, price=0.01)
    assert await guard2.allows(4)
    guard2.settled(4, accepted=False)  # refused: not billed, not the run's
    assert await guard2.allows(5) and guard2.images == 0


# --- the measured price -----------------------------------------------------------------------


async def test_the_price_is_measured_from_a_lone_submission() -> None:
    async with emulator(price_per_image=0.01) as emu, client(emu) as dbc:
        guard = SpendGuard(dbc, 0.05)
        await guard.start()
        assert guard.price is None
        n = 0
        while await guard.allows(1):
            bracket = await guard.before_post(0)
            await dbc.submit(request(n))
            await guard.after_post(bracket, accepted=True, images=1)
            guard.settled(1, accepted=True)
            n += 1
        assert n == 5 and charged(emu) == pytest.approx(0.05)
        assert guard.price == Decimal("0.01") and guard.spent == Decimal("0.05")
        assert guard.price_source == "measured"
        # Brackets on the 1st, 2nd and 4th accepted submissions: a reading before and after.
        assert len(guard.brackets) == 3 and guard.readings == 1 + 2 * 3


async def test_samples_divide_the_drop() -> None:
    async with emulator(price_per_image=0.0025) as emu, client(emu) as dbc:
        guard = SpendGuard(dbc)
        await guard.start()
        await post(guard, dbc, 0, samples=4)
        assert guard.price == Decimal("0.0025") and guard.spent == Decimal("0.01")
        summary = guard.summary()
        assert summary["spent"] == 0.01 and summary["price_per_image"] == 0.0025


async def test_another_clients_charge_inside_a_bracket_does_not_stick() -> None:
    # Shards on one key: the wallet drops for the other's images too. A bracket that caught
    # one reads twice the price; the next clean one brings it back, and the run's spend is
    # its own images only.
    async with (
        emulator(price_per_image=0.01) as emu,
        client(emu) as dbc,
        client(emu) as other,
    ):
        guard = SpendGuard(dbc)
        await guard.start()
        bracket = await guard.before_post(0)
        await other.submit(request(100))  # the other shard, charged inside our bracket
        await dbc.submit(request(0))
        await guard.after_post(bracket, accepted=True, images=1)
        guard.settled(1, accepted=True)
        assert guard.price == Decimal("0.02")  # an upper bound: never less than the price
        await other.submit(request(101))  # outside any bracket: no effect
        await post(guard, dbc, 1)  # the 2nd accepted: measured again, alone
        assert guard.price == Decimal("0.01")
        await other.submit(request(102))
        await post(guard, dbc, 2)  # not measured (the 3rd)
        assert guard.brackets == [Decimal("0.02"), Decimal("0.01")]
        assert guard.images == 3 and guard.spent == Decimal("0.03")
        assert charged(emu) == pytest.approx(0.06)  # the account's: three of them are not ours


async def test_a_bracket_holds_the_runs_other_submissions() -> None:
    async with emulator(price_per_image=0.01) as emu, client(emu) as dbc:
        guard = SpendGuard(dbc)
        await guard.start()
        bracket = await guard.before_post(0)
        assert bracket is not None
        released = anyio.Event()

        async def second() -> None:
            token = await guard.before_post(0)
            released.set()
            await guard.after_post(token, accepted=False, images=1)

        async with anyio.create_task_group() as group:
            group.start_soon(second)
            await anyio.wait_all_tasks_blocked()
            assert not released.is_set()  # waits while the price is measured
            await dbc.submit(request(0))
            await guard.after_post(bracket, accepted=True, images=1)
            await released.wait()
        assert guard.price == Decimal("0.01")


async def test_a_bracket_waits_for_the_runs_submissions_on_the_wire() -> None:
    async with emulator(price_per_image=0.01) as emu, client(emu) as dbc:
        guard = SpendGuard(dbc)
        await guard.start()
        await post(guard, dbc, 0)  # the 1st and 2nd accepted are measured
        await post(guard, dbc, 1)
        # Two go out unmeasured; once the first is accepted, a measurement is due (the 4th),
        # but the other is still on the wire: a bracket now could count its charge too.
        first = await guard.before_post(0)
        on_the_wire = await guard.before_post(0)
        assert first is None and on_the_wire is None
        await guard.after_post(first, accepted=True, images=1)
        measured = anyio.Event()

        async def measure() -> None:
            bracket = await guard.before_post(0)
            assert bracket is not None
            measured.set()
            await guard.after_post(bracket, accepted=False, images=1)

        async with anyio.create_task_group() as group:
            group.start_soon(measure)
            await anyio.wait_all_tasks_blocked()
            assert not measured.is_set()
            await guard.after_post(on_the_wire, accepted=False, images=1)
            await measured.wait()


async def test_before_the_price_is_known_one_submission_at_a_time_under_a_budget() -> None:
    async with emulator(price_per_image=0.01) as emu, client(emu) as dbc:
        guard = SpendGuard(dbc, 0.05)
        await guard.start()
        assert await guard.allows(1)
        second = anyio.Event()

        async def next_one() -> None:
            assert await guard.allows(1)
            second.set()

        async with anyio.create_task_group() as group:
            group.start_soon(next_one)
            await anyio.wait_all_tasks_blocked()
            assert not second.is_set()  # the first's answer measures the price first
            bracket = await guard.before_post(0)
            await dbc.submit(request(0))
            await guard.after_post(bracket, accepted=True, images=1)
            guard.settled(1, accepted=True)
            await second.wait()
        assert guard.price == Decimal("0.01")


async def test_a_wallet_that_does_not_drop_leaves_the_price_unknown() -> None:
    # A service that bills later than acceptance (the emulator at no price): nothing is
    # learnt, the spend is not known, and the budget falls back to the account's drop.
    async with emulator(price_per_image=0.0) as emu, client(emu) as dbc:
        guard = SpendGuard(dbc, 0.05)
        await guard.start()
        for n in range(3):
            await post(guard, dbc, n)
        assert guard.price is None and guard.spent is None and guard.brackets == []
        assert guard.summary()["spent"] is None and not guard.exhausted


async def test_no_wallet_no_bracket() -> None:
    async def not_here(request: web.Request) -> web.Response:
        return web.json_response({"status": "error", "message": "Not found"}, status=404)

    app = web.Application()
    app.router.add_post("/{tail:.*}", not_here)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with dba.DreamboothClient(KEY, base_url=url) as dbc:
            guard = SpendGuard(dbc)  # counting only, no budget: no error
            await guard.start()
            assert await guard.before_post(0) is None  # nothing held for a measurement
            assert await guard.before_post(0) is None
    finally:
        await runner.cleanup()


# --- through the batch ------------------------------------------------------------------------


@pytest.mark.parametrize("given", [None, 0.01], ids=["measured", "given"])
async def test_a_batch_spends_its_budget_to_the_last_image(given: float | None) -> None:
    async with emulator(price_per_image=0.01) as emu, client(emu) as dbc:
        requests = [request(n) for n in range(20)]
        async with dbc.map(requests, max_spend=0.05, price_per_image=given) as run:
            items = [item async for item in run]
        assert len(items) == 5 and charged(emu) == pytest.approx(0.05)
        spend = run.spend
        assert spend is not None
        assert spend["spent"] == 0.05 and spend["images"] == 5
        assert spend["price_source"] == ("given" if given else "measured")
        assert run.stats["unsent"] == 15


async def test_without_tracking_there_is_no_spend() -> None:
    async with emulator() as emu, client(emu) as dbc:
        async with dbc.map([request(0)]) as run:
            [item async for item in run]
        assert run.spend is None
        async with dbc.map([request(1)], track_spend=True) as run:
            [item async for item in run]
        assert run.spend is not None and run.spend["spent"] == 0.01


async def test_price_per_image_is_checked() -> None:
    async with emulator() as emu, client(emu) as dbc:
        for wrong in (-0.01, True, float("inf"), float("nan"), "0.01"):
            with pytest.raises(ValueError, match="price_per_image"):
                dbc.map([request(0)], price_per_image=wrong)  # type: ignore[arg-type]


# --- the report -------------------------------------------------------------------------------


def _balance(amount: float) -> WalletBalance:
    return WalletBalance(balance=amount, currency="USD")


def test_the_report_puts_the_runs_spend_beside_the_accounts_drop() -> None:
    report = build_report(
        stats={"images": 23, "accepted": 23, "submissions": 23},
        key_stats=[{"key": "#1", "images": 23, "accepted": 23}],
        before=[_balance(10.0)],
        after=[_balance(9.6)],
        elapsed=1.0,
        spend={"spent": 0.23, "images": 23, "price_per_image": 0.01, "price_source": "measured"},
    )
    assert report["spent"] == 0.23 and report["wallet_drop"] == 0.4
    assert report["keys"][0]["spent"] == 0.23 and report["keys"][0]["wallet_drop"] == 0.4
    lines = accounting_lines(report)
    assert "spent 0.23 USD: this run's 23 images at 0.01 USD (measured from the wallet)" in lines
    assert any(
        line.startswith("account balance 10.00 USD -> 9.60 USD (the account's drop 0.40 USD")
        for line in lines
    )


def test_a_price_below_a_cent_is_shown_whole() -> None:
    report = build_report(
        stats={"images": 4},
        key_stats=[{"key": "#1", "images": 4}],
        before=[None],
        after=[None],
        elapsed=1.0,
        spend={"price_per_image": 0.0025, "price_source": "given"},
    )
    assert report["spent"] == 0.01 and report["wallet_drop"] is None
    assert "spent 0.01: this run's 4 images at 0.0025 (given)" in accounting_lines(report)


def test_an_unknown_price_is_said_so() -> None:
    report = build_report(
        stats={"images": 4},
        key_stats=[{"key": "#1", "images": 4}],
        before=[_balance(1.0)],
        after=[_balance(1.0)],
        elapsed=1.0,
        spend={"price_per_image": None, "price_source": None},
    )
    assert report["spent"] is None
    assert any("--price-per-image" in line for line in accounting_lines(report))


def test_the_blocking_client_tells_the_spend_too() -> None:
    config = EmulatorConfig(
        keys=(KEY,),
        time_scale=SCALE,
        cost=CostModel(base=5, per_step=0, per_sample=0, per_megapixel=0, noise=0),
        wallet=10.0,
        price_per_image=0.01,
    )
    with start_blocking_portal("asyncio") as portal:
        emu = Emulator(config)
        portal.call(emu.start)
        try:
            poll = dba.PollPolicy().scaled(SCALE)
            with dba.sync.DreamboothClient(KEY, base_url=emu.base_url, poll=poll) as dbc:
                with dbc.map([request(n) for n in range(8)], max_spend=0.05) as run:
                    items = list(run)
                assert len(items) == 5
                assert run.spend is not None and run.spend["spent"] == 0.05
        finally:
            portal.call(emu.aclose)


async def test_an_unlimited_emulator_wallet_still_shows_the_price() -> None:
    # Never refused, but it drops: a run against it (the demo, --emulator) measures its spend.
    async with emulator(wallet=None, price_per_image=0.01) as emu, client(emu) as dbc:
        before = await dbc.wallet_balance()
        await dbc.submit(request(0, samples=3))
        after = await dbc.wallet_balance()
        assert before.balance == 1_000_000.0 and after.balance == 999_999.97


def test_generate_on_the_embedded_emulator_reports_the_runs_spend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a buoy, study {i}\n" for i in range(6)))
    out = tmp_path / "out"
    assert main(emulator_generate_args(prompts, out, time_scale=0.002)) == 0
    text = capsys.readouterr().out
    assert "spent 0.06 USD: this run's 6 images at 0.01 USD (measured from the wallet)" in text
    report = json.loads((out / "dreambooth-report.json").read_text())
    assert report["spent"] == 0.06 and report["wallet_drop"] == 0.06
