"""``generate --output-format files|webdataset|parquet --samples-per-shard N`` and ``merge``
into each layout: the shards' shape (read back with ``tarfile`` always, with the ``webdataset``
package, ``datasets`` and pyarrow where installed), and what a killed run leaves."""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import random
import shutil
import subprocess
import tarfile
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from _chaos_fixtures import paid_twice
from _cli_commands import emulator_generate_args, generate_command
from test_fsout import s3_endpoint  # noqa: F401 - the S3 API on loopback, as a fixture

from dreambooth_async import BatchItem, GenerationResult, Text2Img, read_manifest
from dreambooth_async.cli import main
from dreambooth_async.cli.dataset.fsout import STATE_DIR_ENV
from dreambooth_async.cli.dataset.layouts import (
    STAGING_NAME,
    read_shard_index,
    read_tar_member,
    sample_key,
)
from dreambooth_async.cli.dataset.shard_writer import ShardWriter
from dreambooth_async.cli.output import MetadataWriter
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig

PNG = b"\x89PNG\r\n\x1a\n"
PROMPTS = 250
PER_SHARD = 100
#: A webdataset shard's metadata parquet is written only where pyarrow is installed (the
#: `parquet` extra); CI's test extra has no pyarrow.
SHARD_PARQUET = (".parquet",) if importlib.util.find_spec("pyarrow") else ()


def _prompts(path: Path, n: int, word: str = "lantern") -> list[str]:
    texts = [f"{word} {i}: a lantern in the rain" for i in range(n)]
    path.write_text("".join(f"{t}\n" for t in texts))
    return texts


def _generate(prompts: Path, out: Path | str, *extra: str) -> int:
    # The emulator's time scale of the CLI tests (test_shards): shorter ones cut the client's
    # scaled waits (an output not there yet, say) below what a loaded machine keeps to.
    return main(
        emulator_generate_args(
            prompts, out, "-q", "--width", "64", "--height", "64", *extra, time_scale=0.002
        )
    )


