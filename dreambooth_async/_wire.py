"""The cattrs converter between the Python types of ``_models`` and the service's loose JSON.

Outbound, a request becomes the wire body: numbers the docs send as strings become strings,
booleans become ``"yes"``/``"no"``, ``steps`` is renamed per endpoint and API version, and local
images become base64 where the version accepts it. Inbound, :func:`parse_response` is the one
function every answer goes through: it returns a result or a processing status, or raises.
"""

from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

from ._errors import APIError, RequestValidationError, error_from_response
from ._models import (
    ApiVersion,
    GenerationRequest,
    GenerationResult,
    Img2Img,
    Inpaint,
    ModelInfo,
    Processing,
    SystemLoad,
    Text2Img,
)

__all__ = ["converter_for", "decode_json", "parse_response", "to_wire"]

# Fields the documentation sends as strings ("512"); the rest keep their JSON type.
_STRING_FIELDS = ("width", "height", "samples", "steps", "clip_skip")
# Sent even when None: the service documents null as "random" / "none".
_NULLABLE_FIELDS = frozenset({"seed", "negative_prompt"})


def _steps_name(kind: str, version: ApiVersion) -> str:
    # The v3 and v4 docs call it `steps` on inpaint only; v6 uses num_inference_steps everywhere.
    return "steps" if kind == "inpaint" and version in ("v3", "v4") else "num_inference_steps"


def _as_wire_string(value: Any) -> Any:
    return None if value is None else str(value)


@cache
def converter_for(version: ApiVersion) -> cattrs.Converter:
    """The converter for one API version (they differ only in field names)."""
    conv = cattrs.Converter()
    conv.register_unstructure_hook(bool, lambda flag: "yes" if flag else "no")
    for cls in (Text2Img, Img2Img, Inpaint):
        overrides: dict[str, Any] = {
            name: override(unstruct_hook=_as_wire_string) for name in _STRING_FIELDS
        }
        overrides["steps"] = override(
            rename=_steps_name(cls.kind, version), unstruct_hook=_as_wire_string
        )
        overrides["extra"] = override(omit=True)
        for image_field in ("init_image", "mask_image"):
            # Images need the version and file I/O: handled by _encode_images below.
            overrides[image_field] = override(omit=True)
        conv.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, conv, **overrides))
    return conv


def _encode_image(field: str, value: Any, version: ApiVersion) -> tuple[str, bool]:
    """(wire value, is_base64) for an image input."""
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return value, False
    if version == "v3":
        raise RequestValidationError(
            field,
            value if not isinstance(value, bytes) else f"<{len(value)} bytes>",
            "an http(s) URL with api_version='v3' (v4 and v6 also accept local files and bytes)",
        )
    data = (
        bytes(value)
        if isinstance(value, bytes | bytearray)
        else Path(os.fspath(value)).read_bytes()
    )
    return base64.b64encode(data).decode("ascii"), True


def to_wire(request: GenerationRequest, version: ApiVersion) -> dict[str, Any]:
    """The JSON body for ``request`` (without the key), in ``version``'s wire form."""
    body: dict[str, Any] = converter_for(version).unstructure(request)
    body = {k: v for k, v in body.items() if v is not None or k in _NULLABLE_FIELDS}
    uses_base64 = False
    for image_field in ("init_image", "mask_image"):
        if (value := getattr(request, image_field, None)) is not None:
            body[image_field], encoded = _encode_image(image_field, value, version)
            uses_base64 = uses_base64 or encoded
    if uses_base64:
        body["base64"] = "yes"
    body.update(request.extra)
    return body


# --- inbound ----------------------------------------------------------------------------------


def decode_json(body: bytes) -> Any:
    """The decoded JSON body, or None when it is empty or not JSON."""
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _job_id(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _urls(value: Any) -> tuple[str, ...]:
    """``output`` is a list of URLs, or ``""`` while nothing is ready."""
    if isinstance(value, str):
        return (value,) if value.strip() else ()
    if isinstance(value, list):
        return tuple(str(item) for item in value if isinstance(item, str) and item.strip())
    return ()


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("yes", "true", "no", "false"):
        return value.lower() in ("yes", "true")
    if isinstance(value, list) and value:
        return any(_flag(v) for v in value)
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _structure_result(body: Mapping[str, Any], _: type) -> GenerationResult:
    return GenerationResult(
        id=_job_id(body.get("id")),
        status=str(body.get("status", "success")),
        output=_urls(body.get("output")),
        generation_time=_float(body.get("generationTime", body.get("generation_time"))),
        meta=_mapping(body.get("meta")),
        proxy_links=_urls(body.get("proxy_links")),
        nsfw_content_detected=_flag(body.get("nsfw_content_detected")),
        raw=dict(body),
    )


def _structure_processing(body: Mapping[str, Any], _: type) -> Processing:
    job_id = _job_id(body.get("id"))
    if job_id is None:
        # A processing answer we cannot poll: reporting it beats polling an empty id.
        raise APIError("the service answered 'processing' without a job id", body=dict(body))
    eta = _float(body.get("eta"))
    fetch_url = body.get("fetch_result")
    return Processing(
        id=job_id,
        eta=eta if eta is not None and eta >= 0 else None,
        fetch_result=fetch_url if isinstance(fetch_url, str) and fetch_url.strip() else None,
        future_links=_urls(body.get("future_links")),
        message=_text(body.get("message")) or _text(body.get("messege")),
        meta=_mapping(body.get("meta")),
        raw=dict(body),
    )


def _structure_system_load(body: Mapping[str, Any], _: type) -> SystemLoad:
    return SystemLoad(
        queue_num=int(_float(body.get("queue_num")) or 0),
        queue_time=_float(body.get("queue_time")) or 0.0,
        status=str(body.get("status", "")),
        raw=dict(body),
    )


def _structure_model_info(body: Mapping[str, Any], _: type) -> ModelInfo:
    return ModelInfo(
        model_id=str(body.get("model_id", "")),
        status=_text(body.get("status")),
        model_name=_text(body.get("model_name")),
        raw=dict(body),
    )


#: The inbound converter: the service's loose JSON to result classes.
inbound = cattrs.Converter()
_structure_hooks: dict[type, Callable[[Any, type], Any]] = {
    GenerationResult: _structure_result,
    Processing: _structure_processing,
    SystemLoad: _structure_system_load,
    ModelInfo: _structure_model_info,
}
# By predicate: GenerationResult names the client lazily, so its hints cannot be resolved here.
inbound.register_structure_hook_func(
    lambda cls: cls in _structure_hooks, lambda body, cls: _structure_hooks[cls](body, cls)
)


def parse_response(
    http_status: int, headers: Mapping[str, str], body: bytes
) -> GenerationResult | Processing:
    """Map any answer to a generation or fetch call: a result, a processing status, or raise.

    Every answer goes through here, whatever its HTTP status or body (JSON, HTML, nothing).
    """
    parsed = decode_json(body)
    error = error_from_response(http_status, headers, body, parsed)
    if error is not None:
        raise error
    if not isinstance(parsed, Mapping):
        raise APIError("expected a JSON object", http_status=http_status)
    if str(parsed.get("status", "")).lower() == "processing":
        return inbound.structure(parsed, Processing)
    return inbound.structure(parsed, GenerationResult)


def parse_json(http_status: int, headers: Mapping[str, str], body: bytes) -> Any:
    """For the non-generation endpoints: the decoded JSON, or raise as :func:`parse_response`."""
    parsed = decode_json(body)
    error = error_from_response(http_status, headers, body, parsed)
    if error is not None:
        raise error
    return parsed
