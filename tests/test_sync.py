"""The blocking client against the emulator: the core scenarios run over both clients, plus
what only the blocking one has (its thread, use inside a running event loop, interrupted
batches, detached results).

The emulator runs on an event loop of its own, in a portal thread, so that neither client can
starve it: the blocking client's calls block whatever thread makes them, the test's event loop
included (which is exactly the Jupyter situation: plain calls from inside a running loop).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

import dreambooth_async as dba
from dreambooth_async import sync
from dreambooth_async._progress import ProgressReporter
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig

SCALE = 0.01
PNG = b"\x89PNG\r\n\x1a\n"
_seeds = itertools.count(1)


class Service:
    """The emulator, running on its own loop thread, and blocking helpers to look at it."""

    def __init__(self, emulator: Emulator, portal: BlockingPortal) -> None:
        self.emulator = emulator
        self.portal = portal
        self.base_url = emulator.base_url
        self.key = emulator.key

    def wait_finished(self, job_id: str) -> None:
        # The server knows when the job is final: no guessing with sleeps.
        self.portal.call(self.emulator.wait_finished, int(job_id))

    def received(self) -> int:
        return self.emulator.stats.submissions_received


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    config = EmulatorConfig(
        time_scale=SCALE,
        sync_window=0,  # every submission answers "processing": the poller always runs
        spam_filter=False,
        queue_limit=50,
        workers=16,
        # Two service seconds plus half a second per step: steps=1 is quick, steps=50 is not.
        cost=CostModel(base=2, per_step=0.5, per_sample=0, per_megapixel=0, noise=0),
    )
    with start_blocking_portal("asyncio") as portal:
        emulator = Emulator(config)
        portal.call(emulator.start)
        try:
            yield Service(emulator, portal)
        finally:
            portal.call(emulator.aclose)


def req(*, steps: int = 1, **fields: Any) -> dba.Text2Img:
    """A request of its own (a fresh seed), quick by default."""
    fields.setdefault("model_id", "midjourney")
    fields.setdefault("prompt", "a cat on a bench")
    return dba.Text2Img(steps=steps, seed=next(_seeds), **fields)


def options(service: Service, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "api_key": service.key,
        "base_url": service.base_url,
        "poll": dba.PollPolicy().scaled(SCALE),
        "timeout": dba.Timeouts(connect=2.0, request=5.0, total=10.0),
    }
    values.update(overrides)
    return values


# --- one interface over both clients ----------------------------------------------------------


class AnyJob(Protocol):
    id: str

    @property
    def status(self) -> str: ...

    async def wait(self, timeout: float | None = None) -> dba.GenerationResult: ...


class Client(Protocol):
    """What a scenario calls; ``await`` works for both clients (see SyncAdapter)."""

    kind: str

    async def generate(
        self, request: dba.GenerationRequest, *, timeout: float | None = None
    ) -> dba.GenerationResult: ...
    async def text2img(self, **fields: Any) -> dba.GenerationResult: ...
    async def submit(self, request: dba.GenerationRequest) -> AnyJob: ...
    async def attach(self, job_id: str) -> AnyJob: ...
    async def fetch(self, job_id: str) -> dba.GenerationResult | dba.Processing: ...
    async def wait_for(self, job_id: str) -> dba.GenerationResult: ...
    async def gather(self, requests: list[dba.Text2Img], **options: Any) -> list[dba.BatchItem]: ...
    async def map(self, requests: list[dba.Text2Img], **options: Any) -> list[dba.BatchItem]: ...
    async def download(self, result: dba.GenerationResult, directory: Path) -> list[Path]: ...
    async def system_load(self) -> dba.SystemLoad: ...
    async def model_list(self) -> list[dba.ModelInfo]: ...


class AsyncAdapter:
    kind = "async"

    def __init__(self, client: dba.DreamboothClient) -> None:
        self.client = client

    async def generate(
        self, request: dba.GenerationRequest, *, timeout: float | None = None
    ) -> dba.GenerationResult:
        return await self.client.generate(request, timeout=timeout)

    async def text2img(self, **fields: Any) -> dba.GenerationResult:
        return await self.client.text2img(**fields)

    async def submit(self, request: dba.GenerationRequest) -> AnyJob:
        return await self.client.submit(request)

    async def attach(self, job_id: str) -> AnyJob:
        return self.client.attach(job_id)

    async def fetch(self, job_id: str) -> dba.GenerationResult | dba.Processing:
        return await self.client.fetch(job_id)

    async def wait_for(self, job_id: str) -> dba.GenerationResult:
        return await self.client.wait_for(job_id)

    async def gather(self, requests: list[dba.Text2Img], **options: Any) -> list[dba.BatchItem]:
        return await self.client.gather(requests, **options)

    async def map(self, requests: list[dba.Text2Img], **options: Any) -> list[dba.BatchItem]:
        async with self.client.map(requests, **options) as run:
            return [item async for item in run]

    async def download(self, result: dba.GenerationResult, directory: Path) -> list[Path]:
        return await result.save(directory)

    async def system_load(self) -> dba.SystemLoad:
        return await self.client.system_load()

    async def model_list(self) -> list[dba.ModelInfo]:
        return await self.client.model_list()


class SyncJobAdapter:
    def __init__(self, job: sync.Job) -> None:
        self.job = job
        self.id = job.id

    @property
    def status(self) -> str:
        return self.job.status

    async def wait(self, timeout: float | None = None) -> dba.GenerationResult:
        return self.job.wait(timeout)


class SyncAdapter:
    """Plain blocking calls, made from inside the test's running event loop."""

    kind = "sync"

    def __init__(self, client: sync.DreamboothClient) -> None:
        self.client = client

    async def generate(
        self, request: dba.GenerationRequest, *, timeout: float | None = None
    ) -> dba.GenerationResult:
        return self.client.generate(request, timeout=timeout)

    async def text2img(self, **fields: Any) -> dba.GenerationResult:
        return self.client.text2img(**fields)

    async def submit(self, request: dba.GenerationRequest) -> AnyJob:
        return SyncJobAdapter(self.client.submit(request))

    async def attach(self, job_id: str) -> AnyJob:
        return SyncJobAdapter(self.client.attach(job_id))

    async def fetch(self, job_id: str) -> dba.GenerationResult | dba.Processing:
        return self.client.fetch(job_id)

    async def wait_for(self, job_id: str) -> dba.GenerationResult:
        return self.client.wait_for(job_id)

    async def gather(self, requests: list[dba.Text2Img], **options: Any) -> list[dba.BatchItem]:
        return self.client.gather(requests, **options)

    async def map(self, requests: list[dba.Text2Img], **options: Any) -> list[dba.BatchItem]:
        with self.client.map(requests, **options) as run:
            return list(run)

    async def download(self, result: dba.GenerationResult, directory: Path) -> list[Path]:
        return self.client.download(result, directory)

    async def system_load(self) -> dba.SystemLoad:
        return self.client.system_load()

    async def model_list(self) -> list[dba.ModelInfo]:
        return self.client.model_list()


