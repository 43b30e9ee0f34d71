"""A stateful local emulator of the Dreambooth image-generation API.

It speaks the wire contract of ``PROTOCOL.md``, quirks included: errors inside HTTP 200 bodies
(or 4xx codes with ``http_errors=True``), ``messege`` on legacy endpoints, numbers sent as
strings, a per-key queue limit, the identical-request spam filter, processing answers with
``eta``/``fetch_result``/``future_links``, webhooks, cold models, real PNG/JPG files. It imports
nothing from the client package: it is a model of the service, not of the client.

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
  not a failed request. A fetch on the v3 path answers success with ``status``, ``id`` and
  ``output`` only (the v3 docs' example); v4 and v6 fetches answer the full success body.
- ``future_links`` answer 404 until the job has succeeded (and, under the output-404 fault, for a
  while after).
- Under ``http_errors``: invalid key 401; field errors, unknown model, unknown request id 400;
  queue limit and spam filter 429 with ``Retry-After``.
- The spam filter compares the whole JSON body (key included) of *accepted* submissions to the
  same endpoint kind; rejected requests never start or extend its window.
- ``enhance_prompt`` (on by default, as documented) appends a fixed style suffix to
  ``meta.prompt`` and fills an empty negative prompt; the picture depends on the prompt as sent.
- Init and mask images are read from loopback URLs only (the emulator's own ``/samples/`` and
  ``/generations/`` files are read without a request), or from base64 data on v4/v6 with
  ``base64: "yes"``. Webhooks are called on loopback URLs only; anything else is a field error.
- Inpainting keeps every pixel where the mask is below 128 exactly as in the init image (resized
  to the output size with LANCZOS when sizes differ); the rest is the init blended with the
  drawing by ``strength``. img2img blends the whole picture by ``strength``.

Faults are described on ``FaultConfig``: request-level kinds hit submissions and fetches only,
job-level kinds are drawn once per accepted job, all from streams seeded with ``FaultConfig.seed``.
Admin routes (no key): ``GET /_emulator/stats``, ``GET /_emulator/jobs/{id}``. Samples:
``/samples/inpaint-photo.png``, ``/samples/inpaint-mask.png``, ``/samples/init.png`` (512x512).
"""

from ._app import build_app
from ._cli import build_arg_parser, config_from_args, run
from ._config import DEFAULT_KEY, CostModel, EmulatorConfig, FaultConfig
from ._emulator import Emulator, serve
from ._jobs import Job
from ._stats import EmulatorStats

__all__ = [
    "DEFAULT_KEY",
    "CostModel",
    "Emulator",
    "EmulatorConfig",
    "EmulatorStats",
    "FaultConfig",
    "Job",
    "build_app",
    "build_arg_parser",
    "config_from_args",
    "run",
    "serve",
]
