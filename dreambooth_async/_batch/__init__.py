"""Batch fan-out: many requests under the account's queue-slot limit, resumable from a manifest.

One module per step, data flowing one way:

- :mod:`.options`: the keywords of ``client.map`` checked once into a frozen ``BatchOptions``;
- :mod:`.host`: what a batch needs of the client (:class:`~.host.BatchHost`, a protocol the
  client implements: no module of the batch imports the client);
- :mod:`.item_keys`: the stable key of an item's request, file-name stems (API keys are
  ``_keys``'s);
- :mod:`.plan`: each input's key and what to do with it given the manifest;
- :mod:`.dry_run`: what a run would cost (``--dry-run``), keyed by the same planner;
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
from .dry_run import RunPlan, plan_run
from .host import BatchHost
from .item_keys import request_key
from .items import AmbiguousSubmission, BatchInput, BatchItem, ItemOutcome
from .options import BatchOptions, MapOptions
from .run import _LIVE_TASKS, BatchRun, map_requests
from .submit import UNREACHABLE_AFTER
from .window import SlotPool, SlotWindow

__all__ = [
    "UNREACHABLE_AFTER",
    "_LIVE_TASKS",
    "AmbiguousSubmission",
    "BatchHost",
    "BatchInput",
    "BatchItem",
    "BatchOptions",
    "BatchRun",
    "ItemOutcome",
    "MapOptions",
    "RunPlan",
    "SlotPool",
    "SlotWindow",
    "images_paid",
    "map_requests",
    "plan_run",
    "request_key",
]