@pytest.fixture(params=["async", "sync"])
async def client(request: pytest.FixtureRequest, service: Service) -> AsyncIterator[Client]:
    if request.param == "async":
        async with dba.DreamboothClient(**options(service)) as async_client:
            yield AsyncAdapter(async_client)
    else:
        with sync.DreamboothClient(**options(service)) as sync_client:
            yield SyncAdapter(sync_client)


# --- the core scenarios, over both clients ----------------------------------------------------


@pytest.mark.anyio
async def test_generate(client: Client, service: Service) -> None:
    result = await client.generate(req(prompt="a lighthouse"))
    assert result.status == "success" and result.id
    assert len(result.output) == 1 and result.output[0].startswith(service.base_url)
    shortcut = await client.text2img(model_id="midjourney", prompt="a boat", seed=next(_seeds))
    assert shortcut.status == "success" and shortcut.id != result.id


@pytest.mark.anyio
async def test_submit_then_wait(client: Client) -> None:
    job = await client.submit(req(steps=20))
    assert job.id and job.status == "processing"  # sync_window=0: never answered at once
    result = await job.wait(timeout=10)
    assert result.id == job.id and result.output
    assert job.status == "success"


@pytest.mark.anyio
async def test_wait_with_a_short_timeout_leaves_the_job_running(client: Client) -> None:
    job = await client.submit(req(steps=50))  # 27 service seconds: 0.27 s here
    with pytest.raises(dba.JobTimeout) as caught:
        await job.wait(timeout=0.001)
    assert caught.value.job_id == job.id
    assert (await job.wait(timeout=10)).id == job.id


@pytest.mark.anyio
async def test_fetch_answers_processing_then_the_result(client: Client, service: Service) -> None:
    job = await client.submit(req(steps=50))
    first = await client.fetch(job.id)
    assert isinstance(first, dba.Processing) and first.id == job.id
    service.wait_finished(job.id)
    second = await client.fetch(job.id)
    assert isinstance(second, dba.GenerationResult) and second.id == job.id and second.output


