"""Where an item ends: its images downloaded through a staging folder, its final state in the
manifest, an event for the hooks, and the :class:`BatchItem` the consumer gets."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from .._download import SessionSource
from .._errors import DreamboothError
from .._manifest import Manifest
from .._models import GenerationResult
from .host import BatchHost
from .item_keys import file_stem
from .items import AmbiguousSubmission, BatchItem
from .plan import Entry
from .tally import Tally

__all__ = ["Endings"]


class Endings:
    """Finishes items: done (after the download), failed, ambiguous, or settled by an earlier
    run."""

    def __init__(
        self,
        client: BatchHost,
        *,
        manifest: Manifest | None,
        tally: Tally,
        download_to: Path | None,
        sessions: SessionSource | None = None,
    ) -> None:
        self._client = client
        #: The client's session handle, kept by the results of items an earlier run finished.
        self._sessions = sessions
        self._manifest = manifest
        self._tally = tally
        self._download_to = download_to

    # --- settled by an earlier run ------------------------------------------------------------

    def earlier(self, entry: Entry) -> BatchItem:
        """An item the manifest settled (plan ``skip``, ``ambiguous`` or ``failed``)."""
        prior = entry.prior
        assert prior is not None
        if entry.plan == "skip":
            return self._resumed(entry)
        if entry.plan == "ambiguous":
            detail = (
                "an earlier run sent this submission and died before hearing back: it may or "
                "may not have been accepted"
                if prior.status == "submitting"
                else (prior.message or "the submission may or may not have been accepted")
            )
            if prior.status == "submitting" and self._manifest is not None:
                self._manifest.ambiguous(entry.key, None, detail=detail)
            return self.ambiguous(entry, AmbiguousSubmission(entry.key, detail))
        error = DreamboothError(
            f"failed in an earlier run ({prior.error}: {prior.message}); "
            "pass retry_failed=True to try again"
        )
        return self._reported(entry, error)

    def unfetchable(self, entry: Entry, key_count: int) -> BatchItem:
        """An earlier run's job paid for with a key this run does not have: fetching it with
        another account's key would find no such job."""
        prior = entry.prior
        assert prior is not None and prior.job_id is not None
        error = DreamboothError(
            f"job {prior.job_id} was paid for with key #{prior.key_index + 1} "
            f"(manifest), and this run has {key_count} key(s): run with "
            "the same keys, in the same order, to fetch it"
            if isinstance(prior.key_index, int)
            else f"job {prior.job_id}: no key to fetch it with"
        )
        return self._reported(entry, error)

    def _reported(self, entry: Entry, error: DreamboothError) -> BatchItem:
        prior = entry.prior
        assert prior is not None
        self._tally.emit("failed", entry, job_id=prior.job_id, detail=str(error))
        return BatchItem(
            index=entry.index,
            request=entry.request,
            key=entry.key,
            error=error,
            job_id=prior.job_id,
            resumed=True,
        )

    def _resumed(self, entry: Entry) -> BatchItem:
        prior = entry.prior
        assert prior is not None
        meta = {"seed": prior.seed} if prior.seed is not None else {}
        result = GenerationResult(
            id=prior.job_id,
            status="success",
            output=prior.output,
            meta=meta,
            session=self._sessions,
        )
        folder = self._download_to
        files = tuple((folder / name) if folder else Path(name) for name in prior.files)
        self._tally.emit("skipped", entry, job_id=prior.job_id)
        return BatchItem(
            index=entry.index,
            request=entry.request,
            result=result,
            key=entry.key,
            job_id=prior.job_id,
            files=files,
            resumed=True,
        )

    # --- in this run --------------------------------------------------------------------------

    async def done(self, entry: Entry, job_id: str | None, result: GenerationResult) -> BatchItem:
        """The job succeeded: download its images (when asked), record it, hand it over."""
        files: tuple[Path, ...] = ()
        if self._download_to is not None:
            try:
                files = await self._download(entry, result)
            except (DreamboothError, OSError) as error:
                return self.failed(entry, error, job_id=job_id)
        if self._manifest is not None:
            self._manifest.done(
                entry.key,
                job_id=job_id,
                files=[path.name for path in files],
                output=list(result.output),
                seed=result.seed if result.seed is not None else entry.request.seed,
            )
        self._tally.emit("done", entry, job_id=job_id)
        return BatchItem(
            index=entry.index,
            request=entry.request,
            result=result,
            key=entry.key,
            job_id=job_id,
            files=files,
        )

    async def _download(self, entry: Entry, result: GenerationResult) -> tuple[Path, ...]:
        # Into a staging folder first, then renamed to names derived from the key: a crash
        # leaves nothing half-written under a final name, and a rerun writes the same names.
        assert self._download_to is not None
        folder = self._download_to
        stem = file_stem(entry.key)
        staging = folder / ".partial" / stem
        shutil.rmtree(staging, ignore_errors=True)
        try:
            paths = await self._client.download(result, staging)
            final: list[Path] = []
            for number, path in enumerate(paths):
                target = folder / f"{stem}-{number}{path.suffix.lower()}"
                os.replace(path, target)
                final.append(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):
                staging.parent.rmdir()  # only when no other item is downloading
        return tuple(final)

    def failed(
        self,
        entry: Entry,
        error: BaseException,
        *,
        job_id: str | None = None,
        recorded: bool = False,
    ) -> BatchItem:
        """The item ends failed; ``recorded`` when the manifest already holds its state."""
        if self._manifest is not None and not recorded:
            self._manifest.failed(entry.key, error, job_id=job_id)
        self._tally.emit("failed", entry, job_id=job_id, detail=f"{type(error).__name__}: {error}")
        return BatchItem(
            index=entry.index, request=entry.request, key=entry.key, error=error, job_id=job_id
        )

    def ambiguous(self, entry: Entry, error: AmbiguousSubmission) -> BatchItem:
        """The submission may or may not have landed: reported, not sent again."""
        self._tally.emit("ambiguous", entry, detail=str(error))
        return BatchItem(
            index=entry.index,
            request=entry.request,
            key=entry.key,
            error=error,
            ambiguous=True,
            resumed=entry.plan == "ambiguous",
        )
