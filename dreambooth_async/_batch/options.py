"""A batch's options: the keywords ``client.map`` takes (:class:`MapOptions`) and the checked,
resolved set the engine runs with (:class:`BatchOptions`, built once by :func:`batch_options`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypedDict

import attrs

from .._events import EventHook
from .._fetch_timing import PollPolicy
from .._models import GenerationRequest

__all__ = ["BatchOptions", "MapOptions", "OptionsHost", "batch_options"]


class MapOptions(TypedDict, total=False):
    """The keyword options of ``client.map`` / ``client.gather`` (see :func:`map_requests`)."""

    max_concurrency: int | None
    """The adaptive ceiling (default: ``client.max_concurrency``)."""
    initial_concurrency: int
    """The adaptive window's first size (default 2). With none of ``concurrency``,
    ``max_concurrency`` and ``initial_concurrency`` given, the batch waits its turn in the
    client's own windows (``client.slot_pool``), shared with single ``submit``/``generate``
    calls and other batches; with any of them, it has windows of its own."""
    fail_fast: bool
    """On the first item that fails, cancel the rest and raise its error from the iterator.
    By default an item's error stays in its item and the batch goes on."""
    rate_limit: float | None
    """At most this many submissions per second. Default: None, no limit."""
    manifest: str | os.PathLike[str] | None
    """A JSONL file recording every item's state; a rerun with the same manifest skips done
    items, attaches to accepted ones by id and submits only the rest. Default: None."""
    keys: Callable[[int, GenerationRequest], str] | None
    """``keys(index, request) -> str`` gives each item's key (default: a hash of the
    request; repeats of an identical request are numbered ``<hash>.2``, ... when a manifest
    is used)."""
    on_event: EventHook | Iterable[EventHook] | None
    """A callable (or several) receiving a :class:`BatchEvent` per state change. Default: None."""
    download_to: str | os.PathLike[str] | None
    """Download each result's images into this folder, named ``<key>-<n>.<ext>``, before the
    item counts as done. Default: None."""
    resubmit_ambiguous: bool
    """Send again a submission that may have landed (risks paying twice). By default such
    items end as ambiguous (:class:`AmbiguousSubmission`)."""
    recover_ambiguous: float | None
    """With a client that has a :class:`WebhookReceiver`, how long to wait for the service's
    webhook call to name the job of a submission whose answer was lost (default: ten times
    the poll policy's ``max_interval``, 300 s; 0 turns it off). A named job is attached to
    and counts as submitted, so a paid-for image is not lost; otherwise the item ends
    ambiguous."""
    retry_failed: bool
    """On resume, submit again items that failed in an earlier run (jobs that exist on the
    service, say after a timeout, are attached to instead). Default: True."""
    job_timeout: float | None
    """Bound each job's wait (default: the client's poll policy)."""
    max_rate_limited: int
    """How many times an item turned away by a rate limit that is not "queue full" (spam
    filter, 429) is retried before it fails. Default: 20."""
    buffer: int
    """Finished items held for a slow consumer; extra task permits. Default: 16."""
    cancel_grace: float
    """Seconds a cancelled batch waits for submissions already sent. Default: 10."""
    durable: bool
    """Fsync the manifest where it matters (turn off only for throwaway runs). Default: True."""
    on_finish: Callable[[], None] | None
    """Called once in the event loop when the batch has stopped, however it ended
    (``client.map(progress=True)`` closes its progress display with it). Default: None."""
    max_images: int | None
    """A budget: submit no more once this many images (``samples`` count) are paid for or in
    flight; with a manifest, images done in earlier runs count too. Items past it are not
    sent, end quietly (no error) and stay pending in the manifest (``run.stats["unsent"]``
    counts them), so a rerun with a larger budget continues. A sized input (a list) is read
    to its end, so done items are still reported; a stream is read no further. Default: None."""
    max_spend: float | None
    """A budget in the wallet's currency for this run's own spending: its accepted images
    times the price of one image (``price_per_image``, or measured from the wallet, see
    ``run.spend``). No submission is sent that would take it past the budget; the rest stays
    pending, as with ``max_images``. Other clients paying from the same wallet (shards on one
    key) do not count. Without a given price, the wallets are read when the batch starts (it
    raises if none can be read); until the price is measured (on the first accepted
    submission) one submission goes at a time. Default: None."""
    price_per_image: float | None
    """The price of one image, when known (the service does not say it): the run's spend is
    then its accepted images times this, and no wallet is read for it. Default: None."""
    track_spend: bool
    """Count the run's spend (``run.spend``) without a budget, measuring the price per image
    from the wallet when it is not given. ``max_spend`` and ``price_per_image`` turn it on
    too. Default: False."""