@pytest.mark.anyio
async def test_wait_for_and_attach_by_id(client: Client) -> None:
    job = await client.submit(req(steps=10))
    result = await client.wait_for(job.id)
    assert result.id == job.id and result.output
    again = await client.attach(job.id)
    assert (await again.wait(timeout=10)).id == job.id


@pytest.mark.anyio
async def test_validation_error_before_any_network_call(client: Client, service: Service) -> None:
    before = service.received()
    with pytest.raises(dba.RequestValidationError) as caught:
        await client.text2img(model_id="midjourney", prompt="too wide", width=5000)
    assert caught.value.field == "width"
    assert service.received() == before


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_constructor_validation(kind: str, service: Service) -> None:
    cls = dba.DreamboothClient if kind == "async" else sync.DreamboothClient
    threads = threading.active_count()
    with pytest.raises(dba.RequestValidationError):
        cls(**options(service, api_key="  "))
    with pytest.raises(dba.RequestValidationError):
        cls(**options(service, base_url="not a url"))
    assert threading.active_count() == threads  # refused before a loop thread started


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_invalid_key_is_an_authentication_error(kind: str, service: Service) -> None:
    wrong = options(service, api_key="not-the-key")
    request = req()
    if kind == "async":
        async with dba.DreamboothClient(**wrong) as async_client:
            with pytest.raises(dba.AuthenticationError) as caught:
                await async_client.generate(request)
    else:
        with (
            sync.DreamboothClient(**wrong) as sync_client,
            pytest.raises(dba.AuthenticationError) as caught,
        ):
            sync_client.generate(request)
    assert "not-the-key" not in str(caught.value)


@pytest.mark.anyio
async def test_unknown_model_is_an_api_error(client: Client) -> None:
    with pytest.raises(dba.APIError, match="Model id not found"):
        await client.generate(req(model_id="no-such-model"))


@pytest.mark.anyio
async def test_gather_keeps_input_order_and_map_yields_as_completed(client: Client) -> None:
    # Descending steps: later items finish first.
    requests = [req(steps=40 - 4 * i) for i in range(8)]
    items = await client.gather(requests, concurrency=8)
    assert [item.index for item in items] == list(range(8))
    assert [item.request for item in items] == requests
    assert all(item.ok and item.result is not None for item in items)
    completed = await client.map(requests, concurrency=8)
    assert sorted(item.index for item in completed) == list(range(8))
    assert [item.index for item in completed] != list(range(8))


@pytest.mark.anyio
async def test_download(client: Client, tmp_path: Path) -> None:
    result = await client.generate(req(samples=2))
    paths = await client.download(result, tmp_path)
    assert len(paths) == 2
    for path in paths:
        assert path.parent == tmp_path.resolve() and path.read_bytes().startswith(PNG)


@pytest.mark.anyio
async def test_system_load_and_model_list(client: Client) -> None:
    load = await client.system_load()
    assert load.queue_num >= 0 and load.queue_time >= 0
    models = {model.model_id for model in await client.model_list()}
    assert "midjourney" in models


# --- only the blocking client -------------------------------------------------------------------


def test_plain_script_use_and_one_thread_for_its_lifetime(service: Service) -> None:
    threads = threading.active_count()
    client = sync.DreamboothClient(**options(service))
    assert threading.active_count() == threads + 1
    assert service.key not in repr(client)
    result = client.generate(req())
    job = client.submit(req())
    assert job.result(timeout=10).id == job.id  # blocks, like concurrent.futures
    assert result.status == "success" and not client.closed
    client.close()
    client.close()  # idempotent
    assert client.closed and threading.active_count() == threads
    with pytest.raises(dba.ClientClosedError):
        client.generate(req())
    assert job.wait().id == job.id  # a finished job keeps its result after close


def test_inside_a_running_event_loop(service: Service) -> None:
    # A Jupyter cell: an event loop runs in this thread, and the cell makes plain calls.
    async def cell() -> tuple[str, list[int]]:
        asyncio.get_running_loop()
        with sync.DreamboothClient(**options(service)) as client:
            result = client.generate(req())
            items = [item.index for item in client.map([req(), req()], concurrency=2)]
        return result.status, sorted(items)

    assert asyncio.run(cell()) == ("success", [0, 1])


def test_results_are_detached_and_save_from_any_loop(service: Service, tmp_path: Path) -> None:
    with sync.DreamboothClient(**options(service)) as client:
        result = client.generate(req())
        item = client.gather([req()])[0]
        assert item.result is not None
        # The client's session lives on its loop thread; awaiting it elsewhere would break.
        assert result._session is None and item.result._session is None
        paths = asyncio.run(result.save(tmp_path / "a"))
        assert paths[0].read_bytes().startswith(PNG)
    # And after the client closed, too.
    assert asyncio.run(item.result.save(tmp_path / "b"))[0].read_bytes().startswith(PNG)


