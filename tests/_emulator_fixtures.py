"""Helpers for the emulator's tests: real HTTP to a real emulator, nothing mocked."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image

from dreambooth_async.emulator import DEFAULT_KEY, CostModel, EmulatorConfig

KEY = DEFAULT_KEY

#: The poller's tests run the emulator 100 times faster than real time.
POLL_SCALE = 0.01
#: Jobs of about 10 service seconds (0.1 s real), no noise, answered "processing" at first.
POLL_COST = CostModel(base=10.0, per_step=0.0, per_sample=0.0, per_megapixel=0.0, noise=0.0)


def poller_config(**overrides: object) -> EmulatorConfig:
    """An emulator for the poller's tests: scaled, roomy, every job queued first."""
    settings: dict[str, object] = {
        "time_scale": POLL_SCALE,
        "cost": POLL_COST,
        "workers": 4,
        "queue_limit": 50,
        "sync_window": 0.0,
        "spam_filter": False,
    }
    settings.update(overrides)
    return EmulatorConfig(**settings)  # type: ignore[arg-type]


# The seed page's example (dreambooth-inpaint-endpoint.txt), as printed there.
SEED_REQUEST: dict[str, Any] = {
    "key": "",
    "model_id": "your_model_id",
    "prompt": "a cat sitting on a bench",
    "negative_prompt": None,
    "init_image": "https://raw.githubusercontent.com/CompVis/stable-diffusion/main/data/"
    "inpainting_examples/overture-creations-5sI6fQgYIuo.png",
    "mask_image": "https://raw.githubusercontent.com/CompVis/stable-diffusion/main/data/"
    "inpainting_examples/overture-creations-5sI6fQgYIuo_mask.png",
    "width": "512",
    "height": "512",
    "samples": "1",
    "steps": "30",
    "safety_checker": "no",
    "enhance_prompt": "yes",
    "guidance_scale": 7.5,
    "strength": 0.7,
    "scheduler": "UniPCMultistepScheduler",
    "seed": None,
    "webhook": None,
    "track_id": None,
}

SEED_RESPONSE: dict[str, Any] = {
    "status": "success",
    "generationTime": 11.958809614181519,
    "id": 12382960,
    "output": [
        "https://pub-8b49af329fae499aa563997f5d4068a4.r2.dev/generations/"
        "b792ad2b-4488-435d-9264-7d2f4dcb8433-0.png"
    ],
    "meta": {
        "H": 512,
        "W": 512,
        "file_prefix": "b792ad2b-4488-435d-9264-7d2f4dcb8433",
        "full_url": "no",
        "guidance_scale": 7.5,
        "init_image": SEED_REQUEST["init_image"],
        "mask_image": SEED_REQUEST["mask_image"],
        "model_id": "redshift-diffusion",
        "n_samples": 1,
        "negative_prompt": " ((out of frame)), ((extra fingers)), mutated hands, ...",
        "outdir": "out",
        "prompt": "redshift style a cat sitting on a bench DSLR photography, ...",
        "safetychecker": "no",
        "scheduler": "UniPCMultistepScheduler",
        "seed": 4156422202,
        "steps": 50,
        "upscale": "no",
    },
}

PROCESSING_KEYS = {
    "status",
    "tip",
    "eta",
    "messege",
    "webhook_status",
    "fetch_result",
    "id",
    "output",
    "meta",
    "future_links",
}


def text2img(prompt: str = "a cat on a bench", **fields: Any) -> dict[str, Any]:
    """A valid text2img body, numbers as strings the way the docs send them."""
    body: dict[str, Any] = {
        "key": KEY,
        "model_id": "midjourney",
        "prompt": prompt,
        "width": "512",
        "height": "512",
        "samples": "1",
        "num_inference_steps": "30",
        "seed": 7,
    }
    body.update(fields)
    return body


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any, dict[str, str]]:
    """Status, decoded JSON body and headers of one POST."""
    async with http.post(url, json=body) as resp:
        payload = await resp.json(content_type=None)
        return resp.status, payload, dict(resp.headers)


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with http.get(url) as resp:
        return resp.status, await resp.read()


def picture(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


async def wait_for(event: asyncio.Event) -> None:
    # The timeout only turns a hang into a failure; the wait itself ends on the event.
    await asyncio.wait_for(event.wait(), timeout=10)


@dataclass
class Receiver:
    url: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    arrived_at: list[float] = field(default_factory=list)  # time.monotonic() of each call
    done: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def webhook_receiver(
    is_done: Callable[[list[dict[str, Any]]], bool],
) -> AsyncIterator[Receiver]:
    """A small server on 127.0.0.1 collecting webhook calls; ``done`` is set once
    ``is_done(calls)`` is true."""
    receiver = Receiver(url="")

    async def hook(request: web.Request) -> web.Response:
        receiver.calls.append(await request.json())
        receiver.arrived_at.append(time.monotonic())
        if is_done(receiver.calls):
            receiver.done.set()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield receiver
    finally:
        await runner.cleanup()
