"""Outputs through fsspec: a ``file://`` URL (whenever fsspec is installed) and an S3 API on
loopback (moto's server mode, when moto and s3fs are installed). Every image and a consistent
``metadata.jsonl`` arrive, and nothing is ever visible half-written under its final name."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dreambooth_async as dba
from dreambooth_async._fsout import FsOutput, OutputURLError, RemoteMirror, is_url, state_folder
from dreambooth_async.emulator import Emulator, EmulatorConfig

pytest.importorskip("fsspec")

SCALE = 0.01


def test_urls_and_state_folders() -> None:
    assert is_url("s3://bucket/run/") and is_url("file:///tmp/x") and is_url("gs://b/p")
    assert not is_url("out/run") and not is_url("/abs/path") and not is_url("C:\\x")
    assert state_folder("s3://b/run/") == state_folder("s3://b/run")
    assert state_folder("s3://b/run") != state_folder("s3://c/run")
    assert state_folder("s3://b/run").name.startswith("run-")


def test_unknown_protocol_is_a_clear_error() -> None:
    with pytest.raises(OutputURLError, match="nosuchproto"):
        FsOutput("nosuchproto://bucket/x")


async def _generate_into(folder: Path, count: int) -> list[dba.BatchItem]:
    """A real batch against the emulator, downloading into ``folder`` (the state folder)."""
    requests = [dba.Text2Img(model_id="midjourney", prompt=f"fs {i}", seed=i) for i in range(count)]
    async with (
        Emulator(EmulatorConfig(time_scale=SCALE, queue_limit=6, workers=6)) as emu,
        dba.DreamboothClient(
            "emulator-key", base_url=emu.base_url, poll=dba.PollPolicy().scaled(SCALE)
        ) as client,
    ):
        return await client.gather(requests, download_to=folder, manifest=folder / "m.jsonl")


def _mirror_run(items: list[dba.BatchItem], local: Path, target: FsOutput) -> None:
    """What generate does with a URL output: upload each item's images, then its row."""
    mirror = RemoteMirror(local, target, interval=0.0)
    with (local / "metadata.jsonl").open("a") as metadata:
        for item in items:
            assert item.ok
            names = [p.name for p in item.files]
            mirror.add(item.files)
            for name in names:
                metadata.write(json.dumps({"file_name": name, "prompt": item.request.prompt}))
                metadata.write("\n")
            metadata.flush()
            mirror.metadata()
    mirror.metadata(force=True)


def _check_output(listing: list[str], read: Any, count: int) -> None:
    rows = [json.loads(line) for line in read("metadata.jsonl").decode().splitlines()]
    assert len(rows) == count
    assert sorted(r["prompt"] for r in rows) == sorted(f"fs {i}" for i in range(count))
    images = sorted(n for n in listing if n.endswith(".png"))
    assert images == sorted(r["file_name"] for r in rows)
    for name in images:
        assert read(name)[:8] == b"\x89PNG\r\n\x1a\n"
    # No temporary object was left behind.
    assert not [n for n in listing if ".tmp-" in n]


@pytest.mark.anyio
async def test_generate_output_to_a_file_url(tmp_path: Path) -> None:
    local = tmp_path / "state"
    items = await _generate_into(local, 8)
    remote = tmp_path / "bucket" / "run"
    target = FsOutput(remote.as_uri())
    target.probe()
    _mirror_run(items, local, target)
    listing = [p.name for p in remote.iterdir()]
    _check_output(listing, lambda n: (remote / n).read_bytes(), 8)
    # The local copies of uploaded images are gone: the disk holds the manifest, not the set.
    assert not list(local.glob("*.png"))
    assert (local / "m.jsonl").exists()


def test_a_failed_upload_leaves_nothing_under_the_final_name(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    target = FsOutput(remote.as_uri())
    target.probe()
    target.put_bytes("metadata.jsonl", b'{"file_name": "a.png"}\n')
    folder = tmp_path / "a folder, not a file"
    folder.mkdir()
    with pytest.raises(OSError):
        target.put_file(folder, "metadata.jsonl")
    # The earlier, whole object is still there, and no temporary object is left.
    assert (remote / "metadata.jsonl").read_bytes() == b'{"file_name": "a.png"}\n'
    assert [p.name for p in remote.iterdir()] == ["metadata.jsonl"]


def test_an_unwritable_url_fails_the_probe(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(OutputURLError, match="cannot write"):
        FsOutput((blocker / "run").as_uri()).probe()


# --- S3 on loopback ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    # moto accepts any credentials; nothing here reaches a real account or the network.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    port = _free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="images")
        yield endpoint
    finally:
        server.stop()


@pytest.mark.anyio
async def test_generate_output_to_s3(tmp_path: Path, s3_endpoint: str) -> None:
    local = tmp_path / "state"
    items = await _generate_into(local, 6)
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}, "skip_instance_cache": True}
    target = FsOutput("s3://images/run-1/", **options)
    target.probe()
    _mirror_run(items, local, target)
    assert "client_kwargs" not in repr(target)

    fs = target.fs
    fs.invalidate_cache()
    listing = [key.rsplit("/", 1)[-1] for key in fs.ls("images/run-1", detail=False)]
    _check_output(listing, lambda n: fs.cat_file(f"images/run-1/{n}"), 6)


def test_cli_generate_to_a_file_url_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dreambooth_async.cli import main

    monkeypatch.chdir(tmp_path)  # the default state folder is ./.dreambooth-state
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"url prompt {i}\n" for i in range(5)))
    remote = tmp_path / "remote" / "run"
    common = [
        "generate",
        str(prompts),
        "--model-id",
        "midjourney",
        "--out",
        remote.as_uri(),
        "--emulator",
        "--emulator-time-scale",
        "0.002",
        "--no-progress",
        "-q",
    ]
    assert main(common) == 0
    rows = [json.loads(line) for line in (remote / "metadata.jsonl").read_text().splitlines()]
    assert sorted(r["prompt"] for r in rows) == [f"url prompt {i}" for i in range(5)]
    names = sorted(p.name for p in remote.iterdir())
    assert sorted(r["file_name"] for r in rows) == [n for n in names if n.endswith(".png")]
    assert "index.html" in names and not [n for n in names if ".tmp-" in n]
    # The manifest stayed local; the images did not.
    (state,) = (tmp_path / ".dreambooth-state").iterdir()
    assert (state / "dreambooth-manifest.jsonl").exists() and not list(state.glob("*.png"))
    # A rerun resumes from the local manifest: nothing new, the same rows.
    assert main(common) == 0
    assert (remote / "metadata.jsonl").read_text().count("\n") == 5
