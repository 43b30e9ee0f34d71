"""Outputs through fsspec: a ``file://`` URL (whenever fsspec is installed) and an S3 API on
loopback (moto's server mode, when moto and s3fs are installed). Every image and a consistent
``metadata.jsonl`` arrive, and nothing is ever visible half-written under its final name.

A run whose local state folder is gone (a pod restarted without its volume) restores the
manifest from its copy beside the outputs and pays for nothing twice, or, with outputs there and
no copy, refuses; a storage that fails mid-run ends the command with one line and exit code 1,
and the rerun uploads what was left behind."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import dreambooth_async as dba
from dreambooth_async.cli.dataset.fsout import (
    STATE_DIR_ENV,
    FsOutput,
    OutputURLError,
    RemoteMirror,
    UploadError,
    is_url,
    restore_state,
    state_folder,
)
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig

fsspec = pytest.importorskip("fsspec")
LocalFileSystem = pytest.importorskip("fsspec.implementations.local").LocalFileSystem

SCALE = 0.01
SECRET = "sk-fsout-3c9e1a7b5d2f4e6a8c0b"
COPY = ".dreambooth-manifest.jsonl.gz"
MARKER = ".dreambooth-manifest.jsonl.state"


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This module's runs keep their state folders in ``tmp_path/.dreambooth-state``."""
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / ".dreambooth-state"))


def test_urls_and_state_folders() -> None:
    assert is_url("s3://bucket/run/") and is_url("file:///tmp/x") and is_url("gs://b/p")
    assert not is_url("out/run") and not is_url("/abs/path") and not is_url("C:\\x")
    assert state_folder("s3://b/run/") == state_folder("s3://b/run")
    assert state_folder("s3://b/run") != state_folder("s3://c/run")
    assert state_folder("s3://b/run").name.startswith("run-")


def test_state_folders_go_to_the_platform_state_directory_or_the_one_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    platformdirs = pytest.importorskip("platformdirs")
    monkeypatch.delenv(STATE_DIR_ENV)
    home_state = platformdirs.user_state_path("dreambooth-async", appauthor=False)
    assert state_folder("s3://b/run").parent == home_state
    assert Path.cwd() not in state_folder("s3://b/run").parents
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "mine"))
    assert state_folder("s3://b/run").parent == tmp_path / "mine"
    assert state_folder("s3://b/run", tmp_path / "flag").parent == tmp_path / "flag"
    if sys.platform.startswith("linux"):
        # Without platformdirs (it is optional), the same rule: $XDG_STATE_HOME on Linux.
        monkeypatch.delenv(STATE_DIR_ENV)
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
        monkeypatch.setitem(sys.modules, "platformdirs", None)
        assert state_folder("s3://b/run").parent == tmp_path / "xdg" / "dreambooth-async"


def test_cli_state_dir_flag_keeps_the_state_there_and_not_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dreambooth_async.cli import main

    monkeypatch.chdir(tmp_path)
    prompts = tmp_path / "p.txt"
    prompts.write_text("url prompt\n")
    remote = tmp_path / "remote" / "run"
    argv = [
        *("generate", str(prompts), "--model-id", "midjourney", "--out", remote.as_uri()),
        *("--state-dir", str(tmp_path / "flag"), "--emulator", "--emulator-time-scale", "0.002"),
        *("--no-progress", "-q"),
    ]
    assert main(argv) == 0
    (state,) = (tmp_path / "flag").iterdir()
    assert (state / "dreambooth-manifest.jsonl").exists()
    assert not (tmp_path / ".dreambooth-state").exists()
    assert not Path(os.environ[STATE_DIR_ENV]).exists()


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
    with pytest.raises(UploadError, match=r"upload of metadata\.jsonl to file://"):
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


