"""The ``dreambooth-async`` command line: prompts files in, images and metadata out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
from _cli_commands import emulator_generate_args
from PIL import Image

import dreambooth_async as dba
from dreambooth_async import cli


def run(*argv: str) -> int:
    return cli.main(list(argv))


def generate(prompts: Path, out: Path, *extra: str) -> int:
    return run(*emulator_generate_args(prompts, out, *extra))


def metadata(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def images(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".jpg"))


def test_text_file_then_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n\na blue sphere\r\na green cone\n")
    out = tmp_path / "out"
    assert generate(prompts, out) == 0
    rows = metadata(out)
    assert sorted(row["prompt"] for row in rows) == ["a blue sphere", "a green cone", "a red cube"]
    assert sorted(row["file_name"] for row in rows) == images(out)
    assert all(isinstance(row["seed"], int) and row["model_id"] == "midjourney" for row in rows)
    first = capsys.readouterr().out
    assert "done 3, failed 0, ambiguous 0, images 3" in first

    assert generate(prompts, out) == 0  # the same command again: nothing new
    assert metadata(out) == rows
    assert "done 3 (3 from an earlier run)" in capsys.readouterr().out


def test_jsonl_rows_override_the_defaults(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    rows_in = [
        {"prompt": "a small one", "width": 256, "height": 128, "seed": 11, "key": "small"},
        {"prompt": "two of them", "samples": 2, "seed": 12, "negative_prompt": "blur"},
        {"prompt": "defaults", "steps": "20"},
    ]
    prompts.write_text("\n".join(json.dumps(r) for r in rows_in) + "\n\n")
    out = tmp_path / "out"
    assert generate(prompts, out, "--width", "320", "--height", "320", "--seed", "5") == 0
    rows = {(r["prompt"], r["sample_index"]): r for r in metadata(out)}
    assert len(rows) == 4 and len(images(out)) == 4
    small = rows[("a small one", 0)]
    assert small["file_name"] == "small-0.png" and small["seed"] == 11
    with Image.open(out / small["file_name"]) as picture:
        assert picture.size == (256, 128)
    assert rows[("two of them", 1)]["negative_prompt"] == "blur"
    assert rows[("defaults", 0)]["seed"] == 5 and rows[("defaults", 0)]["steps"] == 20
    with Image.open(out / rows[("defaults", 0)]["file_name"]) as picture:
        assert picture.size == (320, 320)


def test_csv_rows(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(
        'prompt,seed,scheduler,key\n"a cat, sitting",3,DDIMScheduler,cat\n'
        "a dog,,,\n"
        '"a ""quoted"" bird",9,,\n'
    )
    out = tmp_path / "out"
    assert generate(prompts, out) == 0
    rows = {r["prompt"]: r for r in metadata(out)}
    assert set(rows) == {"a cat, sitting", "a dog", 'a "quoted" bird'}
    assert rows["a cat, sitting"]["scheduler"] == "DDIMScheduler"
    assert rows["a cat, sitting"]["file_name"] == "cat-0.png"
    assert rows['a "quoted" bird']["seed"] == 9


def test_some_failures_exit_1_and_name_their_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "fine"}\n{"prompt": "unknown model", "model_id": "no-such-model"}\n'
    )
    assert generate(prompts, tmp_path / "out") == 1
    text = capsys.readouterr().out
    assert "failed 1" in text and "line 2" in text and "Model id not found" in text


BAD_FILES: list[tuple[str, bytes, str]] = [
    ("binary.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ":1: not UTF-8 text (is this a binary"),
    ("nul.txt", b"fine\nnot\x00fine\n", ":2: contains NUL bytes"),
    ("latin1.txt", b"fine\ncaf\xe9\n", ":2: not UTF-8"),
    ("broken.jsonl", b'{"prompt": "ok"}\n\n{"prompt": oops}\n', ":3: not valid JSON"),
    ("array.jsonl", b'{"prompt": "ok"}\n["a"]\n', ":2: expected a JSON object"),
    ("unknown.jsonl", b'{"prompt": "ok", "colour": "red"}\n', ":1: unknown field 'colour'"),
    ("wide.jsonl", b'{"prompt": "ok"}\n{"prompt": "x", "width": 2000}\n', ":2: width=2000"),
    ("type.jsonl", b'{"prompt": "x", "steps": "many"}\n', ":1: steps: expected an integer"),
    ("empty-prompt.jsonl", b'{"prompt": "  "}\n', ":1: empty prompt"),
    ("kind.jsonl", b'{"prompt": "x", "strength": 0.5}\n', ":1: strength does not apply"),
    ("dupkey.jsonl", b'{"prompt": "a", "key": "k"}\n{"prompt": "b", "key": "k"}\n', ":2: dup"),
    ("fields.csv", b"prompt,seed\na,1\nb,2,3\n", ":3: 3 fields, the header has 2"),
    ("quote.csv", b'prompt,seed\n"a,1\n', "broken CSV"),
    ("noprompt.csv", b"text,seed\na,1\n", ":1: the CSV header has no 'prompt' column"),
    ("empty.txt", b"\n\n", "no prompts"),
    ("huge.txt", b"a" * (cli.MAX_LINE_BYTES + 10) + b"\n", ":1: line longer than"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_are_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes, message: str
) -> None:
    prompts = tmp_path / name
    prompts.write_bytes(content)
    out = tmp_path / "out"
    assert generate(prompts, out) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert str(prompts) in err
    assert not out.exists()


def test_a_missing_model_id_is_an_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    out = tmp_path / "out"
    assert run("generate", str(prompts), "--out", str(out), "--emulator") == 2
    assert ":1: no model_id" in capsys.readouterr().err
    assert not out.exists()


def test_no_key_no_emulator_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DREAMBOOTH_API_KEY", raising=False)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    out = tmp_path / "out"
    assert run("generate", str(prompts), "--model-id", "m", "--out", str(out)) == 2
    assert "no API key" in capsys.readouterr().err
    assert not out.exists()


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        run("generate", "p.txt")  # no --out
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        run("generate", "p.txt", "--out", "o", "--width", "wide")
    assert exc.value.code == 2


def test_every_request_field_is_an_option() -> None:
    fields = {f.name for f in attrs.fields(dba.Inpaint)} - {"extra"}
    assert set(cli.REQUEST_FIELDS) == fields
    parser = cli.build_parser()
    help_text = parser._subparsers._group_actions[0].choices["generate"].format_help()  # type: ignore[union-attr]
    for name in fields - {"prompt"}:
        assert "--" + name.replace("_", "-") in help_text


def test_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert run("demo", "--out", str(out), "--no-progress") == 0
    assert len(images(out)) == 24 and len(metadata(out)) == 24
    text = capsys.readouterr().out
    assert str(out) in text and "metadata.jsonl" in text
    # The embedded emulator's wallet has no limit: no balance of a million is shown.
    assert "account balance: unlimited" in text and "1000000" not in text


def test_emulator_subcommand_serves() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "dreambooth_async.cli", "emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            first = process.stdout.readline()
            assert first.startswith("base_url: http://127.0.0.1:")
            assert process.stdout.readline().startswith("key: ")
        finally:
            process.terminate()
        assert process.wait(timeout=10) == 0


def test_progress_lines_without_tqdm_and_without_the_key(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(6)))
    env = {**os.environ, "DREAMBOOTH_API_KEY": "sk-should-not-matter"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dreambooth_async.cli",
            "generate",
            str(prompts),
            "--model-id",
            "midjourney",
            "--out",
            str(tmp_path / "out"),
            "--emulator",
            "--emulator-time-scale",
            "0.005",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "[6/6] done 6 | failed 0" in done.stderr
    assert "sk-should-not-matter" not in done.stdout + done.stderr
