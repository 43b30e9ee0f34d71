"""A stateful local emulator of the Dreambooth image-generation API.

It speaks the wire contract of ``docs/protocol.md``, quirks included: errors inside HTTP 200 bodies
(or 4xx codes with ``http_errors=True``), ``messege`` on legacy endpoints, numbers sent as
strings, a per-key queue limit, the identical-request spam filter, processing answers with
``eta``/``fetch_result``/``future_links``, webhooks, cold models, real PNG/JPG files. It imports
nothing from the client package: it is a model of the service, not of the client.

The service as ModelsLab's current docs show it (``ModelsLab/docs-v2``, the official CLI):

- Versions: v3 and v4 (``/api/v3/dreambooth...``, ``/api/v4/dreambooth...``, the seed pages),
  v6 (``/api/v6/images/{text2img,img2img,inpaint}``, fetch at ``/api/v6/images/fetch`` with
  ``request_id`` or at ``/api/v6/images/fetch/{id}``) and v7
  (``/api/v7/images/{text-to-image,image-to-image,inpaint}``, fetch at
  ``/api/v7/images/fetch/{id}``). v7 reads ``num_inference_steps`` on every endpoint and takes
  the key from a ``key`` HTTP header when the JSON body has none (an empty body is ``{}``).
  ``fetch_result`` points at v3's fetch path for v3 and v4, at the version's own for v6 and v7.
- Fetch, while a job runs, answers the docs' id-less form ``{"status": "processing", "messege":
  "try again later.", "output": "", "tip": ...}`` with probability ``idless_processing_rate``
  (seeded), else the full processing answer (``id``, ``eta``, ``meta``, ``future_links``...).
- ``meta``: every processing answer, every submission answer, and v6/v7 fetch successes carry
  it; v3 and v4 fetch successes are ``{status, id, output}`` only (the seed pages' form), so a
  client must keep the processing answer's meta. Webhooks carry it.
- ``"base64": "yes"`` (v4, v6, v7; v3 takes URLs only) makes a finished job's ``output`` base64
  in the style ``base64_output``: ``data:image/png;base64,...`` data URLs, bare base64, or
  links ``<file>.base64`` whose body is the base64 text of the file. Submission answers,
  fetches and webhooks alike; the bytes are those of the job's image files, which stay at
  their usual ``/generations/`` links (``/_emulator/jobs/{id}`` lists them).
- Money: each key starts with ``key_wallets.get(key, wallet)`` (None: unlimited); an accepted
  job draws ``samples * price_per_image`` at acceptance (no refund if it fails: unconfirmed). A
  submission the balance cannot pay: ``{"status": "error", "message": "Insufficient credits.
  Please add more credits to continue."}``, HTTP 402 under ``http_errors``. A model in
  ``premium_models``: ``{"status": "error", "message": "This feature requires a premium
  subscription"}``, HTTP 403 under ``http_errors``. Both are checked after the key (401) and the
  fields (400); 403 before the model lookup, 402 before the spam filter and the queue limit.
- Queue slots: ``key_queue_limits.get(key, queue_limit)`` per key, each key its own slots. A
  "queue full" answer's ``retry_after`` is the wait until one of the key's slots frees, or the
  constant ``queue_full_retry_after`` (service seconds) when set: a hint, not a promise.
- ``POST /api/wallet_balance`` (key in the body): ``{"status": "success", "data": {"balance":
  <live balance>, "currency": "USD"}}``; for an unlimited wallet 1000000.0 less what the key
  spent (it is never refused), so the price of an image shows in the balance.
- ``GET`` and ``POST /api/v6/processing/request_count`` (key in the JSON body, or ``?key=`` on
  GET): ``{"status": "success", "processing_count": N, "message": "Current processing request
  count retrieved successfully"}``, N the key's jobs queued or processing now. The page shows no
  answer; this is the general API OpenAPI file's ``ProcessingRequestCountResponse`` schema
  (shape from the schema only, no example: unconfirmed). Throttled to 30 calls per 60 service
  seconds per key; past that ``{"status": "error", "message": "Too many requests, rate limit
  exceeded", "retry_after": s}`` (HTTP 429 with ``Retry-After`` under ``http_errors``).
  Throttled calls do not count towards the 30.
- Records: ``EmulatorStats.per_key`` (by position in ``keys``, never the key text) and
  ``accepted_by_request`` (accepted submissions per ``EmulatorStats.canonical_digest`` of the
  body: sha256 of it without ``key``, ``webhook``, ``track_id``, as sorted JSON). Per job
  (``Emulator.jobs``, ``/_emulator/jobs/{id}``): ``webhook_posted_at`` (when each webhook
  delivery was posted) and ``fetched_at`` (when each fetch of it by its own key was answered),
  so a test can tell what resolved a job.

Running it::

    python -m dreambooth_async.emulator --port 7860 --time-scale 0.01

    async with serve(EmulatorConfig(time_scale=0.01)) as base_url: ...
    async with Emulator(config) as emu: emu.base_url, emu.stats, emu.jobs, emu.finished_at(id)

Time. Configuration durations (cost model, ``cold_start``, ``spam_window``, ``sync_window``,
fault delays) are *service seconds*; ``time_scale`` real seconds pass per service second. Every
duration the emulator *reports* (``eta``, ``generationTime``, ``retry_after``, the
``Retry-After`` header, ``queue_time``, the seconds in the spam tip) is in **real seconds**,
already scaled, so a client needs no knowledge of the scale. ``Retry-After`` carries decimals
when the wait is under a second. Job times in ``Emulator.jobs`` and ``/_emulator/jobs/{id}`` are
``time.monotonic()`` values.

Choices where the service's behaviour is unconfirmed:

- Fetching an unknown id, or another key's id: ``{"status": "error", "message": "Request not
  found"}`` (HTTP 400 under ``http_errors``).
- A failed job answers ``{"status": "failed", ...}`` with HTTP 200 in both modes: it is a result,
  not a failed request. A fetch on the v3 or v4 paths answers success with ``status``, ``id``
  and ``output`` only (the v3 docs' example); v6 and v7 fetches answer the full success body.
- v7 answers have v6's shape (``message`` spelled right, ``proxy_links`` & co.); v7 runs the
  steps it is asked (v6 caps them at 20).
- ``future_links`` answer 404 until the job has succeeded (and, under the output-404 fault, for a
  while after).
- Under ``http_errors``: invalid key 401; field errors, unknown model, unknown request id 400;
  queue limit and spam filter 429 with ``Retry-After``.
- The spam filter compares the whole JSON body (key included) of *accepted* submissions to the
  same endpoint kind; rejected requests never start or extend its window.
- ``enhance_prompt`` (on by default, as documented) appends a fixed style suffix to
  ``meta.prompt`` and fills an empty negative prompt; the picture depends on the prompt as sent.
- Init and mask images are read from loopback URLs (the emulator's own ``/samples/`` and
  ``/generations/`` files are read without a request), or from base64 data on v4/v6 with
  ``base64: "yes"``. The emulator works offline: an init or mask image on any other http(s)
  URL (``https://example.com/photo.png`` in an example) is not fetched; the sample
  ``inpaint-photo.png`` or ``inpaint-mask.png`` stands in for it, and a warning on the
  ``dreambooth_async.emulator`` logger says so (once per URL). Webhooks are called on loopback
  URLs only; anything else is a field error.
- Inpainting keeps every pixel where the mask is below 128 exactly as in the init image (resized
  to the output size with LANCZOS when sizes differ); the rest is the init blended with the
  drawing by ``strength``. img2img blends the whole picture by ``strength``.

Faults are described on ``FaultConfig``: request-level kinds hit submissions and fetches only,
job-level kinds are drawn once per accepted job, all from streams seeded with ``FaultConfig.seed``.
Admin routes (no key): ``GET /_emulator/stats`` (``EmulatorStats.to_json``: with ``per_key``
and ``accepted_by_request``), ``GET /_emulator/jobs/{id}``. Samples:
``/samples/inpaint-photo.png``, ``/samples/inpaint-mask.png``, ``/samples/init.png`` (512x512).
"""

from ._app import build_app
from ._cli import build_arg_parser, config_from_args, run
from ._config import DEFAULT_KEY, CostModel, EmulatorConfig, FaultConfig
from ._emulator import Emulator, serve
from ._jobs import Job
from ._stats import EmulatorStats, KeyCounts

__all__ = [
    "DEFAULT_KEY",
    "CostModel",
    "Emulator",
    "EmulatorConfig",
    "EmulatorStats",
    "FaultConfig",
    "Job",
    "KeyCounts",
    "build_app",
    "build_arg_parser",
    "config_from_args",
    "run",
    "serve",
]
