"""The JSON bodies the service answers with, key for key (docs/protocol.md, the seed pages)."""

from __future__ import annotations

from typing import Any, Literal

from ._jobs import Job
from ._params import Version

INVALID_KEY: dict[str, Any] = {
    "status": "error",
    "message": "Invalid Api Key",
    "tip": "1. Make sure you are passing Api Key in the key field of the JSON body, "
    "2. Make sure the key is the one shown in your dashboard (for the emulator: its --key)",
}
MODEL_NOT_FOUND: dict[str, Any] = {"status": "error", "message": "Model id not found"}
REQUEST_NOT_FOUND: dict[str, Any] = {"status": "error", "message": "Request not found"}
INVALID_JSON: dict[str, Any] = {"status": "error", "message": "Invalid JSON body"}
# error-codes.mdx, word for word.
INSUFFICIENT_CREDITS: dict[str, Any] = {
    "status": "error",
    "message": "Insufficient credits. Please add more credits to continue.",
}
PREMIUM_REQUIRED: dict[str, Any] = {
    "status": "error",
    "message": "This feature requires a premium subscription",
}

#: The shapes of ``proxy_links`` (see ``EmulatorConfig.proxy_links``).
ProxyLinks = Literal["list", "object", "empty"]

PROCESSING_TIP = "for faster speed, keep resolution upto 512x512"
FETCH_LATER = "Try to fetch request after given estimated time"
FAILED_MESSAGE = "Failed, Try Again"
REQUEST_COUNT_MESSAGE = "Current processing request count retrieved successfully"

# The fetch page's own "processing" example: no id, no eta, no meta, `output` an empty string.
IDLESS_PROCESSING: dict[str, Any] = {
    "status": "processing",
    "messege": "try again later.",
    "output": "",
    "tip": PROCESSING_TIP,
}

# Versions whose fetch answers a finished job in the seed pages' short form, without meta: the
# legacy API. A client must keep the processing answer's meta to know the seed it ran with.
SHORT_FETCH_VERSIONS: frozenset[Version] = frozenset({"v3", "v4"})
# Versions that spell `message` right and add proxy_links & co. to a success.
_MODERN: frozenset[Version] = frozenset({"v6", "v7"})

# What enhance_prompt (on by default) does to the prompt and an empty negative prompt, in the
# spirit of the seed page's example answer.
ENHANCE_SUFFIX = (
    " DSLR photography, sharp focus, Unreal Engine 5, Octane Render, ((cinematic lighting)), "
    "f/1.4, ISO 200, 1/160s, 8K, RAW, unedited, symmetrical balance, in-frame"
)
DEFAULT_NEGATIVE = (
    " ((out of frame)), ((extra fingers)), mutated hands, ((poorly drawn hands)), "
    "((poorly drawn face)), (((mutation))), (((deformed))), blurry, ((bad anatomy)), "
    "((bad proportions)), ((extra limbs)), cloned face, glitchy"
)


def seconds_text(seconds: float) -> str:
    """A duration as the service writes it in prose: ``30``, or ``0.3`` under a time scale."""
    rounded = round(seconds, 3)
    return str(int(rounded)) if rounded.is_integer() else f"{rounded:g}"


def field_errors(errors: dict[str, list[str]]) -> dict[str, Any]:
    return {"status": "error", "message": errors}


def queue_full(limit: int, retry_after: float) -> dict[str, Any]:
    return {
        "status": "error",
        "message": f"Rate limit exceeded. Maximum {limit} queued requests allowed.",
        "retry_after": round(retry_after, 6),
    }


def spam(wait: float) -> dict[str, Any]:
    return {
        "status": "error",
        "message": "Rate limit exceeded",
        "tips": "You sent the same request again too soon, please wait for "
        f"{seconds_text(wait)} seconds before sending it again",
    }


def too_many_requests(retry_after: float) -> dict[str, Any]:
    return {
        "status": "error",
        "message": "Too many requests, rate limit exceeded",
        "retry_after": round(retry_after, 6),
    }


def html_error(status: int) -> str:
    reason = {502: "Bad Gateway", 503: "Service Temporarily Unavailable"}.get(status, "Error")
    return (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )


