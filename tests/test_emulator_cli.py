"""``python -m dreambooth_async.emulator``: serving in a process of its own, configuration errors
in option names, and the request log of ``-v``."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import sys
from pathlib import Path

import aiohttp
import attrs
import pytest
from _emulator_fixtures import KEY, post

from dreambooth_async.emulator import (
    CostModel,
    Emulator,
    EmulatorConfig,
    FaultConfig,
    build_arg_parser,
    config_from_args,
)
from dreambooth_async.emulator import _cli as emulator_cli
from dreambooth_async.emulator._cli import OptionError
from dreambooth_async.emulator._cli import main as emulator_main

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


async def test_module_prints_its_url_and_key_and_serves_until_terminated() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dreambooth_async.emulator",
        "--port",
        "0",
        "--time-scale",
        "0.01",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        # The timeouts only turn a hang into a failure; reading ends on the printed lines.
        first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        second = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert first.startswith("base_url: http://127.0.0.1:")
        assert second == f"key: {KEY}"
        base_url = first.removeprefix("base_url: ")
        async with aiohttp.ClientSession() as http:
            status, load, _ = await post(http, f"{base_url}/api/v3/system_load", {"key": KEY})
        assert status == 200
        assert load == {"queue_num": 0, "queue_time": 0.0, "status": "ok"}
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, stderr.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


def test_arguments_make_the_configuration() -> None:
    args = build_arg_parser().parse_args(
        [
            "--port=0",
            "--key=a",
            "--key=b",
            "--queue-limit=1000000",
            "--time-scale=0.0001",
            "--spam-filter=off",
            "--http-errors",
            "--cold-models=sd-1.5",
            "--fault-5xx=0.1",
            "--fault-seed=3",
        ]
    )
    config = config_from_args(args)
    assert config.keys == ("a", "b")
    assert (config.queue_limit, config.time_scale, config.port) == (1_000_000, 0.0001, 0)
    assert (config.spam_filter, config.http_errors) == (False, True)
    assert config.cold_models == ("sd-1.5",)
    assert (config.faults.rate_5xx, config.faults.seed) == (0.1, 3)
    defaults = config_from_args(build_arg_parser().parse_args([]))
    assert defaults == EmulatorConfig(port=7860)


# --- configuration errors in the words of the command line ------------------------------------

_PROG = "python -m dreambooth_async.emulator"
# Configuration field names an error must not show where an option says it better.
_FIELD_NAMES = re.compile(
    r"(?<![\w-])(queue_limit|time_scale|rate_\w+|slow_delay|cold_models|key_wallets"
    r"|key_queue_limits|eta_bias|webhook_drop_rate|base|keys|models)(?![\w-])"
)


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What ``python -m dreambooth_async.emulator ARGV`` says after ``error:`` (exit 2)."""
    with pytest.raises(SystemExit) as exited:
        emulator_main(["--port", "0", *argv])
    assert exited.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"{_PROG}: error: "), last
    return last.removeprefix(f"{_PROG}: error: ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--queue-limit", "0"], "--queue-limit: must be >= 1 (got 0)"),
        (["--time-scale", "0"], "--time-scale: must be > 0 (got 0.0)"),
        (["--eta-bias", "-1"], "--eta-bias: must be > -1 (got -1.0)"),
        (["--webhook-drop-rate", "1.5"], "--webhook-drop-rate: must be from 0 to 1 (got 1.5)"),
        (["--cost-base", "-1"], "--cost-base: must be >= 0 (got -1.0)"),
        (["--fault-5xx", "2"], "--fault-5xx: must be from 0 to 1 (got 2.0)"),
        (["--slow-delay", "-1"], "--slow-delay: must be >= 0 (got -1.0)"),
        (["--cold-models", "nope"], "--cold-models: not in --models (nope)"),
        (
            # Job-level rates are drawn apart: --fault-failed is not part of the sum.
            ["--fault-5xx=0.5", "--fault-429=0.5", "--fault-slow=0.3", "--fault-failed=0.9"],
            "--fault-5xx, --fault-429, --fault-slow: add up to 1.300, more than 1 "
            "(the request-level fault kinds are slices of one draw per request)",
        ),
    ],
)
def test_configuration_errors_name_their_options(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    said = _usage_error(argv, capsys)
    assert said == message
    assert not _FIELD_NAMES.search(said), said


def test_errors_about_per_key_settings_name_a_position_never_the_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = "sk-config-error-check-5d0c"
    said = _usage_error(["--key", secret, "--key-queue-limit", f"{secret}=0"], capsys)
    assert said == "--key-queue-limit: gives --key[0] a limit that is not an integer >= 1"
    said = _usage_error(["--key", "a", "--key-wallet", f"{secret}=3"], capsys)
    assert said == "--key-wallet: names 1 key(s) that are not in --key"
    said = _usage_error(["--key", secret, "--key-wallet", f"{secret}=-1"], capsys)
    assert said == "--key-wallet: gives --key[0] a wallet that is not a number >= 0"


def test_every_numeric_option_out_of_range_is_reported_under_its_own_name() -> None:
    parser = build_arg_parser()
    numeric = [
        max(action.option_strings, key=len)
        for action in parser._actions
        if action.option_strings
        and (action.type in (int, float) or action.dest == "wallet")
        and not action.dest.endswith("seed")  # any integer is a seed
    ]
    assert len(numeric) > 30
    for option in numeric:
        with pytest.raises(OptionError) as caught:
            config_from_args(parser.parse_args([f"{option}=-5"]))
        assert caught.value.options == (option,)
        assert caught.value.usage_text().startswith(f"{option}: must be "), caught.value
    # Values argparse's choices would refuse, given straight to config_from_args.
    args = parser.parse_args([])
    args.eta_noise_kind = "bogus"
    with pytest.raises(OptionError) as caught:
        config_from_args(args)
    assert caught.value.usage_text() == (
        "--eta-noise-kind: must be one of normal, uniform (got 'bogus')"
    )


def test_every_setting_of_the_configuration_has_an_option() -> None:
    # config_from_args reads the options through these tables; a setting left out of them
    # could neither be set from the command line nor named in an error.
    not_options = {"cost", "faults", "max_body_bytes"}
    parser_options = set(build_arg_parser()._option_string_actions)
    for cls, options in (
        (EmulatorConfig, emulator_cli._EMULATOR_OPTIONS),
        (CostModel, emulator_cli._COST_OPTIONS),
        (FaultConfig, emulator_cli._FAULT_OPTIONS),
    ):
        fields = {field.name for field in attrs.fields(cls)} - not_options
        assert set(options) == fields, cls
        assert set(options.values()) <= parser_options


def test_the_library_names_the_settings_by_field() -> None:
    with pytest.raises(ValueError) as caught:
        FaultConfig(rate_5xx=0.7, rate_drop_after=0.4)
    assert str(caught.value).startswith("rate_5xx + rate_drop_after add up to 1.100, more than 1")
    with pytest.raises(ValueError, match=r"^cold_models not in models \(x\{y\}\)$"):
        EmulatorConfig(cold_models=("x{y}",))


# --- -v: one log line per request, never the key -----------------------------------------------

_LINE = re.compile(
    r"(?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{3}|- \([^)]*\)) (?P<ms>\d+\.\d) ms"
)
_SECRET = "sk-request-log-check-91fe"


def _logged(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[re.Match[str]]:
    lines = [
        record.getMessage()
        for record in caplog.records
        if record.name == "dreambooth_async.emulator" and record.levelno == level
    ]
    matches = [_LINE.fullmatch(line) for line in lines]
    assert all(matches), lines
    return [match for match in matches if match is not None]


async def test_each_request_is_logged_with_status_and_time_never_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="dreambooth_async.emulator")
    config = EmulatorConfig(keys=(_SECRET,), time_scale=0.01, http_errors=True)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        base = emu.base_url
        # The key in each of the places it travels: the JSON body, v7's header, GET's query.
        body = {"key": _SECRET, "prompt": "a kite", "model_id": "midjourney"}
        status, answer, _ = await post(http, f"{base}/api/v6/images/text2img", body)
        assert status == 200
        job = answer["id"]
        async with http.post(f"{base}/api/v7/images/fetch/{job}", headers={"key": _SECRET}) as r:
            assert r.status == 200
        async with http.get(f"{base}/api/v6/processing/request_count?key={_SECRET}") as r:
            assert r.status == 200
        status, _, _ = await post(http, f"{base}/api/v3/system_load", {"key": "wrong"})
        assert status == 401
        async with http.get(f"{base}/generations/missing.png") as r:
            assert r.status == 404
    served = [(m["method"], m["path"], m["status"]) for m in _logged(caplog)]
    assert served == [
        ("POST", "/api/v6/images/text2img", "200"),
        ("POST", f"/api/v7/images/fetch/{job}", "200"),
        ("GET", "/api/v6/processing/request_count", "200"),
        ("POST", "/api/v3/system_load", "401"),
        ("GET", "/generations/missing.png", "404"),
    ]
    # -vv: what the service answered, by status and job id.
    details = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert f"POST /api/v6/images/text2img: fault=none answer=processing id={job}" in details
    assert _SECRET not in caplog.text
    assert not any(_SECRET in str(record.args) for record in caplog.records)


async def test_the_log_shows_dropped_connections_and_slow_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dreambooth_async.emulator")
    scale = 0.01
    dropping = EmulatorConfig(time_scale=scale, faults=FaultConfig(rate_drop_before=1.0))
    slow = EmulatorConfig(time_scale=scale, faults=FaultConfig(rate_slow=1.0, slow_delay=20.0))
    body = {"key": KEY, "request_id": 1}
    async with aiohttp.ClientSession() as http:
        async with Emulator(dropping) as emu:
            with pytest.raises(aiohttp.ClientError):
                await post(http, f"{emu.base_url}/api/v6/images/fetch", body)
        async with Emulator(slow) as emu:
            status, _, _ = await post(http, f"{emu.base_url}/api/v6/images/fetch", body)
            assert status == 200
    dropped, late = _logged(caplog)
    assert (dropped["path"], dropped["status"]) == (
        "/api/v6/images/fetch",
        "- (connection dropped)",
    )
    assert (late["path"], late["status"]) == ("/api/v6/images/fetch", "200")
    # The answer left 20 service seconds late: 200 ms at this scale.
    assert float(late["ms"]) >= 20.0 * scale * 1000


async def test_module_logs_requests_with_v_and_details_with_vv() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dreambooth_async.emulator",
        "--port=0",
        "--time-scale=0.01",
        f"--key={_SECRET}",
        "-vv",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        base_url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split(": ")[1]
        async with aiohttp.ClientSession() as http:
            url = f"{base_url.strip()}/api/v6/processing/request_count?key={_SECRET}"
            async with http.get(url) as answer:
                assert answer.status == 200
        # The lines are written before the answer leaves: they are there to read now.
        debug = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        info = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        proc.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, rest.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    assert "DEBUG dreambooth_async.emulator: GET /api/v6/processing/request_count: " in debug
    assert re.search(
        r" INFO dreambooth_async.emulator: GET /api/v6/processing/request_count 200 [\d.]+ ms$",
        info,
    )
    assert _SECRET not in debug + info + rest.decode()
