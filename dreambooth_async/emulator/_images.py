"""Pictures: the samples the emulator serves, and the deterministic "generations".

A generation is a function of (seed, prompt, model_id, sample index, size, format, init and mask
images, strength) only, so it is drawn lazily when its file is first downloaded and cached: that
is indistinguishable from drawing it when the job finishes, and costs nothing for the many jobs
whose files nobody downloads. Encoders are called without metadata, so equal inputs give
byte-identical files.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

import attrs
from PIL import Image, ImageDraw

SAMPLE_SIZE = 512
# Pillow's own guard is far above anything the service accepts; refuse pictures this large so a
# bad upload cannot make the emulator allocate gigabytes.
MAX_INPUT_PIXELS = 4096 * 4096

RGB = tuple[int, int, int]


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "png":
        # Level 1: the pictures are smooth and compress well anyway; encoding time matters more.
        image.save(buffer, format="PNG", compress_level=1)
    else:
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _gradient(size: tuple[int, int], top: RGB, bottom: RGB) -> Image.Image:
    ramp = Image.linear_gradient("L").resize(size)
    return Image.composite(Image.new("RGB", size, bottom), Image.new("RGB", size, top), ramp)


# -- samples --------------------------------------------------------------------------------


def _bench_box(size: int) -> tuple[int, int, int, int]:
    return (size * 5 // 16, size * 9 // 16, size * 11 // 16, size * 13 // 16)


def _photo(size: int = SAMPLE_SIZE) -> Image.Image:
    """A park scene: sky, sun, lawn, trees and a bench where the mask will be."""
    image = _gradient((size, size), (96, 150, 220), (200, 225, 245))
    lawn = _gradient((size, size // 2), (70, 140, 60), (30, 90, 30))
    image.paste(lawn, (0, size // 2))
    draw = ImageDraw.Draw(image)
    draw.ellipse(
        (size * 3 // 4, size // 12, size * 7 // 8, size // 12 + size // 8), (250, 230, 120)
    )
    for x in (size // 10, size * 8 // 10):
        draw.rectangle((x + 18, size * 5 // 16, x + 30, size * 9 // 16), (90, 60, 30))
        draw.ellipse((x - 20, size // 6, x + 68, size * 3 // 8), (40, 110, 40))
    left, top, right, bottom = _bench_box(size)
    draw.rectangle((left, top + 30, right, top + 50), (120, 80, 40))
    draw.rectangle((left, top, right, top + 14), (120, 80, 40))
    for x in (left + 10, right - 20):
        draw.rectangle((x, top + 50, x + 10, bottom - 20), (60, 60, 60))
    return image


def _mask(size: int = SAMPLE_SIZE) -> Image.Image:
    """White over the bench (what inpainting replaces), black elsewhere (what it must keep)."""
    image = Image.new("L", (size, size), 0)
    left, top, right, bottom = _bench_box(size)
    ImageDraw.Draw(image).rounded_rectangle((left - 16, top - 16, right + 16, bottom), 24, 255)
    return image


def _init(size: int = SAMPLE_SIZE) -> Image.Image:
    """A seaside for img2img: sea, beach, a sailboat."""
    image = _gradient((size, size), (250, 180, 120), (120, 170, 230))
    sea = _gradient((size, size // 3), (40, 90, 160), (20, 60, 120))
    image.paste(sea, (0, size // 2))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, size * 5 // 6, size, size), (230, 210, 160))
    draw.polygon(
        [(size // 2, size // 5), (size // 2, size // 2 - 20), (size * 2 // 3, size // 2 - 20)],
        (245, 245, 245),
    )
    draw.rectangle((size * 2 // 5, size // 2 - 20, size * 7 // 10, size // 2), (120, 60, 40))
    return image


SAMPLES: dict[str, Callable[[], Image.Image]] = {
    "inpaint-photo.png": _photo,
    "inpaint-mask.png": _mask,
    "init.png": _init,
}


# -- generations ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RenderSpec:
    seed: int
    prompt: str
    model_id: str
    index: int
    width: int
    height: int
    fmt: str
    strength: float = 1.0
    init: bytes | None = attrs.field(default=None, repr=False)
    mask: bytes | None = attrs.field(default=None, repr=False)


def _palette_colour(rng: random.Random) -> RGB:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _imagine(spec: RenderSpec) -> Image.Image:
    digest = hashlib.sha256(
        f"{spec.model_id}\0{spec.prompt}\0{spec.seed}\0{spec.index}".encode()
    ).digest()
    rng = random.Random(digest)
    size = (spec.width, spec.height)
    image = _gradient(size, _palette_colour(rng), _palette_colour(rng))
    draw = ImageDraw.Draw(image)
    w, h = size
    for _ in range(rng.randint(4, 9)):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = (
            x0 + rng.randint(w // 10 + 1, w // 2 + 2),
            y0 + rng.randint(h // 10 + 1, h // 2 + 2),
        )
        colour = _palette_colour(rng)
        shape = rng.randrange(3)
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), colour)
        else:
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], colour)
    return image


def _open_rgb(data: bytes, size: tuple[int, int]) -> Image.Image:
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    # Same-size pictures are left untouched, so unmasked pixels stay exactly equal to the input.
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def render(spec: RenderSpec) -> bytes:
    """Encoded bytes of one output file. CPU-bound: call it in a thread."""
    size = (spec.width, spec.height)
    picture = _imagine(spec)
    if spec.init is not None:
        init = _open_rgb(spec.init, size)
        painted = Image.blend(init, picture, spec.strength)
        if spec.mask is not None:
            with Image.open(io.BytesIO(spec.mask)) as opened:
                mask = opened.convert("L")
            if mask.size != size:
                mask = mask.resize(size, Image.Resampling.NEAREST)
            # A hard mask: grey anti-aliased edges count as kept or replaced, never half blended,
            # so "black means unchanged" holds exactly.
            mask = mask.point([0] * 128 + [255] * 128)
            picture = Image.composite(painted, init, mask)
        else:
            picture = painted
    return _encode(picture, spec.fmt)


def check_input_image(data: bytes) -> str | None:
    """None if the bytes are a picture the emulator can use, else why not."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return "is not a readable PNG, JPEG or WebP image"
    if width * height > MAX_INPUT_PIXELS:
        return "is too large"
    return None