def _tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of a tar, by key: extension -> bytes (tarfile reads the whole tar, so a
    torn one raises)."""
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(path, "r") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            handle = tar.extractfile(member)
            assert handle is not None
            assert ext not in samples[key], f"{member.name} twice in {path.name}"
            samples[key][ext] = handle.read()
    return dict(samples)


@pytest.fixture(scope="module")
def webdataset_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("wds")
    texts = _prompts(folder / "prompts.txt", PROMPTS)
    out = folder / "out"
    code = _generate(
        folder / "prompts.txt",
        out,
        "--output-format",
        "webdataset",
        "--samples-per-shard",
        str(PER_SHARD),
    )
    assert code == 0
    return out, texts


def test_webdataset_makes_three_whole_shards_of_png_txt_json(
    webdataset_run: tuple[Path, list[str]],
) -> None:
    out, texts = webdataset_run
    tars = sorted(p.name for p in out.glob("*.tar"))
    assert tars == ["00000.tar", "00001.tar", "00002.tar"]
    for number in range(3):
        assert (out / f"{number:05d}_stats.json").is_file()
    prompts: list[str] = []
    counts = []
    for name in tars:
        samples = _tar_samples(out / name)
        counts.append(len(samples))
        for key, members in samples.items():
            assert set(members) == {"png", "txt", "json"}, key
            assert members["png"].startswith(PNG)
            row = json.loads(members["json"])
            assert row["prompt"] == members["txt"].decode()
            assert row["file_name"] == f"{key}.png"
            prompts.append(row["prompt"])
    assert counts == [100, 100, 50]
    assert sorted(prompts) == sorted(texts)  # every prompt exactly once
    # No metadata.jsonl, staging or temporary files beside the shards.
    assert not (out / "metadata.jsonl").exists()
    assert not (out / STAGING_NAME).exists()
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_the_stats_files_index_the_shards_with_a_preview(
    webdataset_run: tuple[Path, list[str]],
) -> None:
    out, _ = webdataset_run
    index = read_shard_index(out)
    assert [s.name for s in index] == ["00000", "00001", "00002"]
    assert [s.count for s in index] == [100, 100, 50]
    assert [s.items for s in index] == [100, 100, 50]
    for shard in index:
        assert shard.files["tar"] == f"{shard.name}.tar"
        assert shard.raw["failed"] == 0 and shard.raw["seconds"] >= 0
        assert shard.preview_file is not None
        preview = read_tar_member(out / f"{shard.name}.tar", shard.preview_file)
        assert preview is not None and preview.startswith(PNG)


def test_webdataset_shards_read_back_with_the_webdataset_package(
    webdataset_run: tuple[Path, list[str]],
) -> None:
    wds = pytest.importorskip("webdataset")
    out, texts = webdataset_run
    urls = [str(p) for p in sorted(out.glob("*.tar"))]
    prompts = []
    with warnings.catch_warnings():
        # The package leaves its last tar's file for the garbage collector to close.
        warnings.simplefilter("ignore", ResourceWarning)
        for sample in wds.WebDataset(urls, shardshuffle=False):
            assert sample["png"].startswith(PNG)
            assert json.loads(sample["json"])["prompt"] == sample["txt"].decode()
            prompts.append(sample["txt"].decode())
        gc.collect()
    assert sorted(prompts) == sorted(texts)


def test_webdataset_shards_load_with_datasets(webdataset_run: tuple[Path, list[str]]) -> None:
    datasets = pytest.importorskip("datasets")
    out, texts = webdataset_run
    urls = [str(p) for p in sorted(out.glob("*.tar"))]
    dataset = datasets.load_dataset(
        "webdataset", data_files={"train": urls}, split="train", cache_dir=str(out.parent / "hf")
    )
    assert len(dataset) == PROMPTS
    assert sorted(dataset["txt"]) == sorted(texts)
    assert dataset[0]["png"].size == (64, 64)  # decoded as an image


def test_webdataset_shard_parquet_holds_the_rows(webdataset_run: tuple[Path, list[str]]) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out, _ = webdataset_run
    for number in range(3):
        rows = pq.read_table(out / f"{number:05d}.parquet").to_pylist()
        members = _tar_samples(out / f"{number:05d}.tar")
        # The shard's rows, one per sample, each naming its image in the tar.
        assert sorted(row["file_name"] for row in rows) == sorted(f"{k}.png" for k in members)
        for row in rows:
            assert json.loads(members[row["file_name"][:-4]]["json"]) == row


def test_files_beyond_one_shard_go_into_subfolders_and_load_as_imagefolder(
    tmp_path: Path,
) -> None:
    texts = _prompts(tmp_path / "prompts.txt", PROMPTS)
    out = tmp_path / "out"
    assert _generate(tmp_path / "prompts.txt", out, "--samples-per-shard", str(PER_SHARD)) == 0
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert sorted(row["prompt"] for row in rows) == sorted(texts)
    folders = defaultdict(int)
    for row in rows:
        assert (out / row["file_name"]).read_bytes().startswith(PNG)
        folders[row["file_name"].rpartition("/")[0]] += 1
    assert dict(folders) == {"": 100, "00001": 100, "00002": 50}
    assert len(list(out.glob("*.png"))) == 100
    datasets = pytest.importorskip("datasets")
    dataset = datasets.load_dataset(
        "imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert len(dataset) == PROMPTS
    assert sorted(dataset["prompt"]) == sorted(texts)


def test_a_files_run_within_one_shard_keeps_todays_flat_layout(tmp_path: Path) -> None:
    _prompts(tmp_path / "prompts.txt", 6)
    out = tmp_path / "out"
    assert _generate(tmp_path / "prompts.txt", out) == 0
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert all("/" not in row["file_name"] for row in rows)
    record = json.loads((out / "dreambooth-run.json").read_text())
    # The defaults are not recorded: folders of earlier versions resume unchanged.
    assert "--output-format" not in record["runs"][0]["options"]


def test_parquet_output_embeds_the_images(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    texts = _prompts(tmp_path / "prompts.txt", 25)
    out = tmp_path / "out"
    assert (
        _generate(
            tmp_path / "prompts.txt", out, "--output-format", "parquet", "--samples-per-shard", "10"
        )
        == 0
    )
    files = sorted(p.name for p in out.glob("*.parquet"))
    assert files == ["00000.parquet", "00001.parquet", "00002.parquet"]
    rows = [row for name in files for row in pq.read_table(out / name).to_pylist()]
    assert sorted(row["prompt"] for row in rows) == sorted(texts)
    assert all(row["image"]["bytes"].startswith(PNG) for row in rows)
    assert [s.count for s in read_shard_index(out)] == [10, 10, 5]
    datasets = pytest.importorskip("datasets")
    dataset = datasets.load_dataset(
        "parquet",
        data_files=[str(out / name) for name in files],
        split="train",
        cache_dir=str(tmp_path / "hf"),
    )
    assert dataset[0]["image"].size == (64, 64)


def test_merge_writes_webdataset_from_shards_of_files_output(tmp_path: Path) -> None:
    texts = _prompts(tmp_path / "prompts.txt", 30)
    outs = [tmp_path / "shard-1", tmp_path / "shard-2"]
    for number, out in enumerate(outs, 1):
        code = _generate(
            tmp_path / "prompts.txt", out, "--shard", f"{number}/2", "--samples-per-shard", "8"
        )
        assert code == 0
    merged = tmp_path / "merged"
    argv = ["merge", *map(str, outs), "--out", str(merged), "--output-format", "webdataset"]
    assert main([*argv, "--samples-per-shard", "12"]) == 0
    tars = sorted(merged.glob("*.tar"))
    assert [p.name for p in tars] == ["00000.tar", "00001.tar", "00002.tar"]
    prompts = []
    for tar in tars:
        for members in _tar_samples(tar).values():
            assert set(members) == {"png", "txt", "json"}
            prompts.append(members["txt"].decode())
    assert sorted(prompts) == sorted(texts)
    # And back: the webdataset merge merged again as files, in subfolders of 12.
    again = tmp_path / "again"
    assert main(["merge", str(merged), "--out", str(again), "--samples-per-shard", "12"]) == 0
    rows = [json.loads(line) for line in (again / "metadata.jsonl").read_text().splitlines()]
    assert sorted(row["prompt"] for row in rows) == sorted(texts)
    assert {row["file_name"].rpartition("/")[0] for row in rows} == {"", "00001", "00002"}


# --- a shard sealed whole, never rewritten ----------------------------------------------------


def _stage(writer: ShardWriter, folder: Path, names: list[str]) -> None:
    for name in names:
        image = folder / name
        image.write_bytes(PNG + name.encode())
        writer.add(image, {"prompt": f"prompt of {name}", "key": name})


def test_open_seals_a_full_staging_folder_and_drops_one_already_sealed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    writer = ShardWriter(out, "webdataset", per_shard=3)
    writer.open()
    _stage(writer, out, ["a-0.png", "b-0.png", "c-0.png", "d-0.png"])
    sealed = out / "00000.tar"
    before = (sealed.stat().st_ino, sealed.stat().st_mtime_ns)
    # A killed run: shard 1 half filled; a seal of shard 1 cut off mid-write; and a
    # staging copy of shard 0 as if the kill came after its stats but before the cleanup.
    (out / STAGING_NAME / ".00001.tar.tmp-dead").write_bytes(b"torn")
    leftover = out / STAGING_NAME / "00000"
    leftover.mkdir()
    (leftover / "a-0.png").write_bytes(PNG)

    rerun = ShardWriter(out, "webdataset", per_shard=3)
    notes = rerun.open()
    assert any("00001" in note for note in notes)
    assert not leftover.exists()
    assert not list((out / STAGING_NAME).glob(".*"))
    assert (sealed.stat().st_ino, sealed.stat().st_mtime_ns) == before  # not rewritten
    _stage(rerun, out, ["e-0.png", "f-0.png"])
    assert sorted(_tar_samples(out / "00001.tar")) == ["d-0", "e-0", "f-0"]
    assert sorted(_tar_samples(out / "00000.tar")) == ["a-0", "b-0", "c-0"]


def test_sample_keys_have_no_dots() -> None:
    assert sample_key("abc-0.png") == "abc-0"
    dotted = sample_key("abc.2-0.png")
    assert "." not in dotted and dotted != sample_key("abc_2-0.png")


def test_parquet_output_without_pyarrow_is_refused_before_anything_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "pyarrow" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    _prompts(tmp_path / "prompts.txt", 3)
    out = tmp_path / "out"
    assert _generate(tmp_path / "prompts.txt", out, "--output-format", "parquet") == 2
    assert "pyarrow" in capsys.readouterr().err
    assert not out.exists()
    assert os.listdir(tmp_path) == ["prompts.txt"]


# --- killed mid-shard -------------------------------------------------------------------------

SECRET = "sk-datasets-kill-4e1c9a7b2d"
SCALE = 0.01


async def _run_until(argv: list[str], kill_when: Callable[[], bool] | None) -> int | None:
    """Run ``argv``; SIGKILL it as soon as ``kill_when()`` holds (checked every 2 ms; None:
    let it finish). Its exit code, or None when it was killed."""
    process = await anyio.open_process(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    async with process:
        with anyio.fail_after(120):
            while process.returncode is None:
                if kill_when is not None and kill_when():
                    process.kill()
                    await process.wait()
                    return None
                with anyio.move_on_after(0.002):
                    await process.wait()
        return process.returncode


@pytest.mark.anyio
async def test_a_run_killed_mid_shard_resumes_without_torn_tars_or_paying_twice(
    tmp_path: Path,
) -> None:
    texts = _prompts(tmp_path / "prompts.txt", 40, word="killed")
    out = tmp_path / "out"
    config = EmulatorConfig(
        keys=(SECRET,),
        time_scale=SCALE,
        queue_limit=6,
        workers=6,
        cost=CostModel(base=10.0, per_step=0.0, per_sample=2.0, per_megapixel=0.0, noise=0.3),
    )

    def staged() -> int:
        try:
            return len(list(out.glob(f"{STAGING_NAME}/*/*.png")))
        except FileNotFoundError:  # a shard sealed as this looked
            return -1

    def sealed() -> int:
        return len(list(out.glob("*_stats.json")))

    async with Emulator(config) as emu:
        argv = generate_command(
            tmp_path / "prompts.txt",
            out,
            emu.base_url,
            SECRET,
            "--width",
            "64",
            "--height",
            "64",
            "--output-format",
            "webdataset",
            "--samples-per-shard",
            "8",
            poll_scale=SCALE,
        )
        # Killed with shard 00001 partly filled, then again two shards later.
        assert await _run_until(argv, lambda: sealed() >= 1 and staged() >= 3) is None
        first = out / "00000.tar"
        before = (first.stat().st_ino, first.stat().st_mtime_ns)
        assert await _run_until(argv, lambda: sealed() >= 3 and staged() >= 2) is None
        # 1: a POST the kill cut off is ambiguous, reported and not sent again.
        assert await _run_until(argv, None) in (0, 1)
        received = emu.stats.submissions_received
        assert paid_twice(emu) == {}
        # A finished run sends nothing more.
        assert await _run_until(argv, None) in (0, 1)
        assert emu.stats.submissions_received == received
        accepted = {emu.jobs[job].params.prompt for job in emu.jobs}

    states = read_manifest(out / "dreambooth-manifest.jsonl")
    assert len(states) == len(texts)
    done = [s for s in states.values() if s.status == "done"]
    assert all(s.status == "ambiguous" for s in states.values() if s.status != "done")
    assert len(done) >= len(texts) - 4  # at most one POST in flight cut off by each kill
    assert (first.stat().st_ino, first.stat().st_mtime_ns) == before  # never rewritten
    tars = sorted(out.glob("*.tar"))
    assert [p.name for p in tars] == [f"{n:05d}.tar" for n in range(len(tars))]
    prompts = []
    for tar in tars:
        for members in _tar_samples(tar).values():  # reads each tar whole: none torn
            assert set(members) == {"png", "txt", "json"}
            prompts.append(members["txt"].decode())
    # Every prompt done is in a shard exactly once, and each one the service ran is done
    # or was reported ambiguous.
    assert len(prompts) == len(set(prompts)) == len(done)
    assert set(prompts) <= accepted and set(prompts) <= set(texts)
    counts = [s.count for s in read_shard_index(out)]
    assert sum(counts) == len(done) and all(c == 8 for c in counts[:-1])
    assert not (out / STAGING_NAME).exists()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or p.suffix == ".png"]


def test_shards_through_a_file_url_and_a_rerun_that_lost_its_state_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("fsspec")
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / ".dreambooth-state"))
    texts = _prompts(tmp_path / "prompts.txt", 25)
    remote = tmp_path / "bucket"
    url = remote.as_uri()
    args = ("--output-format", "webdataset", "--samples-per-shard", "10")
    assert _generate(tmp_path / "prompts.txt", url, *args) == 0
    names = sorted(p.name for p in remote.iterdir() if not p.name.startswith("."))
    assert names == [
        f"0000{n}{ext}" for n in range(3) for ext in (*SHARD_PARQUET, ".tar", "_stats.json")
    ]
    sealed = {p.name: p.stat().st_mtime_ns for p in remote.glob("*.tar")}
    prompts = [
        m["txt"].decode() for t in sorted(remote.glob("*.tar")) for m in _tar_samples(t).values()
    ]
    assert sorted(prompts) == sorted(texts)

    # The pod restarts without its local state: the manifest comes back from its copy beside
    # the shards, and the items already in a shard are neither fetched nor paid again.
    shutil.rmtree(tmp_path / ".dreambooth-state")
    capsys.readouterr()
    assert _generate(tmp_path / "prompts.txt", url, *args) == 0
    said = capsys.readouterr().out
    assert "restored the manifest" in said and "submissions 0" in said
    assert "had not reached" not in said
    assert {p.name: p.stat().st_mtime_ns for p in remote.glob("*.tar")} == sealed


def _item(folder: Path, name: str, *, resumed: bool = False) -> BatchItem:
    path = folder / name
    if not resumed:
        path.write_bytes(PNG + name.encode())
    request = Text2Img(model_id="midjourney", prompt=f"prompt {name}", seed=1)
    result = GenerationResult(id=f"job-{name}", status="success", output=(f"https://x/{name}",))
    return BatchItem(
        index=0,
        request=request,
        result=result,
        key=name[:-4],
        job_id=result.id,
        files=(path,),
        resumed=resumed,
    )


def test_files_in_subfolders_a_killed_run_moved_before_its_row_are_found_again(
    tmp_path: Path,
) -> None:
    writer = MetadataWriter(tmp_path / "metadata.jsonl", per_shard=2)
    for name in ("a.png", "b.png", "c.png"):
        writer.add(_item(tmp_path, name))
    # Killed between moving d.png into its subfolder and writing its row.
    (tmp_path / "d.png").write_bytes(PNG + b"d")
    os.replace(tmp_path / "d.png", tmp_path / "00001" / "d.png")
    writer.close()

    rerun = MetadataWriter(tmp_path / "metadata.jsonl", per_shard=2)
    rerun.add(_item(tmp_path, "e.png"))  # a new item done first: the open subfolder fills up
    rerun.add(_item(tmp_path, "d.png", resumed=True))
    rerun.add(_item(tmp_path, "a.png", resumed=True))  # has its row: nothing written
    rerun.close()
    rows = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert [row["file_name"] for row in rows] == [
        "a.png",
        "b.png",
        "00001/c.png",
        "00001/e.png",
        "00001/d.png",
    ]
    for row in rows:
        assert (tmp_path / row["file_name"]).read_bytes().startswith(PNG)


def test_webdataset_and_files_shards_on_s3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    endpoint = request.getfixturevalue("s3_endpoint")
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / ".dreambooth-state"))
    # s3fs (botocore) reads the endpoint from the environment: the CLI takes only the URL.
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    texts = _prompts(tmp_path / "prompts.txt", 25)
    args = ("--samples-per-shard", "10")
    assert (
        _generate(
            tmp_path / "prompts.txt", "s3://images/wds/", "--output-format", "webdataset", *args
        )
        == 0
    )
    assert _generate(tmp_path / "prompts.txt", "s3://images/files/", *args) == 0
    s3fs = pytest.importorskip("s3fs")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
    shards = sorted(fs.ls("images/wds", detail=False))
    assert [p.rsplit("/", 1)[-1] for p in shards if not p.rsplit("/", 1)[-1].startswith(".")] == [
        f"0000{n}{kind}" for n in range(3) for kind in (".parquet", ".tar", "_stats.json")
    ]
    prompts = []
    for n in range(3):
        (tmp_path / "t.tar").write_bytes(fs.cat_file(f"images/wds/0000{n}.tar"))
        prompts += [m["txt"].decode() for m in _tar_samples(tmp_path / "t.tar").values()]
    assert sorted(prompts) == sorted(texts)
    rows = [json.loads(line) for line in fs.cat_file("images/files/metadata.jsonl").splitlines()]
    assert sorted(row["prompt"] for row in rows) == sorted(texts)
    for row in rows:
        assert fs.cat_file(f"images/files/{row['file_name']}").startswith(PNG)
    assert {row["file_name"].rpartition("/")[0] for row in rows} == {"", "00001", "00002"}


@pytest.mark.slow
@pytest.mark.anyio
async def test_files_in_subfolders_killed_again_and_again_keep_one_row_per_image(
    tmp_path: Path,
) -> None:
    """The files layout under kills at random moments: every image in its subfolder once,
    with exactly one row, and none paid twice."""
    texts = _prompts(tmp_path / "prompts.txt", 60, word="files")
    out = tmp_path / "out"
    config = EmulatorConfig(
        keys=(SECRET,),
        time_scale=SCALE,
        queue_limit=6,
        workers=6,
        cost=CostModel(base=10.0, per_step=0.0, per_sample=2.0, per_megapixel=0.0, noise=0.3),
    )
    rng = random.Random(7)
    async with Emulator(config) as emu:
        argv = generate_command(
            tmp_path / "prompts.txt",
            out,
            emu.base_url,
            SECRET,
            "--width",
            "64",
            "--height",
            "64",
            "--samples-per-shard",
            "7",
            poll_scale=SCALE,
        )

        def images() -> int:
            try:
                return len(list(out.rglob("*.png")))
            except FileNotFoundError:  # a download's staging folder went as this looked
                return -1

        for _ in range(5):
            goal = images() + rng.randint(2, 9)
            if await _run_until(argv, lambda goal=goal: images() >= goal) is not None:
                break
        assert await _run_until(argv, None) in (0, 1)
        assert paid_twice(emu) == {}
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    names = [row["file_name"] for row in rows]
    assert len(names) == len(set(names))
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert sorted(names) == on_disk
    assert len({row["prompt"] for row in rows}) == len(rows) and len(rows) <= len(texts)
    for row in rows:
        subfolder = row["file_name"].rpartition("/")[0]
        assert subfolder in ("", *(f"{n:05d}" for n in range(1, 10)))
