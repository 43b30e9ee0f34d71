"""``dba.read_prompts``: the command line's prompts reader, public, for ``client.map()``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import dreambooth_async as dba
from dreambooth_async.cli import InputError, PromptSource
from dreambooth_async.cli.parser import build_parser
from dreambooth_async.cli.prompts import detect_format

MODEL = {"model_id": "midjourney"}


def test_text_skips_comments_and_blanks_and_strips_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("# a comment\n\n  a red fox  \r\n\t\n   # indented comment\na heron\n")
    prompts = dba.read_prompts(path, defaults={**MODEL, "width": "768"}, derive_seeds=False)
    requests = list(prompts)
    assert [r.prompt for r in requests if isinstance(r, dba.Text2Img)] == ["a red fox", "a heron"]
    assert all(isinstance(r, dba.Text2Img) and r.width == 768 for r in requests)
    assert len(prompts) == 2
    assert [prompts.line_of(0), prompts.line_of(1)] == [3, 6]
    # Iterating again reads the file again: the same requests.
    assert list(prompts) == requests


def test_jsonl_and_csv_rows_set_their_own_fields_keys_and_kinds(tmp_path: Path) -> None:
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(
        '{"prompt": "a cube", "seed": 4, "steps": 12}\n'
        "\n"
        '{"prompt": "a bench", "key": "bench", "init_image": "https://example.com/i.png"}\n'
    )
    cube, (key, bench) = dba.read_prompts(jsonl, defaults=MODEL)
    assert isinstance(cube, dba.Text2Img) and (cube.seed, cube.steps) == (4, 12)
    assert key == "bench" and isinstance(bench, dba.Img2Img)
    csv = tmp_path / "p.csv"
    csv.write_text('prompt,width,kind\na cube,640,\n,,\n"a, comma",512,text2img\n')
    first, second = dba.read_prompts(csv, defaults=MODEL)
    assert isinstance(first, dba.Text2Img) and first.width == 640
    assert isinstance(second, dba.Text2Img) and second.prompt == "a, comma"
    # Rows without a seed get a deterministic one, as on the command line.
    again = next(iter(dba.read_prompts(csv, defaults=MODEL)))
    assert isinstance(again, dba.Text2Img) and first.seed is not None and first.seed == again.seed


def test_a_bad_row_is_a_typed_error_naming_file_and_line_before_anything_is_read(
    tmp_path: Path,
) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "fine"}\n# not json\n' + '{"prompt": "x", "steps": 99}\n')
    with pytest.raises(dba.PromptFileError) as caught:
        dba.read_prompts(path, defaults=MODEL)
    error = caught.value
    assert isinstance(error, dba.DreamboothError)
    assert (error.path, error.line) == (str(path), 2)
    assert str(error).startswith(f"{path}:2: not valid JSON")
    path.write_text('{"prompt": "fine"}\n\n{"prompt": "x", "steps": 99}\n')
    with pytest.raises(dba.PromptFileError, match=r"prompts\.jsonl:3: steps=99 is invalid"):
        dba.read_prompts(path, defaults=MODEL)
    path.write_text('{"prompt": "no model"}\n')
    with pytest.raises(dba.PromptFileError, match=r":1: no model_id \(pass defaults="):
        dba.read_prompts(path)
    with pytest.raises(dba.PromptFileError, match="cannot read"):
        dba.read_prompts(tmp_path / "missing.txt", defaults=MODEL)
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(dba.PromptFileError, match="no prompts in the file"):
        dba.read_prompts(empty, defaults=MODEL)


def test_bad_defaults_and_options_are_request_validation_errors(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("a fox\n")
    with pytest.raises(dba.RequestValidationError, match="defaults\\['colour'\\]"):
        dba.read_prompts(path, defaults={**MODEL, "colour": "red"})
    with pytest.raises(dba.RequestValidationError, match="steps: expected an integer"):
        dba.read_prompts(path, defaults={**MODEL, "steps": "many"})
    with pytest.raises(dba.RequestValidationError, match="kind"):
        dba.read_prompts(path, defaults=MODEL, kind="video")
    with pytest.raises(dba.RequestValidationError, match="format"):
        dba.read_prompts(path, defaults=MODEL, format="yaml")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "text", "bad"),
    [
        ("p.txt", "# c\na fox\n\na fox\n  an owl \n", "a fox\n\0\n"),
        (
            "p.jsonl",
            '{"prompt": "a fox", "seed": 2}\n{"prompt": "an owl", "key": "o"}\n',
            '{"prompt": "a fox"}\n{\n',
        ),
        ("p.csv", "prompt,steps\na fox,10\nan owl,\n", "prompt,steps\na,1\nb,2,3\n"),
    ],
)
def test_the_command_line_reads_a_file_as_the_library_does(
    tmp_path: Path, name: str, text: str, bad: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    args = build_parser().parse_args(
        ["generate", str(path), "--model-id", "midjourney", "--out", str(tmp_path / "o")]
    )
    assert isinstance(args, argparse.Namespace)
    source = PromptSource(
        path=path,
        fmt=detect_format(path, args.format),
        defaults={"model_id": "midjourney"},
        kind=None,
        derive_seeds=True,
    )
    source.validate()
    assert list(source.requests()) == list(dba.read_prompts(path, defaults=MODEL))
    # Its errors are the command's input errors, with the same words.
    path.write_text(bad)
    with pytest.raises(dba.PromptFileError) as library:
        dba.read_prompts(path, defaults=MODEL)
    with pytest.raises(InputError) as command:
        source.validate()
    assert str(command.value) == str(library.value)


def test_read_prompts_is_public_and_documented() -> None:
    assert {"read_prompts", "PromptFile", "PromptFileError"} <= set(dba.__all__)
    assert dba.read_prompts.__module__ == "dreambooth_async._prompts"
    assert dba.PromptFile.__module__ == dba.PromptFileError.__module__ == "dreambooth_async"
    reference = Path(__file__).resolve().parent.parent / "docs" / "reference"
    assert "::: dreambooth_async.read_prompts" in (reference / "batches.md").read_text()