@pytest.mark.anyio
async def test_the_manifest_copy_on_s3_restores_and_its_absence_refuses(
    tmp_path: Path, s3_endpoint: str
) -> None:
    local = tmp_path / "state"
    manifest = local / "m.jsonl"
    items = await _generate_into(local, 3)
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}, "skip_instance_cache": True}
    target = FsOutput("s3://images/run-2/", **options)
    target.probe()
    fresh = tmp_path / "fresh"
    assert restore_state(target, fresh / "m.jsonl", local=fresh, record="r.json") == []
    mirror = RemoteMirror(local, target, manifest=manifest, interval=0.0)
    for item in items:
        mirror.add(item.files)
    mirror.save_state(complete=True)
    shutil.rmtree(local)

    notes = restore_state(target, manifest, local=local, record="r.json")
    assert len(notes) == 1 and "restored the manifest" in notes[0]
    states = dba.read_manifest(manifest)
    assert [s.status for s in states.values()] == ["done"] * 3

    # Images under another prefix, no copy: refused.
    other = FsOutput("s3://images/run-3/", **options)
    other.put_bytes("a.png", b"\x89PNG\r\n\x1a\n")
    with pytest.raises(OutputURLError, match="already holds 1 images and 0 metadata rows"):
        restore_state(other, fresh / "m.jsonl", local=fresh, record="r.json")
    # run-2 was not counted as run-3's (a listing is of the prefix, not of its siblings).
    assert (
        restore_state(
            FsOutput("s3://images/run-", **options), fresh / "m.jsonl", local=fresh, record="r.json"
        )
        == []
    )


def test_cli_generate_to_a_file_url_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dreambooth_async.cli import main

    monkeypatch.chdir(tmp_path)
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
    # The manifest's copy is there, hidden, and says it is complete.
    local_manifest = (state / "dreambooth-manifest.jsonl").read_bytes()
    assert gzip.decompress((remote / COPY).read_bytes()) == local_manifest
    assert json.loads((remote / MARKER).read_text())["complete"] is True
    assert (remote / ".dreambooth-run.json").read_bytes() == (
        state / "dreambooth-run.json"
    ).read_bytes()

    # The pod restarts without its volume: the state folder is gone. The rerun restores the
    # manifest from the copy and resumes: every item done, none submitted.
    shutil.rmtree(tmp_path / ".dreambooth-state")
    capsys.readouterr()
    assert main(common) == 0
    printed = capsys.readouterr().out
    assert "restored the manifest" in printed and "(5 from an earlier run)" in printed
    assert "killed before" not in printed
    assert (remote / "metadata.jsonl").read_text().count("\n") == 5


# --- a lost state folder ----------------------------------------------------------------------


def _command(prompts: Path, url: str, *extra: str) -> list[str]:
    return ["generate", str(prompts), "--model-id", "midjourney", "--out", url, *extra]


def _emulator_options() -> list[str]:
    return ["--emulator", "--emulator-time-scale", "0.002", "--no-progress", "-q"]


def test_outputs_without_any_manifest_are_refused_before_anything_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dreambooth_async.cli import main

    monkeypatch.chdir(tmp_path)
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"again {i}\n" for i in range(3)))
    # An earlier run's outputs, and no manifest anywhere: its state folder went with its pod.
    remote = tmp_path / "remote" / "run"
    remote.mkdir(parents=True)
    (remote / "old-0.png").write_bytes(b"\x89PNG\r\n\x1a\nold")
    (remote / "metadata.jsonl").write_text('{"file_name": "old-0.png", "prompt": "old"}\n')
    command = _command(prompts, remote.as_uri(), *_emulator_options())

    assert main(command) == 2
    error = capsys.readouterr().err
    assert "already holds 1 images and 1 metadata rows" in error
    assert "--manifest PATH" in error and "--new-manifest" in error
    assert "Traceback" not in error
    # Nothing was sent: no manifest was even started.
    (state,) = (tmp_path / ".dreambooth-state").iterdir()
    assert not (state / "dreambooth-manifest.jsonl").exists()
    assert sorted(p.name for p in remote.iterdir()) == ["metadata.jsonl", "old-0.png"]

    # --new-manifest runs anyway, and keeps the rows already there.
    assert main([*command, "--new-manifest"]) == 0
    assert "--new-manifest: no manifest for the 1 images" in capsys.readouterr().out
    rows = [json.loads(line) for line in (remote / "metadata.jsonl").read_text().splitlines()]
    assert sorted(r["prompt"] for r in rows) == ["again 0", "again 1", "again 2", "old"]


