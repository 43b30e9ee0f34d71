"""``generate``: a prompts file in, a folder of images and ``metadata.jsonl`` out, through a
resumable batch. Everything is checked before anything is written or sent; the batch runs
under the output folder's lock; the summary says what to do next."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from .._batch import plan_run
from .._client import BASE_URL_ENV, DreamboothClient
from .._errors import (
    AuthenticationError,
    EndpointNotFound,
    InsufficientCredits,
    PromptFileError,
    TransportError,
)
from .._poller import PollPolicy
from .._progress import ProgressReporter
from .._spend import read_balances
from .common import (
    CLI_EXTRA,
    EXIT_OK,
    METADATA_NAME,
    RUN_NAME,
    InputError,
    require_emulator,
)
from .dataset.fsout import (
    FsOutput,
    OutputURLError,
    RemoteMirror,
    UploadError,
    is_url,
    restore_state,
    state_folder,
)
from .dataset.gallery import write_gallery
from .dataset.layouts import DatasetError, require_pyarrow
from .dataset.report import accounting_lines, build_report, report_path, write_report
from .dataset.shard_writer import ShardWriter
from .options import defaults_from_args
from .output import (
    MetadataWriter,
    OutputLock,
    RowSink,
    RunRecord,
    ShardSink,
    check_output_folder,
    folder_has_images,
    make_output_folder,
    manifest_name,
    run_options,
)
from .prompts import PromptSource, detect_format
from .service import api_keys, checked_base_url, service, webhook_receiver
from .summary import Summary, exit_code, print_summary, tally

__all__ = ["generate", "run_async"]


class _AllPrompts:
    """The requests of ``source``, sized: a batch stopped by its budget then records every
    prompt it did not send as pending (a stream it would stop reading), so the manifest and
    the gallery count them all."""

    def __init__(self, source: PromptSource) -> None:
        self._source = source

    def __len__(self) -> int:
        return self._source.count

    def __iter__(self) -> Iterator[Any]:
        return iter(self._source.requests())


async def _run_generate(
    args: argparse.Namespace,
    source: PromptSource,
    out: Path,
    stdout: TextIO,
    remote: FsOutput | None = None,
) -> int:
    started = time.monotonic()
    manifest = Path(args.manifest) if args.manifest else out / manifest_name(args)
    summary = Summary()
    # A URL --out: the batch fills the local state folder, each item's images are uploaded
    # (then dropped locally) before the metadata that names them; a copy of the manifest
    # follows it there, for a rerun whose state folder is gone.
    mirror = (
        RemoteMirror(out, remote, manifest=manifest, record=RUN_NAME)
        if remote is not None
        else None
    )
    shards: ShardWriter | None = None
    metadata: RowSink
    if args.output_format == "files":
        metadata = MetadataWriter(out / METADATA_NAME, args.samples_per_shard)
    else:
        shards = ShardWriter(out, args.output_format, args.samples_per_shard, target=remote)
        # What a killed run left: staged images are filled on, a finished shard is not
        # written again.
        for note in shards.open():
            print(note, file=stdout)
        metadata = ShardSink(shards)
        summary.outputs = f"{args.output_format} shards"
        summary.rows_word = "samples"
    try:
        if mirror is not None and shards is None:
            await asyncio.to_thread(mirror.leftovers)
        # The manifest's copy is kept current until the batch has ended, then saved whole.
        state = mirror.keeping_state() if mirror is not None else contextlib.nullcontext()
        async with state, service(args) as chosen:
            scale = chosen.scale
            poll = PollPolicy().scaled(scale) if scale else PollPolicy()
            client = DreamboothClient(
                chosen.key,
                base_url=chosen.base_url,
                api_version=args.api_version,
                poll=poll,
                max_concurrency=args.max_concurrency,
                webhooks=webhook_receiver(args),
                cache=args.cache,
            )
            show = not args.quiet and not args.no_progress
            progress = ProgressReporter(
                source.count,
                stream=sys.stderr,
                bar=None if show else False,
                redact=client.redact,
            )
            hooks: list[Callable[[Any], None]] = [progress] if show else []
            if mirror is not None:
                hooks.append(mirror.on_event)
            try:
                async with client:
                    # For the report: what the accounts had before anything was sent.
                    before = await read_balances(client)
                    run = client.map(
                        _AllPrompts(source),
                        args.concurrency,
                        manifest=manifest,
                        download_to=out,
                        on_event=hooks,
                        rate_limit=args.rate_limit,
                        resubmit_ambiguous=args.resubmit_ambiguous,
                        recover_ambiguous=args.recover_seconds,
                        retry_failed=not args.no_retry_failed,
                        job_timeout=args.job_timeout,
                        max_images=args.max_images,
                        max_spend=args.max_spend,
                        price_per_image=args.price_per_image,
                        track_spend=True,
                    )
                    async with run:
                        try:
                            async for item in run:
                                if shards is None:
                                    tally(item, summary, metadata, source, client)
                                else:
                                    # Sealing a shard writes a whole tar or Parquet file: not
                                    # on the loop, which polls and downloads meanwhile.
                                    await asyncio.to_thread(
                                        tally, item, summary, metadata, source, client
                                    )
                                    if not item.ok and not item.resumed:
                                        shards.note_failure(ambiguous=item.ambiguous)
                                if mirror is not None:
                                    await mirror.upload(metadata.placed if item.ok else ())
                        except (AuthenticationError, InsufficientCredits) as error:
                            # The batch stopped submitting; accepted jobs were collected above.
                            summary.stopped = client.redact(f"{type(error).__name__}: {error}")
                            summary.remedy = (
                                "top up the wallet"
                                if isinstance(error, InsufficientCredits)
                                else "use a valid key"
                            )
                        except EndpointNotFound as error:
                            summary.stopped = client.redact(str(error))
                            summary.remedy = (
                                f"check --base-url (or ${BASE_URL_ENV}): the service's root, "
                                "such as https://modelslab.com, without a path"
                            )
                        except TransportError as error:
                            # Connections kept failing: the batch gave up on the service rather
                            # than fail every item one by one; nothing more was sent.
                            summary.stopped = client.redact(
                                f"cannot reach {client.base_url}: {error}"
                            )
                            summary.remedy = (
                                "check --base-url (or $" + BASE_URL_ENV + ") and the network"
                            )
                        except UploadError as error:
                            # In mirror.failure, for the summary; nothing more is sent, and what
                            # was not uploaded stays staged for the rerun.
                            if mirror is not None:
                                mirror.failure = mirror.failure or error
                        if shards is not None and (mirror is None or mirror.failure is None):
                            # The run ended (not killed, not interrupted): the last shard is
                            # sealed with what it has.
                            try:
                                await asyncio.to_thread(shards.finish)
                            except UploadError as error:
                                if mirror is not None:
                                    mirror.failure = mirror.failure or error
                    summary.budget_reached = run.budget_reached
                    after = await read_balances(client)
                    report = build_report(
                        stats=run.stats,
                        key_stats=run.key_stats,
                        before=before,
                        after=after,
                        elapsed=time.monotonic() - started,
                        stopped=summary.stopped,
                        budget={"max_images": args.max_images, "max_spend": args.max_spend},
                        spend=run.spend,
                        prompts=source.count,
                    )
                    summary.accounting = accounting_lines(
                        report, unlimited_wallet=chosen.unlimited_wallet
                    )
                    try:
                        write_report(report_path(manifest), report, client.redact)
                    except OSError as exc:  # the images are fine; only the report is lost
                        summary.accounting.append(f"could not write the report: {exc}")
                    else:
                        summary.accounting.append(f"report: {report_path(manifest)}")
            finally:
                if show:
                    progress.close()
    except UploadError as error:
        # The first save of the manifest's copy, or the upload of what a killed run left,
        # failed: before anything was sent.
        if mirror is not None:
            mirror.failure = mirror.failure or error
    finally:
        metadata.close()
    upload_error = (
        mirror.finish(manifest=manifest, gallery=shards is None) if mirror is not None else None
    )
    if upload_error is not None:
        print(f"error: {upload_error}", file=stdout)
    shown = str(remote.url) if remote is not None else out
    print_summary(summary, shown, manifest, time.monotonic() - started, stdout)
    if upload_error is not None and mirror is not None:
        staged = mirror.staged()
        print(
            f"the manifest is intact: run the same command again to upload the {staged} "
            f"image{'' if staged == 1 else 's'} kept in {out} and go on (nothing is paid "
            "for twice)",
            file=stdout,
        )
    if shards is not None:
        sealed = len(shards.sealed)
        print(
            f"shards: {sealed} sealed by this run"
            + (f" (last: {shards.sealed[-1].name})" if sealed else "")
            + (f", {shards.staged()} images staged in the open one" if shards.staged() else ""),
            file=stdout,
        )
    elif mirror is None:
        try:
            gallery = write_gallery(out, manifest=manifest)
        except OSError as exc:  # the images are fine; only the page could not be written
            print(f"could not write the gallery: {exc}", file=stdout)
        else:
            print(f"gallery: {gallery.as_uri()}", file=stdout)
    return exit_code(summary, upload_failed=upload_error is not None)


def _remote_output(url: str) -> FsOutput:
    """The fsspec output at ``url``, proven writable before anything is submitted."""
    try:
        remote = FsOutput(url)
        remote.probe()
    except OutputURLError as exc:
        raise InputError(str(exc)) from None
    return remote


def _restore_remote_state(
    args: argparse.Namespace, remote: FsOutput, out: Path, stdout: TextIO
) -> None:
    """A URL --out whose manifest is not here (a pod restarted without its volume): restore
    it from its copy beside the outputs, or refuse to pay for outputs already there again."""
    manifest = Path(args.manifest) if args.manifest else out / manifest_name(args)
    allow_new = bool(getattr(args, "new_manifest", False))
    try:
        notes = restore_state(
            remote,
            manifest,
            local=out,
            record=RUN_NAME,
            allow_new=allow_new,
            sharded=args.output_format != "files",
        )
    except OutputURLError as exc:
        raise InputError(str(exc)) from None
    except OSError as exc:  # the state folder or --manifest could not take it
        raise InputError(f"cannot restore {manifest}: {exc}") from None
    for note in notes:
        print(note, file=stdout)


def generate(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    stdout = stdout or sys.stdout
    path = Path(args.prompts)
    source = PromptSource(
        path=path,
        fmt=detect_format(path, args.format),
        defaults=defaults_from_args(args),
        kind=args.kind,
        derive_seeds=not args.random_seeds,
        shard=getattr(args, "shard", None),
    )
    # Everything is checked before anything is written or sent: a bad file, a missing key or
    # extra, or an output folder that cannot take the images leaves no trace. A dry run
    # writes and sends nothing: it checks each row as it plans it, in one pass over the file.
    if not args.dry_run:
        source.validate()
    if args.output_format == "parquet":
        try:
            require_pyarrow("--output-format parquet")
        except DatasetError as exc:
            raise InputError(str(exc)) from None
    if args.emulator:
        require_emulator("--emulator", CLI_EXTRA)
    else:
        api_keys(args)
        checked_base_url(args)
    # A URL --out keeps its manifest and staged images in a local state folder.
    url = is_url(args.out)
    state_dir = Path(args.state_dir) if args.state_dir else None
    out = state_folder(args.out, state_dir).resolve() if url else Path(args.out).resolve()
    if args.dry_run:
        return _dry_run(args, source, out, stdout)
    remote = _remote_output(args.out) if url else None
    check_output_folder(out, "--out")
    if args.manifest:
        check_output_folder(Path(args.manifest).resolve().parent, "--manifest")
    make_output_folder(out, "--out")
    lock = OutputLock(out)
    try:
        # Under the lock: no other run changes the record between the check and the save.
        options = run_options(args)
        if remote is not None:
            _restore_remote_state(args, remote, out, stdout)
        record = RunRecord.read(out)
        has_images = folder_has_images(out)
        record.check(options, has_images=has_images, allow_mixed=args.allow_mixed)
        try:
            record.save(options, has_images=has_images)
        except OSError as exc:
            raise InputError(f"--out {out}: cannot write in it ({exc.strerror or exc})") from None
        return run_async(_run_generate(args, source, out, stdout, remote))
    finally:
        lock.close()


def _dry_run(args: argparse.Namespace, source: PromptSource, out: Path, stdout: TextIO) -> int:
    """``generate --dry-run``: what the run would submit and what is already covered, from
    the files alone; nothing is sent or written."""
    try:
        plan = plan_run(
            # Drafts: an item the manifest covers is checked and keyed but never built.
            source.drafts(),
            api_version=args.api_version,
            # The embedded emulator's address is new every run: nothing cached matches it.
            base_url="" if args.emulator else checked_base_url(args),
            cache=args.cache,
            manifest=Path(args.manifest) if args.manifest else out / manifest_name(args),
            max_images=args.max_images,
        )
    except PromptFileError as exc:  # a row's draft found it wrong when planned
        raise InputError(str(exc)) from None
    print(
        f"dry run: {plan.submissions} submissions, {plan.images} images; covered: "
        f"{plan.done} done and {plan.in_flight} in flight (manifest), {plan.cached} cached; "
        f"{plan.over_budget} over --max-images",
        file=stdout,
    )
    return EXIT_OK


def run_async(coro: Any) -> int:
    """Run ``coro``; SIGTERM cancels it like Ctrl-C does, so the batch stops cleanly."""

    async def wrapper() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            assert task is not None
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            result: int = await coro
            return result
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGTERM)

    return asyncio.run(wrapper())
