"""The emulator's banner names every key, its stats endpoint is in the emulator guide, and
``generate --dry-run`` is in the batches guide, with the line it really prints."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from dreambooth_async.cli import main
from dreambooth_async.emulator import EmulatorConfig, run

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "guide"

pytestmark = pytest.mark.anyio


async def test_the_banner_names_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    stop = asyncio.Event()
    stop.set()  # print the banner, then stop at once
    await run(EmulatorConfig(port=0, keys=("alpha", "beta", "gamma")), stop=stop)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("base_url: http://127.0.0.1:")
    assert lines[1:] == ["key: alpha", "key: beta", "key: gamma"]


def test_the_emulator_guide_documents_its_stats_endpoint() -> None:
    text = (GUIDE / "emulator.md").read_text()
    assert "GET /_emulator/stats" in text
    # ...with a Python block that reads it (tests/test_docs_examples.py runs it).
    assert 'http.get(f"{base_url}/_emulator/stats")' in text
    assert "a `key: ...` line for\nevery key" in text


def test_dry_run_is_in_the_batches_guide_with_the_line_it_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (GUIDE / "batches.md").read_text()
    match = re.search(r"`--dry-run` reads .*?: `(dry run: [^`]+)`", text, re.S)
    assert match, "generate --dry-run is not described in docs/guide/batches.md"
    documented = " ".join(match[1].split())
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\na fox\n\nan owl\n")
    code = main(
        [
            "generate",
            str(prompts),
            "--model-id",
            "m",
            "--out",
            str(tmp_path / "out"),
            "--emulator",
            "--dry-run",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("dry run: 2 submissions, 2 images; covered: 0 done"), printed
    assert re.sub(r"\d+", "N", printed) == re.sub(r"\d+", "N", documented)
    assert not (tmp_path / "out").exists()  # nothing written
