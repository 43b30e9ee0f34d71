"""What users of other API command lines expect: ``--version``, comments in prompts files,
``DREAMBOOTH_BASE_URL``, a base install that names the extra it lacks, and an ``emulator``
subcommand whose options say what they are and whose errors use their names."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import anyio
import pytest
from _cli_commands import emulator_generate_args

import dreambooth_async as dba
from dreambooth_async import cli
from dreambooth_async.emulator import Emulator, EmulatorConfig, build_arg_parser


def _cli(
    *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dreambooth_async.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


def _help(command: str) -> str:
    parser = cli.build_parser()
    choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    return str(choices[command].format_help())


def _generate(prompts: Path, out: Path, *extra: str) -> int:
    return cli.main(emulator_generate_args(prompts, out, *extra))


def _prompts_made(out: Path) -> list[str]:
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    return sorted(row["prompt"] for row in rows)


# --- --version ----------------------------------------------------------------------------------


def test_version() -> None:
    done = _cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"dreambooth-async {dba.__version__}"


# --- comments in text prompts files -------------------------------------------------------------


def test_text_files_skip_comment_and_blank_lines(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "# fruit, for the catalogue\n\n   # an indented comment\na red apple\n\t\n"
        "a pear # not a comment: the line does not start with #\n#a pear\n"
    )
    out = tmp_path / "out"
    assert _generate(prompts, out) == 0
    assert _prompts_made(out) == [
        "a pear # not a comment: the line does not start with #",
        "a red apple",
    ]
    help_text = " ".join(_help("generate").split())
    assert "blank lines and lines starting with # are skipped" in help_text


def test_errors_keep_the_physical_line_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# header\n\n# more\nthe first prompt\n")
    out = tmp_path / "out"
    assert _generate(prompts, out, "--width", "4000") == cli.EXIT_USAGE
    assert f"{prompts}:4: width=4000" in capsys.readouterr().err
    assert not out.exists()
    only_comments = tmp_path / "comments.txt"
    only_comments.write_text("# nothing to do\n\n")
    assert _generate(only_comments, out) == cli.EXIT_USAGE
    assert "no prompts in the file" in capsys.readouterr().err


def test_jsonl_and_csv_do_not_treat_hash_as_a_comment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = tmp_path / "prompts.jsonl"
    rows.write_text('{"prompt": "a kite"}\n# a comment\n')
    assert _generate(rows, tmp_path / "out1") == cli.EXIT_USAGE
    assert f"{rows}:2: not valid JSON" in capsys.readouterr().err
    table = tmp_path / "prompts.csv"
    table.write_text("prompt\n#hashtag art\n")
    assert _generate(table, tmp_path / "out2") == 0
    assert _prompts_made(tmp_path / "out2") == ["#hashtag art"]


# --- DREAMBOOTH_BASE_URL ------------------------------------------------------------------------


def test_base_url_from_the_environment_and_in_the_help(tmp_path: Path) -> None:
    help_text = " ".join(_help("generate").split())
    assert "--base-url BASE_URL the service root (default: $DREAMBOOTH_BASE_URL" in help_text
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red kite\n")
    base = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}

    async def main() -> None:
        async with Emulator(EmulatorConfig(time_scale=0.005)) as emu:
            env = {**base, "DREAMBOOTH_BASE_URL": emu.base_url, "DREAMBOOTH_API_KEY": emu.key}
            command = [
                sys.executable, "-m", "dreambooth_async.cli", "generate", str(prompts),
                "--model-id", "midjourney", "--out", str(tmp_path / "out"),
                "--poll-scale", "0.005", "--no-progress",
            ]  # fmt: skip
            with anyio.fail_after(60):
                done = await anyio.run_process(command, check=False, env=env)
            assert done.returncode == 0, done.stderr.decode()
            assert emu.stats.submissions_accepted == 1

    anyio.run(main)
    bad = _cli(
        "generate", str(prompts), "--model-id", "m", "--out", str(tmp_path / "bad"),
        env={**base, "DREAMBOOTH_BASE_URL": "modelslab.com", "DREAMBOOTH_API_KEY": "k"},
    )  # fmt: skip
    assert bad.returncode == cli.EXIT_USAGE, bad.stderr
    assert "$DREAMBOOTH_BASE_URL 'modelslab.com' is not an http:// or https:// URL" in bad.stderr
    assert not (tmp_path / "bad").exists()


# --- a base install, without Pillow -------------------------------------------------------------


@pytest.fixture
def without_pillow(tmp_path: Path) -> dict[str, str]:
    """An environment where ``import PIL`` fails, as in ``pip install dreambooth-async``."""
    hidden = tmp_path / "hide-pillow"
    (hidden / "PIL").mkdir(parents=True)
    (hidden / "PIL" / "__init__.py").write_text(
        "raise ImportError(\"No module named 'PIL' (hidden by the test)\")\n"
    )
    path = os.pathsep.join(p for p in (str(hidden), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def test_without_pillow_the_emulator_names_its_extra(
    tmp_path: Path, without_pillow: dict[str, str]
) -> None:
    done = _cli("emulator", "--port", "0", "--queue-limit", "3", env=without_pillow)
    assert done.returncode == cli.EXIT_USAGE
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert "pip install 'dreambooth-async[emulator]'" in done.stderr
    assert "unrecognized" not in done.stderr and "Traceback" not in done.stderr
    shown = _cli("emulator", "--help", env=without_pillow)
    assert shown.returncode == 0 and "dreambooth-async[emulator]" in shown.stdout
    # The rest of the command line does not need Pillow.
    assert _cli("--version", env=without_pillow).returncode == 0


def test_without_pillow_demo_and_emulator_runs_name_the_cli_extra(
    tmp_path: Path, without_pillow: dict[str, str]
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red kite\n")
    out = tmp_path / "out"
    for argv in (
        ["demo", "--out", str(out)],
        ["generate", str(prompts), "--model-id", "m", "--out", str(out), "--emulator"],
    ):
        done = _cli(*argv, env=without_pillow)
        assert done.returncode == cli.EXIT_USAGE, done.stderr
        assert "pip install 'dreambooth-async[cli]'" in done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert not out.exists(), "nothing is written before the check"


# --- the emulator subcommand --------------------------------------------------------------------


def _option_entries(help_text: str) -> dict[str, str]:
    """``--flag`` -> its whole entry in ``--help`` (the option line and its help lines)."""
    entries: dict[str, str] = {}
    current: str | None = None
    for line in help_text.splitlines():
        match = re.match(r"  (?:-\w, )?(--[\w-]+)", line)
        if match:
            current = match.group(1)
            entries[current] = line
        elif current is not None and line.startswith("      "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def _emulator_value_options() -> dict[str, str]:
    entries = _option_entries(_help("emulator"))
    switches = {"--help", "--verbose", "--http-errors"}
    assert len(entries) > 40
    return {flag: text for flag, text in entries.items() if flag not in switches}


def test_emulator_options_show_their_defaults() -> None:
    entries = _emulator_value_options()
    for entry in entries.values():
        assert "default" in entry, entry
    assert "(default: 0.0)" in entries["--fault-5xx"]
    assert "default: midjourney,sd-1.5," in entries["--models"]


def test_emulator_options_have_help_texts() -> None:
    parser = argparse.ArgumentParser()
    build_arg_parser(parser)
    bare = [
        max(action.option_strings, key=len)
        for action in parser._actions
        if action.option_strings and action.dest != "help" and not action.help
    ]
    assert bare == []


def test_every_generate_option_has_a_help_text_and_request_fields_say_their_limits() -> None:
    entries = _option_entries(_help("generate"))
    flags = [cli.options.option_name(name) for name in cli.REQUEST_FIELDS if name != "prompt"]
    assert len(flags) > 30
    for flag in entries:
        words = re.sub(r"^  (?:-\w, )?--[\w-]+(?: \S+)?", "", entries[flag]).strip()
        assert words, f"{flag} has no help text"
    # From the request classes' own validators and defaults, so they cannot drift apart.
    assert "from 1 to 1024; default: 512" in entries["--width"]
    assert "from 1 to 50; default: 30" in entries["--steps"]
    assert "from 0.0 to 1.0; default: 0.7" in entries["--strength"]
    assert "yes or no" in entries["--safety-checker"]
    assert "18 names in dreambooth_async.Scheduler" in entries["--scheduler"]
    assert "required by img2img and inpaint rows" in " ".join(entries["--init-image"].split())


def test_the_time_scale_is_described_in_one_wording() -> None:
    generate = " ".join(_option_entries(_help("generate"))["--emulator-time-scale"].split())
    emulator = " ".join(_option_entries(_help("emulator"))["--time-scale"].split())
    wording = "real seconds per service second: 0.01 makes a 30 s job take 0.3 s"
    assert wording in generate and wording in emulator


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--queue-limit", "0"], "--queue-limit must be >= 1"),
        (["--time-scale", "0"], "--time-scale must be > 0"),
        (["--fault-5xx", "2"], "--fault-5xx"),
        (["--cost-base", "-1"], "--cost-base"),
        (["--cold-models", "nope"], "--cold-models not in --models"),
        (["--key-wallet", "other=3"], "--key-wallet names 1 key(s) that are not in --key"),
    ],
)
def test_emulator_errors_use_the_option_names(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["emulator", "--port", "0", *argv]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err, err
    assert not re.search(r"\b(queue_limit|time_scale|rate_5xx|cold_models|key_wallets)\b", err)


def test_emulator_logs_requests_with_v() -> None:
    secret = "sk-emulator-log-check-77a1"
    with subprocess.Popen(
        [sys.executable, "-m", "dreambooth_async.cli", "emulator", "--port", "0", "-v",
         "--key", secret],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:  # fmt: skip
        try:
            assert process.stdout is not None
            base_url = process.stdout.readline().split(": ", 1)[1].strip()
            body = json.dumps({"key": secret, "prompt": "a kite", "model_id": "midjourney"})
            request = urllib.request.Request(
                f"{base_url}/api/v6/images/text2img",
                data=body.encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200
        finally:
            process.terminate()
        _, err = process.communicate(timeout=10)
    assert "/api/v6/images/text2img" in err
    assert secret not in err
