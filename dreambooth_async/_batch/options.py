"""A batch's options: the keywords ``client.map`` takes (:class:`MapOptions`) and the checked,
resolved set the engine runs with (:class:`BatchOptions`, built once by :func:`batch_options`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import attrs

from .._events import EventHook
from .._models import GenerationRequest

if TYPE_CHECKING:
    from .._client import DreamboothClient

__all__ = ["BatchOptions", "MapOptions", "batch_options"]


class MapOptions(TypedDict, total=False):
    """The keyword options of ``client.map`` / ``client.gather`` (see :func:`map_requests`)."""

    max_concurrency: int | None
    initial_concurrency: int
    fail_fast: bool
    rate_limit: float | None
    manifest: str | os.PathLike[str] | None
    keys: Callable[[int, GenerationRequest], str] | None
    on_event: EventHook | Iterable[EventHook] | None
    download_to: str | os.PathLike[str] | None
    resubmit_ambiguous: bool
    recover_ambiguous: float | None
    retry_failed: bool
    job_timeout: float | None
    max_rate_limited: int
    buffer: int
    cancel_grace: float
    durable: bool
    on_finish: Callable[[], None] | None
    max_images: int | None
    max_spend: float | None
    price_per_image: float | None
    track_spend: bool


@attrs.frozen(kw_only=True)
class BatchOptions:
    """One batch's options, checked and with the client's defaults filled in (see
    :func:`map_requests` for what each means)."""

    #: A fixed number of slots per key; None: adaptive, up to ``max_concurrency``.
    concurrency: int | None
    max_concurrency: int
    initial_concurrency: int
    fail_fast: bool
    rate_limit: float | None
    manifest: str | os.PathLike[str] | None
    keys: Callable[[int, GenerationRequest], str] | None
    on_event: tuple[EventHook, ...]
    #: Resolved when the batch is created, so that a later ``chdir`` does not move it.
    download_to: Path | None
    resubmit_ambiguous: bool
    #: Seconds to wait for a webhook to name a lost submission's job (0: never).
    recover_ambiguous: float
    retry_failed: bool
    job_timeout: float | None
    max_rate_limited: int
    buffer: int
    cancel_grace: float
    durable: bool
    on_finish: Callable[[], None] | None
    max_images: int | None
    max_spend: float | None
    price_per_image: float | None
    track_spend: bool


def batch_options(
    client: DreamboothClient,
    *,
    concurrency: int | None,
    max_concurrency: int | None,
    initial_concurrency: int,
    fail_fast: bool,
    rate_limit: float | None,
    manifest: str | os.PathLike[str] | None,
    keys: Callable[[int, GenerationRequest], str] | None,
    on_event: EventHook | Iterable[EventHook] | None,
    download_to: str | os.PathLike[str] | None,
    resubmit_ambiguous: bool,
    recover_ambiguous: float | None,
    retry_failed: bool,
    job_timeout: float | None,
    max_rate_limited: int,
    buffer: int,
    cancel_grace: float,
    durable: bool,
    on_finish: Callable[[], None] | None,
    max_images: int | None,
    max_spend: float | None,
    price_per_image: float | None = None,
    track_spend: bool = False,
) -> BatchOptions:
    """Check ``map_requests``'s keywords and fill in the client's defaults (raises ValueError
    naming the option)."""
    if concurrency is not None and concurrency < 1:
        raise ValueError("concurrency must be at least 1, or None to adapt")
    ceiling = max_concurrency if max_concurrency is not None else client.max_concurrency
    if ceiling < 1:
        raise ValueError("max_concurrency must be at least 1")
    if initial_concurrency < 1:
        raise ValueError("initial_concurrency must be at least 1")
    if max_images is not None and (isinstance(max_images, bool) or max_images < 0):
        raise ValueError("max_images must be a number of images (0 or more), or None")
    if max_spend is not None and (
        isinstance(max_spend, bool) or not isinstance(max_spend, int | float) or not max_spend > 0
    ):
        raise ValueError("max_spend must be an amount above 0, or None")
    if price_per_image is not None and (
        isinstance(price_per_image, bool)
        or not isinstance(price_per_image, int | float)
        or not 0 <= price_per_image < float("inf")
    ):
        raise ValueError("price_per_image must be an amount of 0 or more, or None")
    hooks: tuple[EventHook, ...]
    if on_event is None:
        hooks = ()
    elif callable(on_event):
        hooks = (on_event,)
    else:
        hooks = tuple(on_event)
    return BatchOptions(
        concurrency=concurrency,
        max_concurrency=ceiling,
        initial_concurrency=initial_concurrency,
        fail_fast=fail_fast,
        rate_limit=rate_limit,
        manifest=manifest,
        keys=keys,
        on_event=hooks,
        download_to=Path(download_to).resolve() if download_to is not None else None,
        resubmit_ambiguous=resubmit_ambiguous,
        # A job's webhook comes when it finishes: allow ten of the poller's longest waits.
        recover_ambiguous=(
            recover_ambiguous
            if recover_ambiguous is not None
            else 10 * client.poll_policy.max_interval
        ),
        retry_failed=retry_failed,
        job_timeout=job_timeout,
        max_rate_limited=max_rate_limited,
        buffer=max(0, buffer),
        cancel_grace=cancel_grace,
        durable=durable,
        on_finish=on_finish,
        max_images=max_images,
        max_spend=max_spend,
        price_per_image=price_per_image,
        track_spend=track_spend,
    )
