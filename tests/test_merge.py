"""``merge``: output folders (the shards of a run) joined into one Hugging Face imagefolder,
optionally with Parquet files that embed the images; loaded with ``datasets`` where it is
installed."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from dreambooth_async.cli.dataset.merge import (
    MARKER_NAME,
    MergeError,
    add_merge_parser,
    merge_outputs,
    read_metadata,
)


def _png(colour: tuple[int, int, int], size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _output(folder: Path, images: dict[str, bytes], **extra: Any) -> Path:
    """A folder as `generate` leaves it: images plus metadata.jsonl, one row per image."""
    folder.mkdir(parents=True)
    rows = []
    for number, (name, data) in enumerate(images.items()):
        (folder / name).write_bytes(data)
        rows.append({"file_name": name, "prompt": f"{folder.name} {name}", "seed": number, **extra})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "dreambooth-manifest.jsonl").write_text("")  # not part of the dataset
    return folder


def _rows(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def test_merge_joins_folders_and_resolves_name_clashes(tmp_path: Path) -> None:
    red, green, blue = _png((255, 0, 0)), _png((0, 255, 0)), _png((0, 0, 255))
    one = _output(tmp_path / "shard-1", {"a.png": red, "b.png": green})
    two = _output(tmp_path / "shard-2", {"a.png": blue, "c.png": green})
    (two / "stray.png").write_bytes(red)  # an image with no row is not part of the dataset

    report = merge_outputs([one, two], tmp_path / "merged")

    merged = tmp_path / "merged"
    rows = _rows(merged)
    names = [row["file_name"] for row in rows]
    assert names == ["a.png", "b.png", "a-2.png", "c.png"]
    assert report.images == 4 and report.renamed == 1 and not report.missing
    # Every row's file is the image that row described, byte for byte.
    assert (merged / "a.png").read_bytes() == red
    assert (merged / "a-2.png").read_bytes() == blue
    assert rows[2]["prompt"] == "shard-2 a.png"
    on_disk = {p.name for p in merged.iterdir() if p.suffix == ".png"}
    assert on_disk == set(names)
    assert not (merged / "dreambooth-manifest.jsonl").exists()
    # Nothing is left beside the merged folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "shard-1", "shard-2"]


def test_a_folder_given_twice_is_kept_once_and_missing_images_are_reported(
    tmp_path: Path,
) -> None:
    one = _output(tmp_path / "one", {"a.png": _png((1, 2, 3)), "b.png": _png((4, 5, 6))})
    (one / "b.png").unlink()
    report = merge_outputs([one, one], tmp_path / "merged")
    assert [r["file_name"] for r in _rows(tmp_path / "merged")] == ["a.png"]
    assert report.duplicates == 1
    assert [Path(m).name for m in report.missing] == ["b.png", "b.png"]


def test_a_rerun_replaces_an_earlier_merge_but_never_another_folder(tmp_path: Path) -> None:
    one = _output(tmp_path / "one", {"a.png": _png((1, 2, 3))})
    two = _output(tmp_path / "two", {"b.png": _png((3, 2, 1))})
    merge_outputs([one], tmp_path / "merged")
    merge_outputs([one, two], tmp_path / "merged")  # a shard finished later
    assert [r["file_name"] for r in _rows(tmp_path / "merged")] == ["a.png", "b.png"]
    assert (tmp_path / "merged" / MARKER_NAME).exists()

    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(MergeError, match="other files"):
        merge_outputs([one], other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    with pytest.raises(MergeError, match="overlaps"):
        merge_outputs([one], one / "inside")
    with pytest.raises(MergeError, match=r"no metadata\.jsonl"):
        merge_outputs([other], tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()


def test_torn_last_metadata_line_is_ignored(tmp_path: Path) -> None:
    one = _output(tmp_path / "one", {"a.png": _png((9, 9, 9))})
    with (one / "metadata.jsonl").open("a") as handle:
        handle.write('{"file_name": "b.png", "pro')
    assert [r["file_name"] for r in read_metadata(one)] == ["a.png"]


def test_merge_command_line(tmp_path: Path) -> None:
    one = _output(tmp_path / "one", {"a.png": _png((1, 1, 1))})
    two = _output(tmp_path / "two", {"a.png": _png((2, 2, 2))})
    done = subprocess.run(
        [sys.executable, "-c", _CLI, str(one), str(two), "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "merged 2 images from 2 folders (1 renamed)" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-c", _CLI, str(tmp_path / "nope"), "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "not a folder" in bad.stderr


def test_merge_counts_in_the_singular_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = _output(tmp_path / "one", {"a.png": _png((1, 1, 1))})
    parser = argparse.ArgumentParser()
    add_merge_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["merge", str(one), "--out", str(tmp_path / "m")])
    assert args.func(args) == 0
    assert capsys.readouterr().out.startswith("merged 1 image from 1 folder into ")


# The subcommand as the CLI wires it (an argparse subparser calling merge_command).
_CLI = """
import argparse, sys
from dreambooth_async.cli.dataset.merge import add_merge_parser
parser = argparse.ArgumentParser()
add_merge_parser(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(["merge", *sys.argv[1:]])
raise SystemExit(args.func(args))
"""


def test_merged_folder_loads_with_datasets(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    one = _output(tmp_path / "one", {"a.png": _png((255, 0, 0)), "b.png": _png((0, 255, 0))})
    two = _output(tmp_path / "two", {"a.png": _png((0, 0, 255))})
    merge_outputs([one, two], tmp_path / "merged")
    data = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "merged"), split="train")
    assert len(data) == 3
    assert sorted(data["prompt"]) == ["one a.png", "one b.png", "two a.png"]
    colours = sorted(row["image"].convert("RGB").getpixel((0, 0)) for row in data)
    assert colours == [(0, 0, 255), (0, 255, 0), (255, 0, 0)]


def test_parquet_embeds_the_images(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    images = {f"{i}.png": _png((i, 0, 0)) for i in range(5)}
    one = _output(tmp_path / "one", images, negative_prompt=None)
    size = max(map(len, images.values()))
    report = merge_outputs([one], tmp_path / "merged", parquet=True, parquet_bytes=size * 2)
    assert [p.name for p in report.parquet] == [f"train-{n:05d}-of-00003.parquet" for n in range(3)]
    rows = [row for path in report.parquet for row in pq.read_table(path).to_pylist()]
    assert [row["image"]["bytes"] for row in rows] == list(images.values())
    assert [row["prompt"] for row in rows] == [f"one {n}" for n in images]
    # The images folder itself still loads as an imagefolder: the Parquet files sit apart.
    datasets = pytest.importorskip("datasets")
    data = datasets.load_dataset(
        "parquet", data_files=[str(p) for p in report.parquet], split="train"
    )
    assert data.features["image"].__class__.__name__ == "Image"
    assert data[3]["image"].convert("RGB").getpixel((0, 0)) == (3, 0, 0)