def fetch_url(job: Job) -> str:
    # The legacy service hands out a v3 fetch URL for v3 and v4; v6 and v7 point at their own.
    version = job.params.version
    if version in _MODERN:
        return f"{job.origin}/api/{version}/images/fetch/{job.id}"
    return f"{job.origin}/api/v3/dreambooth/fetch/{job.id}"


def meta(job: Job) -> dict[str, Any]:
    p = job.params
    prompt = p.prompt + ENHANCE_SUFFIX if p.enhance_prompt else p.prompt
    negative = p.negative_prompt
    if negative is None:
        negative = DEFAULT_NEGATIVE if p.enhance_prompt else ""
    body: dict[str, Any] = {
        "H": p.height,
        "W": p.width,
        "file_prefix": job.file_prefix,
        "full_url": "no",
        "guidance_scale": p.guidance_scale,
    }
    if p.kind != "text2img":
        body["init_image"] = p.init_image
    if p.kind == "inpaint":
        body["mask_image"] = p.mask_image
    body.update(
        {
            "model_id": p.model_id,
            "n_samples": p.samples,
            "negative_prompt": negative,
            "outdir": "out",
            "prompt": prompt,
            "safetychecker": p.safety_checker,
            "scheduler": p.scheduler,
            "seed": job.seed,
            "steps": p.steps,
            "upscale": p.upscale,
        }
    )
    return body


def proxy_links(output: list[str], shape: ProxyLinks) -> list[str] | dict[str, str] | str:
    """``proxy_links`` in one of its documented shapes."""
    if shape == "object":
        return {str(number): url for number, url in enumerate(output)}
    return list(output) if shape == "list" else ""


def success(
    job: Job,
    *,
    version: Version,
    output: list[str],
    fetched: bool = False,
    links: ProxyLinks = "list",
) -> dict[str, Any]:
    """The success answer, with ``output`` as the job's style gives it. A fetch on a
    ``SHORT_FETCH_VERSIONS`` path answers only ``status``, ``id``, ``output``."""
    if fetched and version in SHORT_FETCH_VERSIONS:
        return {"status": "success", "id": job.id, "output": output}
    body: dict[str, Any] = {
        "status": "success",
        "generationTime": job.run_seconds,
        "id": job.id,
        "output": output,
    }
    if version in _MODERN:
        body.update(
            {
                "proxy_links": proxy_links(output, links),
                "nsfw_content_detected": False,
                "webhook_status": "",
                "tip": "",
            }
        )
    body["meta"] = meta(job)
    return body


def processing(job: Job, *, version: Version, eta: float) -> dict[str, Any]:
    return {
        "status": "processing",
        "tip": PROCESSING_TIP,
        "eta": round(eta, 6),
        # The legacy endpoints misspell it; v6 and v7 spell it right.
        ("message" if version in _MODERN else "messege"): FETCH_LATER,
        "webhook_status": "",
        "fetch_result": fetch_url(job),
        "id": job.id,
        "output": [],
        "meta": meta(job),
        "future_links": job.future_links(),
    }


def failed(job: Job) -> dict[str, Any]:
    return {"status": "failed", "id": job.id, "message": FAILED_MESSAGE, "output": ""}


def webhook_payload(job: Job, output: list[str]) -> dict[str, Any]:
    if job.failed:
        return {
            "status": "failed",
            "id": job.id,
            "message": FAILED_MESSAGE,
            "track_id": job.track_id,
        }
    return {
        "status": "success",
        "id": job.id,
        "output": output,
        "generationTime": job.run_seconds,
        "track_id": job.track_id,
        "meta": meta(job),
    }


def wallet_balance(balance: float) -> dict[str, Any]:
    """``POST /api/wallet_balance``, as the general API's OpenAPI file shows it."""
    return {"status": "success", "data": {"balance": balance, "currency": "USD"}}


def request_count(count: int) -> dict[str, Any]:
    """``/api/v6/processing/request_count``: the general API's OpenAPI schema
    ``ProcessingRequestCountResponse`` (the page itself shows no response)."""
    return {"status": "success", "processing_count": count, "message": REQUEST_COUNT_MESSAGE}
