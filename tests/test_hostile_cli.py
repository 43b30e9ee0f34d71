"""Hostile prompts files for ``dreambooth-async generate``: whatever the file holds, the command
answers with a clear error naming the file and the line, exits non-zero, and leaves nothing
behind (the output folder is not even created), or accepts the file.

test_cli.py has one example per kind of bad file; here the files are generated (random bytes,
broken JSON Lines and CSV built from valid rows, pathological lines) and the bad line is placed
deep in the file, to show the line number is the right one. The command runs without a key and
without ``--emulator``, so a file that passes validation ends in "no API key": the one usage
error that comes *after* reading the whole file, so it proves the file was accepted, without
running a batch.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
from _chaos_fixtures import HostileCounter, record_hostile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dreambooth_async import cli

FORMS = pytest.mark.parametrize(
    "examples",
    [pytest.param(150, id="quick"), pytest.param(3000, id="slow", marks=pytest.mark.slow)],
)


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("DREAMBOOTH_API_KEY", raising=False)
    yield


def run_generate(prompts: Path, out: Path, *extra: str) -> tuple[int, str]:
    """Run the command in-process; (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(
            ["generate", str(prompts), "--model-id", "midjourney", "--out", str(out), *extra]
        )
    return code, err.getvalue()


def check_refused_or_accepted(prompts: Path, out: Path, code: int, err: str) -> int | None:
    """The outcome is one of: refused with the line named, refused as empty, or accepted (and
    then stopped for want of a key). Returns the line number named, if any."""
    assert code == cli.EXIT_USAGE, (code, err)
    assert not out.exists(), "something was written for a refused file"
    assert err.startswith("dreambooth-async: error: "), err
    assert err.count("\n") == 1, f"more than one line (a traceback?): {err!r}"
    if "no API key" in err:
        return None  # the file was fine
    if err.rstrip().endswith("no prompts in the file"):
        assert str(prompts) in err
        return None
    match = re.search(re.escape(str(prompts)) + r":(\d+): ", err)
    assert match, f"no line number in {err!r}"
    line = int(match.group(1))
    lines = prompts.read_bytes().count(b"\n") + 1
    assert 1 <= line <= lines, (line, lines)
    return line


# --- generated files --------------------------------------------------------------------------

valid_row = st.fixed_dictionaries(
    {
        "prompt": st.text(alphabet=string.ascii_letters + " ,.", min_size=1, max_size=30).filter(
            str.strip
        )
    },
    optional={
        "seed": st.integers(0, 2**32 - 1),
        "steps": st.integers(1, 50),
        "negative_prompt": st.text(max_size=10),
        "key": st.uuids().map(str),
    },
)
damage = st.sampled_from(
    [
        b"\x00",
        b"\xff\xfe",
        b"{",
        b"}",
        b'"',
        b",",
        b"\r",
        b"\\",
        b"[" * 5000,
        b'{"prompt": ',
        b"NaN",
        b"\xc3(",
        b"\n\n",
    ]
)


@st.composite
def jsonl_files(draw: st.DrawFn) -> bytes:
    rows = draw(st.lists(valid_row, min_size=0, max_size=8, unique_by=lambda r: r.get("key")))
    data = bytearray(b"".join(json.dumps(row).encode() + b"\n" for row in rows))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(damage | st.binary(max_size=8))
    return bytes(data)


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    columns = draw(
        st.lists(
            st.sampled_from(["prompt", "seed", "steps", "negative_prompt", "key", "x"]),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    lines = [",".join(columns)]
    for _ in range(draw(st.integers(0, 6))):
        lines.append(
            ",".join(draw(st.text(alphabet=string.printable, max_size=12)) for _ in columns)
        )
    data = bytearray("\n".join(lines).encode())
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(damage | st.binary(max_size=8))
    return bytes(data)


text_files = st.binary(max_size=400) | st.text(max_size=200).map(
    lambda t: t.encode("utf-8", "surrogatepass")
)


@FORMS
def test_generated_prompts_files(examples: int, tmp_path: Path) -> None:
    counter = HostileCounter()
    outcomes: dict[str, int] = {}

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(
        case=st.one_of(
            st.tuples(st.just("prompts.txt"), text_files),
            st.tuples(st.just("prompts.jsonl"), jsonl_files()),
            st.tuples(st.just("prompts.csv"), csv_files()),
        )
    )
    def one(case: tuple[str, bytes]) -> None:
        name, content = case
        counter.add(name.rsplit(".", 1)[1] + "_file")
        folder = tmp_path / f"case{counter.total}"
        folder.mkdir()
        prompts = folder / name
        prompts.write_bytes(content)
        out = folder / "out"
        code, err = run_generate(prompts, out)
        line = check_refused_or_accepted(prompts, out, code, err)
        kind = "accepted" if "no API key" in err else ("line" if line else "empty")
        outcomes[kind] = outcomes.get(kind, 0) + 1

    one()
    print(f"outcomes: {outcomes}")
    assert outcomes.get("line", 0) > 0
    # The fixed pathological files below count too.
    counter.add("pathological_file", len(PATHOLOGICAL) + 2)
    record_hostile("cli_prompts_files_generated", counter.counts, write=examples > 1000)


# --- pathological files, with the bad line deep inside ----------------------------------------

GOOD = b'{"prompt": "a fine prompt"}\n'
DEEP = 4000  # the bad line's number


def deep(bad: bytes, good: bytes = GOOD) -> bytes:
    return good * (DEEP - 1) + bad + good * 3


PATHOLOGICAL: list[tuple[str, bytes, int | None, str]] = [
    ("deep-nesting.jsonl", deep(b"[" * 200_000 + b"\n"), DEEP, "not valid JSON"),
    ("deep-object.jsonl", deep(b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"\n"), DEEP, ""),
    ("huge-int.jsonl", deep(b'{"prompt": "x", "seed": 1' + b"0" * 5000 + b"}\n"), DEEP, ""),
    ("nan-seed.jsonl", deep(b'{"prompt": "x", "seed": NaN}\n'), DEEP, "seed"),
    ("inf-scale.jsonl", deep(b'{"prompt": "x", "guidance_scale": Infinity}\n'), DEEP, ""),
    ("string-row.jsonl", deep(b'"just a prompt"\n'), DEEP, "JSON object"),
    ("null-row.jsonl", deep(b"null\n"), DEEP, "JSON object"),
    ("object-prompt.jsonl", deep(b'{"prompt": {"a": 1}}\n'), DEEP, "prompt"),
    ("list-key.jsonl", deep(b'{"prompt": "x", "key": [1]}\n'), DEEP, "key"),
    ("bom-mid.jsonl", deep(b'\xef\xbb\xbf{"prompt": "x"}\n'), DEEP, ""),
    ("binary-tail.jsonl", deep(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\n"), DEEP, ""),
    ("nul.txt", b"ok\n" * (DEEP - 1) + b"bad\x00line\n", DEEP, "NUL"),
    ("latin1.txt", b"ok\n" * (DEEP - 1) + b"caf\xe9\n", DEEP, "UTF-8"),
    ("huge-line.txt", b"ok\n" * 10 + b"a" * (cli.MAX_LINE_BYTES + 1) + b"\n", 11, "longer than"),
    ("huge-last-line.txt", b"ok\n" + b"a" * (cli.MAX_LINE_BYTES + 5), 2, "longer than"),
    ("utf16.txt", "a prompt\n".encode("utf-16"), 1, ""),
    ("csv-nul.csv", b"prompt,seed\n" + b"a,1\n" * (DEEP - 2) + b"b\x00,2\n", DEEP, "NUL"),
    ("csv-wide.csv", b"prompt,seed\n" + b"a,1\n" * (DEEP - 2) + b"b,2,3\n", DEEP, "fields"),
    ("csv-field-limit.csv", b"prompt\n" + b'"' + b"a" * 200_000 + b'"\n', 2, "CSV"),
    (
        "csv-open-quote.csv",
        b"prompt,seed\n" + b"a,1\n" * (DEEP - 2) + b'"b,2\n' + b"c,3\n",
        None,
        "",
    ),
    ("csv-seed.csv", b"prompt,seed\n" + b"a,1\n" * (DEEP - 2) + b"b,lots\n", DEEP, "seed"),
    ("csv-header-only.csv", b"prompt,seed\n", None, "no prompts"),
    ("empty.jsonl", b"", None, "no prompts"),
    ("blank.txt", b" \n\t\n\r\n", None, "no prompts"),
    ("cr-only.txt", b"one\rtwo\rthree", None, ""),
]


@pytest.mark.parametrize(
    ("name", "content", "line", "words"), PATHOLOGICAL, ids=[p[0] for p in PATHOLOGICAL]
)
def test_pathological_prompts_files(
    tmp_path: Path, name: str, content: bytes, line: int | None, words: str
) -> None:
    prompts = tmp_path / name
    prompts.write_bytes(content)
    out = tmp_path / "out"
    code, err = run_generate(prompts, out)
    named = check_refused_or_accepted(prompts, out, code, err)
    if line is not None:
        assert named == line, err
    assert words in err, err


def test_a_directory_or_a_missing_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for prompts in (tmp_path, tmp_path / "missing.txt"):
        code, err = run_generate(prompts, out)
        assert code == cli.EXIT_USAGE and "cannot read" in err and str(prompts) in err, err
        assert not out.exists()