@pytest.mark.anyio
async def test_restore_fetches_again_what_the_copy_shows_done_but_never_uploaded(
    tmp_path: Path,
) -> None:
    """A run killed between "done" in the manifest's copy and the upload of the images: the
    restored manifest sends those items to their jobs again (free), not to a new payment."""
    requests = [dba.Text2Img(model_id="midjourney", prompt=f"lost {i}", seed=i) for i in range(4)]
    local = tmp_path / "state"
    manifest = local / "dreambooth-manifest.jsonl"
    remote = tmp_path / "remote"
    target = FsOutput(remote.as_uri())
    target.probe()
    async with (
        Emulator(EmulatorConfig(time_scale=SCALE, queue_limit=4, workers=4)) as emu,
        dba.DreamboothClient(
            "emulator-key", base_url=emu.base_url, poll=dba.PollPolicy().scaled(SCALE)
        ) as client,
    ):
        first = await client.gather(requests, download_to=local, manifest=manifest)
        assert all(item.ok for item in first)
        mirror = RemoteMirror(local, target, manifest=manifest)
        mirror.add([*first[0].files, *first[1].files])  # the other two never made it
        mirror.save_state(complete=False)
        shutil.rmtree(local)  # the pod's disk

        notes = restore_state(target, manifest, local=local, record="dreambooth-run.json")
        assert "restored the manifest" in notes[0]
        assert "killed before its last save" in notes[1]
        assert "2 items it shows done had not reached" in notes[2]
        states = dba.read_manifest(manifest)
        assert sorted(s.status for s in states.values()) == [
            "done",
            "done",
            "submitted",
            "submitted",
        ]

        second = await client.gather(requests, download_to=local, manifest=manifest)
        assert all(item.ok for item in second)
        assert emu.stats.submissions_accepted == 4  # nothing paid for twice
        assert emu.stats.duplicate_submissions() == {}
    for before, after in zip(first[2:], second[2:], strict=True):
        assert after.job_id == before.job_id and not after.resumed
        assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in after.files)
    # A local manifest is never replaced by the copy.
    assert restore_state(target, manifest, local=local, record="dreambooth-run.json") == []