def test_pending_jobs_fail_on_close(service: Service) -> None:
    client = sync.DreamboothClient(**options(service))
    job = client.submit(req(steps=50))
    client.close()
    assert job.status == "failed"
    with pytest.raises(dba.ClientClosedError):
        job.wait()


def test_a_batch_left_early_is_cancelled_on_exit(service: Service) -> None:
    with sync.DreamboothClient(**options(service)) as client:
        with client.map([req(steps=5) for _ in range(6)], concurrency=2) as run:
            first = next(run)
            assert first.ok
        assert run.stats["items"] <= 6
        with pytest.raises(StopIteration):
            next(run)
        # Still usable afterwards.
        assert client.generate(req()).status == "success"


def test_open_batches_are_closed_with_the_client(service: Service) -> None:
    client = sync.DreamboothClient(**options(service))
    run = client.map([req(steps=30) for _ in range(4)], concurrency=2)
    assert next(run).ok
    client.close()
    with pytest.raises(StopIteration):
        next(run)


def test_fail_fast_error_is_raised_by_the_iterator(service: Service) -> None:
    with sync.DreamboothClient(**options(service)) as client:
        run = client.map([req(model_id="no-such-model"), req()], concurrency=1, fail_fast=True)
        with pytest.raises(dba.APIError):
            list(run)
        with pytest.raises(StopIteration):
            next(run)


def test_progress_display_is_fed_and_closed(service: Service) -> None:
    stream = io.StringIO()
    reporter = ProgressReporter(3, stream=stream, bar=False, interval=3600)
    with sync.DreamboothClient(**options(service)) as client:
        items = list(client.map([req(), req(), req()], progress=reporter))
    assert len(items) == 3 and reporter.done == 3
    reporter.close()
    assert stream.getvalue().splitlines()[-1].startswith("[3/3] done 3")


def test_progress_true_closes_its_own_display(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    with sync.DreamboothClient(**options(service)) as client:
        items = list(client.map([req(), req()], progress=True))
    assert len(items) == 2
    # Not a terminal: status lines on stderr, the last one written when the batch ended.
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("[2/2] done 2")


@pytest.mark.anyio
async def test_async_map_progress_true(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    async with (
        dba.DreamboothClient(**options(service)) as client,
        client.map([req(), req()], progress=True) as run,
    ):
        items = [item async for item in run]
    assert len(items) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("[2/2] done 2")


def test_a_client_never_closed_is_closed_at_exit(service: Service) -> None:
    # Common in notebooks and quick scripts: the interpreter must still exit at once, cleanly
    # (no hang on the loop thread, no unclosed-session warnings: -X dev -W error).
    script = textwrap.dedent(
        f"""
        import dreambooth_async as dba
        from dreambooth_async.sync import DreamboothClient

        client = DreamboothClient({service.key!r}, base_url={service.base_url!r},
                                  poll=dba.PollPolicy().scaled({SCALE}))
        print(client.text2img(model_id="midjourney", prompt="left open", seed=1).status)
        run = client.map([dba.Text2Img(model_id="midjourney", prompt="p", seed=i, steps=40)
                          for i in range(4)], concurrency=2)
        print(next(run).ok)
        dropped = DreamboothClient({service.key!r}, base_url={service.base_url!r})
        del dropped  # collected: closed by its finalizer
        """
    )
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["success", "True"]
    assert done.stderr == ""


def test_ctrl_c_interrupts_a_blocking_call_and_the_client_goes_on(service: Service) -> None:
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main
    fired = threading.Event()

    def interrupt_on_first_queued(event: dba.BatchEvent) -> None:
        # Runs in the loop thread while the main thread blocks in next(run): a real SIGINT,
        # as Ctrl-C (or Jupyter's "interrupt kernel") would send.
        if event.kind == "queued" and not fired.is_set():
            fired.set()
            signal.pthread_kill(main, signal.SIGINT)

    with sync.DreamboothClient(**options(service)) as client:
        requests = [req(steps=30) for _ in range(3)]
        with client.map(requests, concurrency=3, on_event=interrupt_on_first_queued) as run:
            with pytest.raises(KeyboardInterrupt):
                next(run)
            assert fired.is_set()
            # Only the wait was cancelled: the batch goes on, and nothing was lost.
            assert sorted(item.index for item in run) == [0, 1, 2]
        assert client.generate(req()).status == "success"