class ImageStore:
    """Input pictures by digest (many jobs share one init image), and an LRU of rendered files.

    Concurrent first downloads of one file share one render.
    """

    def __init__(self, *, cache_bytes: int = 64 * 1024 * 1024) -> None:
        self._blobs: dict[str, bytes] = {}
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached = 0
        self._inflight: dict[str, asyncio.Task[bytes]] = {}
        self._samples: dict[str, bytes] = {}

    def put_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self._blobs.setdefault(digest, data)
        return digest

    def blob(self, digest: str | None) -> bytes | None:
        return None if digest is None else self._blobs[digest]

    def sample(self, name: str) -> bytes | None:
        """The encoded sample, or None for an unknown name. Drawn once, on first use."""
        if name not in SAMPLES:
            return None
        if name not in self._samples:
            self._samples[name] = _encode(SAMPLES[name](), "png")
        return self._samples[name]

    async def get(self, name: str, make: Callable[[], Coroutine[Any, Any, bytes]]) -> bytes:
        cached = self._cache.get(name)
        if cached is not None:
            self._cache.move_to_end(name)
            return cached
        task = self._inflight.get(name)
        if task is None:
            # A task of its own, shielded from its first requester: if that client hangs up,
            # the others waiting for the same file still get it.
            task = asyncio.create_task(make())
            self._inflight[name] = task
            task.add_done_callback(lambda done: self._settle(name, done))
        return await asyncio.shield(task)

    def _settle(self, name: str, task: asyncio.Task[bytes]) -> None:
        del self._inflight[name]
        # exception() also marks a failure as retrieved when nobody waits for it any more.
        if not task.cancelled() and task.exception() is None:
            self._remember(name, task.result())

    async def aclose(self) -> None:
        pending = list(self._inflight.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _remember(self, name: str, data: bytes) -> None:
        self._cache[name] = data
        self._cached += len(data)
        while self._cached > self._cache_bytes and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached -= len(dropped)