async def _await_copy_with_jobs(copy: Path, count: int, process: anyio.abc.Process) -> None:
    """Until the manifest's copy beside the outputs names ``count`` jobs (polled: the copy is
    another process's upload, with nothing to wait on but the file)."""
    with anyio.fail_after(60):
        while True:
            if process.returncode is not None:
                pytest.fail("the batch finished before the test could kill it")
            if copy.exists():
                lines = gzip.decompress(copy.read_bytes()).decode().splitlines()
                jobs = {json.loads(line).get("job_id") for line in lines[1:]} - {None}
                if len(jobs) >= count:
                    return
            await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_pod_killed_and_restarted_without_its_state_folder_pays_once(
    tmp_path: Path,
) -> None:
    """``kill -9`` mid-batch, the state folder deleted (a pod's ephemeral disk), the same command
    again: the manifest comes back from its copy and every job is attached to, none resent."""
    count = 8
    prompts = tmp_path / "p.txt"
    texts = [f"restart {i}" for i in range(count)]
    prompts.write_text("\n".join(texts) + "\n")
    remote = tmp_path / "remote" / "run"
    # Jobs of about 3 s, all accepted at once: the copy catches up well before they end.
    config = EmulatorConfig(
        keys=(SECRET,),
        queue_limit=count,
        workers=count,
        time_scale=SCALE,
        cost=CostModel(base=300, per_step=0, per_sample=0, per_megapixel=0, noise=0),
    )
    async with Emulator(config) as emu:
        command = [
            sys.executable,
            "-m",
            "dreambooth_async.cli",
            *_command(prompts, remote.as_uri()),
            "--base-url",
            emu.base_url,
            "--api-key",
            SECRET,
            "--poll-scale",
            str(SCALE),
            "--concurrency",
            str(count),
            "--no-progress",
        ]
        first = await anyio.open_process(command, cwd=tmp_path, stdout=None, stderr=None)
        async with first:
            await _await_copy_with_jobs(remote / COPY, count, first)
            first.kill()
            await first.wait()
        assert first.returncode == -signal.SIGKILL
        assert emu.stats.submissions_accepted == count

        shutil.rmtree(tmp_path / ".dreambooth-state")
        second = await anyio.run_process(command, cwd=tmp_path, check=False)
        stdout, stderr = second.stdout.decode(), second.stderr.decode()
        assert second.returncode == 0, stdout + stderr
        assert emu.stats.submissions_accepted == count
        assert emu.stats.duplicate_submissions() == {}
        assert "restored the manifest" in stdout
        assert "was killed before its last save" in stdout

    rows = [json.loads(line) for line in (remote / "metadata.jsonl").read_text().splitlines()]
    assert sorted(r["prompt"] for r in rows) == sorted(texts)
    images = sorted(p.name for p in remote.iterdir() if p.suffix == ".png")
    assert images == sorted(r["file_name"] for r in rows)
    assert json.loads((remote / MARKER).read_text())["complete"] is True
    assert not [p for p in remote.iterdir() if ".tmp-" in p.name]
    for path in [*remote.iterdir(), *(tmp_path / ".dreambooth-state").rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in stdout + stderr


# --- a storage that fails mid-run -------------------------------------------------------------


class _FailingFS(LocalFileSystem):  # type: ignore[misc]
    """A local file system whose image uploads fail once ``images_left`` of them are done, and
    whose writes of names containing ``refuse`` fail: storage that breaks mid-run (a quota,
    expired credentials, the network)."""

    protocol = "dbafailing"
    images_left: int | None = None
    refuse: str | None = None

    @classmethod
    def _check(cls, path: Any) -> None:
        if cls.refuse is not None and cls.refuse in str(path):
            raise PermissionError(13, "access denied (the test's storage)")
        if cls.images_left is not None and ".png" in str(path):
            if cls.images_left <= 0:
                raise PermissionError(13, "quota exceeded (the test's storage)")
            cls.images_left -= 1

    def put_file(self, path1: Any, path2: Any, *args: Any, **kwargs: Any) -> Any:
        self._check(path2)
        return super().put_file(path1, path2, *args, **kwargs)

    def pipe_file(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        self._check(path)
        return super().pipe_file(path, *args, **kwargs)


@pytest.fixture
def failing_fs() -> Iterator[type[_FailingFS]]:
    fsspec.register_implementation("dbafailing", _FailingFS, clobber=True)
    try:
        yield _FailingFS
    finally:
        _FailingFS.images_left = _FailingFS.refuse = None


@pytest.mark.anyio
async def test_an_upload_failure_mid_run_ends_in_one_line_and_the_rerun_uploads_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_fs: type[_FailingFS]
) -> None:
    from dreambooth_async.cli import main

    monkeypatch.chdir(tmp_path)
    count = 6
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"fail {i}\n" for i in range(count)))
    remote = tmp_path / "remote" / "run"
    url = f"dbafailing://{remote}"
    config = EmulatorConfig(keys=(SECRET,), queue_limit=3, workers=3, time_scale=SCALE)
    async with Emulator(config) as emu:
        command = [
            *_command(prompts, url),
            "--base-url",
            emu.base_url,
            "--api-key",
            SECRET,
            "--poll-scale",
            str(SCALE),
            "--no-progress",
        ]

        def run() -> tuple[int, str, str]:
            import contextlib
            import io

            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(command)
            return code, out.getvalue(), err.getvalue()

        failing_fs.images_left = 2
        code, out, err = await anyio.to_thread.run_sync(run)
        assert code == 1, out + err
        assert "Traceback" not in out + err
        (error,) = [line for line in out.splitlines() if line.startswith("error: ")]
        assert (
            error.startswith("error: upload of ") and f"to {url} failed: PermissionError" in error
        )
        assert "quota exceeded" in error
        assert out.index("error: ") < out.index("done ")  # the error, then the summary
        assert "the manifest is intact: run the same command again to upload the" in out
        uploaded = sorted(p.name for p in remote.iterdir() if p.suffix == ".png")
        assert len(uploaded) == 2
        # What is there is consistent: every metadata row names an image that is there.
        if (remote / "metadata.jsonl").exists():
            for line in (remote / "metadata.jsonl").read_text().splitlines():
                assert json.loads(line)["file_name"] in uploaded
        assert not [p for p in remote.iterdir() if ".tmp-" in p.name]
        (state,) = (tmp_path / ".dreambooth-state").iterdir()
        staged = list(state.glob("*.png"))
        assert staged and f"upload the {len(staged)} image" in out
        done_before = {
            k: s.job_id
            for k, s in dba.read_manifest(state / "dreambooth-manifest.jsonl").items()
            if s.status == "done"
        }
        assert len(done_before) > 2

        # The storage is back: the rerun uploads the staged images and finishes the rest.
        failing_fs.images_left = None
        code, out, err = await anyio.to_thread.run_sync(run)
        assert code == 0, out + err
        assert f"({len(done_before)} from an earlier run)" in out
        assert emu.stats.submissions_accepted == count
        assert emu.stats.duplicate_submissions() == {}
    rows = [json.loads(line) for line in (remote / "metadata.jsonl").read_text().splitlines()]
    assert sorted(r["prompt"] for r in rows) == sorted(f"fail {i}" for i in range(count))
    images = sorted(p.name for p in remote.iterdir() if p.suffix == ".png")
    assert images == sorted(r["file_name"] for r in rows)
    assert not list(state.glob("*.png"))
    final = dba.read_manifest(state / "dreambooth-manifest.jsonl")
    for key, job_id in done_before.items():
        assert final[key].job_id == job_id


@pytest.mark.anyio
async def test_a_storage_that_refuses_the_manifest_copy_stops_the_run_before_it_sends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_fs: type[_FailingFS]
) -> None:
    """The probe passes, the first save of the state copy fails: nothing is submitted (a run
    whose manifest cannot be kept beside its outputs would be one lost pod from paying twice)."""
    from dreambooth_async.cli import main

    monkeypatch.chdir(tmp_path)
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    url = f"dbafailing://{tmp_path / 'remote'}"
    failing_fs.refuse = ".dreambooth-run.json"
    async with Emulator(EmulatorConfig(keys=(SECRET,), time_scale=SCALE)) as emu:
        command = [
            *_command(prompts, url),
            *("--base-url", emu.base_url, "--api-key", SECRET, "--poll-scale", str(SCALE)),
            "--no-progress",
        ]

        def run() -> tuple[int, str]:
            import contextlib
            import io

            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = main(command)
            return code, out.getvalue()

        code, out = await anyio.to_thread.run_sync(run)
        assert emu.stats.submissions_accepted == 0
    assert code == 1
    (error,) = [line for line in out.splitlines() if line.startswith("error: ")]
    assert "access denied" in error and url in error
    assert "done 0, failed 0" in out
