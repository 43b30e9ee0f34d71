"""Validation of request bodies, the way the service's (Laravel-style) validator answers.

Numbers are accepted as JSON numbers and as strings (``"512"``), because the documented examples
send strings and most clients send numbers. Field errors come back as an object of lists, like
``{"prompt": ["The prompt field is required."]}``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import attrs
import yarl

Kind = Literal["text2img", "img2img", "inpaint"]
Version = Literal["v3", "v4", "v6", "v7"]

SCHEDULERS: frozenset[str] = frozenset(
    {
        "DDPMScheduler",
        "DDIMScheduler",
        "PNDMScheduler",
        "LMSDiscreteScheduler",
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "HeunDiscreteScheduler",
        "KDPM2DiscreteScheduler",
        "DPMSolverSinglestepScheduler",
        "KDPM2AncestralDiscreteScheduler",
        "UniPCMultistepScheduler",
        "DDIMInverseScheduler",
        "DEISMultistepScheduler",
        "IPNDMScheduler",
        "KarrasVeScheduler",
        "ScoreSdeVeScheduler",
        "LCMScheduler",
    }
)

MAX_SIDE = 1024
MAX_SAMPLES = 4
MAX_STEPS = 50
# v6 runs at most this many steps whatever was asked, and says so only in meta.steps.
V6_STEP_CAP = 20
DEFAULT_STEPS = 30
DEFAULT_SCHEDULER = "UniPCMultistepScheduler"

FieldErrors = dict[str, list[str]]
_N = TypeVar("_N", int, float)


@attrs.frozen(kw_only=True)
class GenerationParams:
    """A validated generation request, in Python types."""

    kind: Kind
    version: Version
    model_id: str
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    samples: int
    steps: int  # what runs (after the v6 cap)
    guidance_scale: float
    strength: float
    scheduler: str
    seed: int | None  # as requested; None asks for a random one
    safety_checker: str
    enhance_prompt: bool
    upscale: str
    init_image: str | None
    mask_image: str | None
    base64: bool
    webhook: str | None
    track_id: Any


def _label(field: str) -> str:
    return field.replace("_", " ")


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


class _Reader:
    """Reads fields of one body, collecting every field error instead of stopping at the first."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body
        self.errors: FieldErrors = {}

    def fail(self, field: str, message: str) -> None:
        self.errors.setdefault(field, []).append(message)

    def text(self, field: str, *, required: bool = False) -> str | None:
        value = self.body.get(field)
        if _absent(value):
            if required:
                self.fail(field, f"The {_label(field)} field is required.")
            return None
        if not isinstance(value, str):
            self.fail(field, f"The {_label(field)} must be a string.")
            return None
        return value

    def integer(self, field: str, default: int, low: int, high: int | None) -> int:
        value = self.body.get(field)
        if _absent(value):
            return default
        number = _as_int(value)
        if number is None:
            self.fail(field, f"The {_label(field)} must be an integer.")
            return default
        return self._bounded(field, number, low, high)

    def number(self, field: str, default: float, low: float, high: float) -> float:
        value = self.body.get(field)
        if _absent(value):
            return default
        number = _as_float(value)
        if number is None:
            self.fail(field, f"The {_label(field)} must be a number.")
            return default
        return self._bounded(field, number, low, high)

    def _bounded(self, field: str, value: _N, low: _N, high: _N | None) -> _N:
        if value < low:
            self.fail(field, f"The {_label(field)} must be at least {low:g}.")
        elif high is not None and value > high:
            self.fail(field, f"The {_label(field)} must not be greater than {high:g}.")
        return value

    def flag(self, field: str, default: str) -> str:
        value = self.body.get(field)
        if _absent(value):
            return default
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, str) and value.strip().lower() in ("yes", "no"):
            return value.strip().lower()
        self.fail(field, f"The selected {_label(field)} is invalid.")
        return default


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            number = _as_float(text)
            return int(number) if number is not None and number.is_integer() else None
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if number == number and abs(number) != float("inf") else None
    return None


