"""Batch fan-out: many requests under the account's queue-slot limit, resumable from a manifest.

One module per step, data flowing one way:

- :mod:`.options`: the keywords of ``client.map`` checked once into a frozen ``BatchOptions``;
- :mod:`.keys`: the stable key of a request, file-name stems;
- :mod:`.plan`: each input's key and what to do with it given the manifest;
- :mod:`.window`: the queue-slot windows, one per API key (adaptive or fixed);
- :mod:`.pacer`: requests per second and the pauses a 429 asks for;
- :mod:`.budget`: ``max_images`` and ``max_spend``;
- :mod:`.submit`: sending an item until the service accepts it;
- :mod:`.sinks`: where an item ends (download staging, manifest, the item handed over);
- :mod:`.tally`: counters and events;
- :mod:`.engine`: the state machine in its task group;
- :mod:`.run`: the consumer side, ``BatchRun`` and ``map_requests``.

This package re-exports what the rest of the library, the tests and the benchmarks import
from ``dreambooth_async._batch``.
"""

from __future__ import annotations

from .budget import images_paid
from .budget import images_paid as _images_paid  # the name dreambooth_async._cache imports
from .items import AmbiguousSubmission, BatchInput, BatchItem, ItemOutcome
from .keys import request_key
from .options import BatchOptions, MapOptions
from .run import _LIVE_TASKS, BatchRun, map_requests
from .submit import UNREACHABLE_AFTER
from .window import SlotPool, SlotWindow

__all__ = [
    "UNREACHABLE_AFTER",
    "_LIVE_TASKS",
    "AmbiguousSubmission",
    "BatchInput",
    "BatchItem",
    "BatchOptions",
    "BatchRun",
    "ItemOutcome",
    "MapOptions",
    "SlotPool",
    "SlotWindow",
    "_images_paid",
    "images_paid",
    "map_requests",
    "request_key",
]