@attrs.frozen(kw_only=True)
class BatchOptions:
    """One batch's options, checked and with the defaults filled in (see :func:`map_requests`
    for what each means): the keywords of :class:`MapOptions`, resolved. The defaults are
    these fields'; the client's own (``max_concurrency``, ``recover_ambiguous``) are filled
    in by :func:`batch_options`."""

    #: A fixed number of slots per key; None: adaptive, up to ``max_concurrency``.
    concurrency: int | None = None
    max_concurrency: int
    initial_concurrency: int = 2
    #: The batch waits its turn in the client's slot windows (shared with single calls and
    #: other batches) rather than in windows of its own: no concurrency option was given.
    shared_window: bool = False
    fail_fast: bool = False
    rate_limit: float | None = None
    manifest: str | os.PathLike[str] | None = None
    keys: Callable[[int, GenerationRequest], str] | None = None
    on_event: tuple[EventHook, ...] = ()
    #: Resolved when the batch is created, so that a later ``chdir`` does not move it.
    download_to: Path | None = None
    resubmit_ambiguous: bool = False
    #: Seconds to wait for a webhook to name a lost submission's job (0: never).
    recover_ambiguous: float
    retry_failed: bool = True
    job_timeout: float | None = None
    max_rate_limited: int = 20
    buffer: int = 16
    cancel_grace: float = 10.0
    durable: bool = True
    on_finish: Callable[[], None] | None = None
    max_images: int | None = None
    max_spend: float | None = None
    price_per_image: float | None = None
    track_spend: bool = False


class OptionsHost(Protocol):
    """The client's defaults a batch's options fall back on. Implemented by the client."""

    @property
    def max_concurrency(self) -> int: ...
    @property
    def poll_policy(self) -> PollPolicy: ...


def batch_options(
    client: OptionsHost, concurrency: int | None, options: MapOptions
) -> BatchOptions:
    """Check ``map_requests``'s keywords and fill in the defaults, the client's included
    (raises ValueError naming the option)."""
    if concurrency is not None and concurrency < 1:
        raise ValueError("concurrency must be at least 1, or None to adapt")
    fields: dict[str, Any] = {**options, "concurrency": concurrency}
    fields["shared_window"] = (
        concurrency is None
        and options.get("max_concurrency") is None
        and options.get("initial_concurrency") is None
    )
    if fields.get("initial_concurrency") is None:
        fields.pop("initial_concurrency", None)
    if fields.get("max_concurrency") is None:
        fields["max_concurrency"] = client.max_concurrency
    if fields.get("recover_ambiguous") is None:
        # A job's webhook comes when it finishes: allow ten of the poller's longest waits.
        fields["recover_ambiguous"] = 10 * client.poll_policy.max_interval
    on_event = fields.pop("on_event", None)
    if on_event is not None:
        fields["on_event"] = (on_event,) if callable(on_event) else tuple(on_event)
    if fields.get("download_to") is not None:
        fields["download_to"] = Path(fields["download_to"]).resolve()
    resolved = BatchOptions(**fields)
    if resolved.max_concurrency < 1:
        raise ValueError("max_concurrency must be at least 1")
    if resolved.initial_concurrency < 1:
        raise ValueError("initial_concurrency must be at least 1")
    max_images = resolved.max_images
    if max_images is not None and (isinstance(max_images, bool) or max_images < 0):
        raise ValueError("max_images must be a number of images (0 or more), or None")
    max_spend = resolved.max_spend
    if max_spend is not None and (
        isinstance(max_spend, bool) or not isinstance(max_spend, int | float) or not max_spend > 0
    ):
        raise ValueError("max_spend must be an amount above 0, or None")
    price = resolved.price_per_image
    if price is not None and (
        isinstance(price, bool)
        or not isinstance(price, int | float)
        or not 0 <= price < float("inf")
    ):
        raise ValueError("price_per_image must be an amount of 0 or more, or None")
    return attrs.evolve(resolved, buffer=max(0, resolved.buffer))
