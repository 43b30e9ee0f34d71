"""``generate --out``: a folder that cannot take the images is refused before anything is sent,
and a rerun with other generation options does not silently mix a second set into it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import pytest
from _cli_commands import emulator_generate_args, generate_command

from dreambooth_async import cli
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig

SECRET = "sk-output-checks-3e9a1c7d5b"
SCALE = 0.005


def _config() -> EmulatorConfig:
    return EmulatorConfig(
        keys=(SECRET,),
        time_scale=SCALE,
        workers=8,
        queue_limit=8,
        cost=CostModel(base=2, per_step=0, per_sample=0, per_megapixel=0, noise=0),
    )


def _command(prompts: Path, out: Path | str, base_url: str, *extra: str) -> list[str]:
    return generate_command(prompts, out, base_url, SECRET, *extra, poll_scale=SCALE)


async def _run(command: list[str]) -> tuple[int, str, str]:
    with anyio.fail_after(60):
        done = await anyio.run_process(command, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def _one_line_usage_error(code: int, out: str, err: str, needle: str) -> None:
    assert code == cli.EXIT_USAGE, (code, out, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dreambooth-async: error: ") and needle in lines[0], err


# --- an output folder that cannot be written ----------------------------------------------------


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "already-a-file.png"
    path.write_bytes(b"not a folder")
    return path


BAD_OUTS = {
    "an existing file": lambda tmp: _a_file(tmp),
    "a folder under a file": lambda tmp: _a_file(tmp) / "out",
    "deeper under a file": lambda tmp: _a_file(tmp) / "a" / "b",
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", sorted(BAD_OUTS))
async def test_an_unwritable_out_is_a_usage_error_before_anything_is_sent(
    tmp_path: Path, case: str
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red kite\na blue boat\n")
    out = BAD_OUTS[case](tmp_path)
    async with Emulator(_config()) as emu:
        code, stdout, stderr = await _run(_command(prompts, out, emu.base_url))
        assert emu.stats.submissions_received == 0
    _one_line_usage_error(code, stdout, stderr, f"--out {out}")
    assert SECRET not in stdout + stderr


@pytest.mark.anyio
async def test_a_manifest_under_a_file_is_a_usage_error(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red kite\n")
    manifest = _a_file(tmp_path) / "run.jsonl"
    async with Emulator(_config()) as emu:
        command = _command(prompts, tmp_path / "out", emu.base_url, "--manifest", str(manifest))
        code, stdout, stderr = await _run(command)
        assert emu.stats.submissions_received == 0
    _one_line_usage_error(code, stdout, stderr, "--manifest")


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root writes into read-only folders (the file cases above cover the check)",
)
def test_a_read_only_folder_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red kite\n")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for out in (locked, locked / "inside"):
            code = cli.main(
                ["generate", str(prompts), "--model-id", "m", "--out", str(out), "--emulator"]
            )
            captured = capsys.readouterr()
            _one_line_usage_error(code, captured.out, captured.err, "--out")
            assert not (locked / "inside").exists()
    finally:
        locked.chmod(0o700)


def test_demo_with_a_file_as_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _a_file(tmp_path)
    assert cli.main(["demo", "--out", str(out), "--no-progress"]) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    _one_line_usage_error(cli.EXIT_USAGE, captured.out, captured.err, f"--out {out}")
    assert out.read_bytes() == b"not a folder"
    code = cli.main(["demo", "--out", str(out / "demo"), "--no-progress"])
    captured = capsys.readouterr()
    _one_line_usage_error(code, captured.out, captured.err, "is a file, not a folder")


# --- other options into the same folder ---------------------------------------------------------


def _generate(prompts: Path, out: Path, *extra: str) -> int:
    return cli.main(emulator_generate_args(prompts, out, *extra, time_scale=SCALE))


def _rows(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / cli.METADATA_NAME).read_text().splitlines()]


def test_other_options_into_the_same_out_are_refused_unless_mixing_is_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red kite\na blue boat\n")
    out = tmp_path / "out"
    assert _generate(prompts, out, "--width", "256") == 0
    first = _rows(out)
    assert {row["width"] for row in first} == {256}
    capsys.readouterr()

    # The same command again resumes.
    assert _generate(prompts, out, "--width", "256") == 0
    assert "done 2 (2 from an earlier run)" in capsys.readouterr().out

    for change in (
        ["--width", "320"],
        ["--model-id", "sd-1.5"],
        ["--api-version", "v7"],
        ["--random-seeds"],
        ["--steps", "30"],  # the default, spelled out: the derived seeds differ
    ):
        code = _generate(prompts, out, "--width", "256", *change)
        captured = capsys.readouterr()
        _one_line_usage_error(code, captured.out, captured.err, "--allow-mixed")
        assert change[0] in captured.err
        assert _rows(out) == first, change  # nothing was added
    code = _generate(prompts, out, "--width", "320")
    assert "--width 320 (the folder's images: 256)" in capsys.readouterr().err

    # Asked for: the second set goes in, and both commands resume from then on.
    assert _generate(prompts, out, "--width", "320", "--allow-mixed") == 0
    assert sorted(row["width"] for row in _rows(out)) == [256, 256, 320, 320]
    capsys.readouterr()
    assert _generate(prompts, out, "--width", "320") == 0
    assert _generate(prompts, out, "--width", "256") == 0
    assert len(_rows(out)) == 4
    record = json.loads((out / cli.RUN_NAME).read_text())
    assert [run["options"]["--width"] for run in record["runs"]] == [256, 320]


def test_options_may_change_while_the_folder_has_no_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red kite\n")
    out = tmp_path / "out"
    # A first attempt whose every item failed leaves nothing to mix with: fix it and go.
    assert _generate(prompts, out, "--model-id", "no-such-model") == cli.EXIT_PARTIAL
    assert not _rows(out)
    assert _generate(prompts, out) == 0
    assert [row["model_id"] for row in _rows(out)] == ["midjourney"]
    capsys.readouterr()
    assert _generate(prompts, out, "--model-id", "no-such-model") == cli.EXIT_USAGE