def is_web_url(url: str) -> bool:
    """True for an absolute http(s) URL with a host."""
    try:
        parsed = yarl.URL(url)
    except (TypeError, ValueError):
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


def is_loopback_url(url: str) -> bool:
    """True for an http(s) URL on a loopback address: the only ones the emulator calls."""
    if not is_web_url(url):
        return False
    parsed = yarl.URL(url)
    if parsed.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(parsed.host or "").is_loopback
    except ValueError:
        return False


def parse_generation(
    body: Mapping[str, Any], *, kind: Kind, version: Version
) -> GenerationParams | FieldErrors:
    """Validated parameters, or the field errors to answer with."""
    read = _Reader(body)
    model_id = read.text("model_id", required=True)
    prompt = read.text("prompt", required=True)
    negative_prompt = read.text("negative_prompt")
    width = read.integer("width", 512, 1, MAX_SIDE)
    height = read.integer("height", 512, 1, MAX_SIDE)
    samples = read.integer("samples", 1, 1, MAX_SAMPLES)
    # The v3/v4 docs name the field `steps` on inpaint and `num_inference_steps` elsewhere; v7
    # says `num_inference_steps` everywhere. Clients mix them up, so either is read, the
    # documented one first.
    inpaint_steps = kind == "inpaint" and version != "v7"
    preferred = "steps" if inpaint_steps else "num_inference_steps"
    other = "num_inference_steps" if inpaint_steps else "steps"
    steps_field = preferred if not _absent(body.get(preferred)) else other
    steps = read.integer(steps_field, DEFAULT_STEPS, 1, MAX_STEPS)
    if version == "v6":
        steps = min(steps, V6_STEP_CAP)
    guidance_scale = read.number("guidance_scale", 7.5, 1.0, 20.0)
    strength = read.number("strength", 0.7, 0.0, 1.0)
    scheduler = read.text("scheduler") or DEFAULT_SCHEDULER
    if scheduler not in SCHEDULERS:
        read.fail("scheduler", "The selected scheduler is invalid.")
    seed_value = body.get("seed")
    seed: int | None = None
    if not _absent(seed_value):
        seed = _as_int(seed_value)
        if seed is None or seed < 0:
            read.fail("seed", "The seed must be a non-negative integer.")
            seed = None
    safety_checker = read.flag("safety_checker", "yes")
    enhance_prompt = read.flag("enhance_prompt", "yes") == "yes"
    upscale = read.flag("upscale", "no")
    base64_flag = read.flag("base64", "no") == "yes" and version != "v3"
    init_image = read.text("init_image", required=kind != "text2img")
    mask_image = read.text("mask_image", required=kind == "inpaint")
    if kind == "text2img":
        init_image = mask_image = None
    elif kind == "img2img":
        mask_image = None
    webhook = read.text("webhook")
    if webhook is not None and not is_loopback_url(webhook):
        read.fail("webhook", "The emulator only calls webhooks on loopback addresses.")
    if read.errors or model_id is None or prompt is None:
        return read.errors
    return GenerationParams(
        kind=kind,
        version=version,
        model_id=model_id,
        prompt=prompt,
        negative_prompt=negative_prompt,
        width=width,
        height=height,
        samples=samples,
        steps=steps,
        guidance_scale=guidance_scale,
        strength=strength,
        scheduler=scheduler,
        seed=seed,
        safety_checker=safety_checker,
        enhance_prompt=enhance_prompt,
        upscale=upscale,
        init_image=init_image,
        mask_image=mask_image,
        base64=base64_flag,
        webhook=webhook,
        track_id=body.get("track_id"),
    )


def parse_request_id(value: Any) -> int | None:
    """A fetch id as int: ids arrive as ints or strings."""
    number = _as_int(value)
    return number if number is not None and number >= 0 else None
