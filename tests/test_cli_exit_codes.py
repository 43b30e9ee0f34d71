"""Exit codes a scheduler can trust, and early stops that cost little: ``generate`` exits 0 only
when every prompt is done, 3 when a budget stopped it, 4 when the service did (a refused key, an
empty wallet, a base URL that answers 404); a rerun with a larger budget or a fixed key exits 0.
A refused key costs one submission, a base URL that is not the API root a few, and each stop is
said once."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from _cli_commands import emulator_generate_args, generate_command
from aiohttp import web

import dreambooth_async as dba
from dreambooth_async import cli
from dreambooth_async._batch import UNREACHABLE_AFTER
from dreambooth_async._exit import EXIT_CODES
from dreambooth_async.emulator import Emulator, EmulatorConfig

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
SCALE = 0.005
GOOD = "sk-exit-good-5b1f9c3e7a"
BAD = "sk-exit-bad-0c2e4a6f8d"
PROMPTS = 24


def _prompts(tmp_path: Path, count: int = PROMPTS) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("# a comment\n" + "".join(f"a lighthouse, take {i}\n" for i in range(count)))
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(name, None)
    return {**env, **extra}


async def _run(command: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    with anyio.fail_after(60):
        done = await anyio.run_process(command, check=False, env=env or _env())
    return done.returncode, done.stdout.decode(), done.stderr.decode()


# --- the table --------------------------------------------------------------------------------


def test_generate_help_documents_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = capsys.readouterr().out
    section = text[text.index("exit codes:") :]
    entries = dict(re.findall(r"^  (\d+)\s+(.+)$", section, flags=re.MULTILINE))
    assert sorted(map(int, entries)) == sorted(EXIT_CODES)
    for code, meaning in EXIT_CODES.items():
        assert meaning.startswith(entries[str(code)].strip())
    assert (cli.EXIT_BUDGET, cli.EXIT_SERVICE) == (3, 4)
    # The codes that were documented before stay what they were.
    assert (cli.EXIT_OK, cli.EXIT_PARTIAL, cli.EXIT_USAGE, cli.EXIT_INTERRUPTED) == (0, 1, 2, 130)


def test_the_readme_and_the_scale_out_recipes_name_the_codes() -> None:
    readme = (ROOT / "README.md").read_text()
    for code in EXIT_CODES:
        assert re.search(rf"\|\s*`{code}`\s*\|", readme), f"README: no row for exit code {code}"
    guide = (ROOT / "docs/guide/scale-out.md").read_text()
    kubernetes = guide[guide.index("## A Kubernetes Indexed Job") :]
    slurm = guide[guide.index("## A Slurm array") :]
    kubernetes = kubernetes[: kubernetes.index("\n## ", 3)]
    slurm = slurm[: slurm.index("\n## ", 3)] if "\n## " in slurm[3:] else slurm
    for recipe in (kubernetes, slurm):
        assert re.search(r"\b3\b", recipe) and re.search(r"\b4\b", recipe)
        assert "budget" in recipe


# --- a budget stop ----------------------------------------------------------------------------


def test_a_budget_stop_exits_3_the_gallery_counts_every_prompt_left_and_a_rerun_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts, out = _prompts(tmp_path), tmp_path / "out"
    assert cli.main(emulator_generate_args(prompts, out, "--max-images", "10")) == cli.EXIT_BUDGET
    text = capsys.readouterr().out
    assert "done 10, failed 0, ambiguous 0" in text and "budget reached" in text
    # The page counts the prompts never started, not only the one the batch read last.
    page = (out / "index.html").read_text()
    assert f"10 images · 0 failed · 0 ambiguous · {PROMPTS - 10} unfinished" in page
    states = dba.read_manifest(out / cli.MANIFEST_NAME)
    assert sum(state.status == "pending" for state in states.values()) == PROMPTS - 10

    assert cli.main(emulator_generate_args(prompts, out, "--max-images", "100")) == cli.EXIT_OK
    assert f"done {PROMPTS} ({10} from an earlier run)" in capsys.readouterr().out
    assert f"{PROMPTS} images · 0 failed · 0 ambiguous · 0 unfinished" in (
        (out / "index.html").read_text()
    )


async def test_a_spend_budget_stop_exits_3_and_a_larger_budget_exits_0(tmp_path: Path) -> None:
    prompts, out = _prompts(tmp_path, 12), tmp_path / "out"
    config = EmulatorConfig(keys=(GOOD,), time_scale=SCALE, wallet=100.0, price_per_image=0.01)
    async with Emulator(config) as emu:
        command = generate_command(prompts, out, emu.base_url, GOOD, poll_scale=SCALE)
        code, stdout, _ = await _run([*command, "--max-spend", "0.05"])
        assert code == cli.EXIT_BUDGET, stdout
        assert emu.stats.submissions_accepted < 12
        code, stdout, _ = await _run([*command, "--max-spend", "5"])
        assert code == cli.EXIT_OK, stdout
        assert emu.stats.submissions_accepted == 12
        assert emu.stats.duplicate_submissions() == {}


# --- stops by the service ---------------------------------------------------------------------


async def test_a_refused_key_costs_one_submission_is_said_once_and_a_good_key_exits_0(
    tmp_path: Path,
) -> None:
    prompts, out = _prompts(tmp_path), tmp_path / "out"
    config = EmulatorConfig(keys=(GOOD,), time_scale=SCALE, queue_limit=8)
    async with Emulator(config) as emu:
        command = generate_command(prompts, out, emu.base_url, BAD, poll_scale=SCALE)
        code, stdout, stderr = await _run(command)
        assert code == cli.EXIT_SERVICE, stdout + stderr
        # One submission found the key refused; no other went out meanwhile.
        assert emu.stats.submissions_received == 1
        said = stdout + stderr
        assert said.count("Invalid Api Key") == 1, said
        assert "stopped submitting" in stdout and "use a valid key" in stdout
        assert stderr == "" and BAD not in said
        # The page counts the prompts the stop left unread.
        page = (out / "index.html").read_text()
        assert f"0 images · 0 failed · 0 ambiguous · {PROMPTS} unfinished" in page

        fixed = generate_command(prompts, out, emu.base_url, GOOD, poll_scale=SCALE)
        code, stdout, stderr = await _run(fixed)
        assert code == cli.EXIT_OK, stdout + stderr
        assert f"done {PROMPTS}, failed 0, ambiguous 0" in stdout
        assert emu.stats.submissions_accepted == PROMPTS


async def test_an_empty_wallet_exits_4_and_costs_one_submission(tmp_path: Path) -> None:
    prompts, out = _prompts(tmp_path), tmp_path / "out"
    config = EmulatorConfig(keys=(GOOD,), time_scale=SCALE, wallet=0.0, queue_limit=8)
    async with Emulator(config) as emu:
        command = generate_command(prompts, out, emu.base_url, GOOD, poll_scale=SCALE)
        code, stdout, stderr = await _run(command)
        assert code == cli.EXIT_SERVICE, stdout + stderr
        assert emu.stats.submissions_received == 1
        assert "top up the wallet" in stdout and stderr == ""


@pytest.fixture
async def not_the_api() -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback server that answers 404 to everything (a web site, not the API), and the
    paths it was POSTed."""
    posted: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        if request.method == "POST":
            posted.append(request.url.path)
        return web.Response(status=404, text="<html><title>Not Found</title></html>")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", posted
    finally:
        await runner.cleanup()


async def test_a_base_url_that_answers_404_stops_after_a_few_said_once(
    tmp_path: Path, not_the_api: tuple[str, list[str]]
) -> None:
    base_url, posted = not_the_api
    prompts, out = _prompts(tmp_path, 40), tmp_path / "out"
    code, stdout, stderr = await _run(
        generate_command(prompts, out, base_url, GOOD, poll_scale=SCALE)
    )
    assert code == cli.EXIT_SERVICE, stdout + stderr
    submissions = [path for path in posted if path.endswith("/text2img")]
    assert len(submissions) == UNREACHABLE_AFTER, posted
    said = stdout + stderr
    assert said.count("does not look like the API root") == 1, said
    assert "check --base-url" in stdout and stderr == ""
    # Nothing landed: every prompt stays for the rerun against the right root.
    states = dba.read_manifest(out / cli.MANIFEST_NAME)
    assert not [s for s in states.values() if s.status in ("done", "submitted", "ambiguous")]


async def test_a_plain_http_warning_is_one_line(
    tmp_path: Path, not_the_api: tuple[str, list[str]]
) -> None:
    # A base URL that is not on this machine, reached through a proxy that is (so nothing
    # leaves it): the command warns that the key would travel unencrypted, in one line.
    proxy, posted = not_the_api
    prompts, out = _prompts(tmp_path, 3), tmp_path / "out"
    command = generate_command(prompts, out, "http://api.example.invalid", GOOD)
    code, stdout, stderr = await _run(command, _env(HTTP_PROXY=proxy))
    assert code == cli.EXIT_SERVICE, stdout + stderr
    assert posted, "the proxy was not used"
    assert stderr.splitlines() == [
        "dreambooth-async: warning: base_url 'http://api.example.invalid' is plain http: "
        "the API key would travel unencrypted"
    ]
