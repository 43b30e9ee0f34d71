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
from typing import TYPE_CHECKING, Any

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

from ._convert import REQUEST_CLASSES, structure_field
from ._errors import APIError, RequestValidationError, error_from_response
from ._models import (
    ApiVersion,
    GenerationRequest,
    GenerationResult,
    Img2Img,
    Inpaint,
    ModelInfo,
    Processing,
    Scheduler,
    SystemLoad,
    Text2Img,
    WalletBalance,
)
from ._urls import looks_like_url

if TYPE_CHECKING:
    from ._download import SessionSource

__all__ = ["converter_for", "decode_json", "from_wire", "parse_response", "to_wire"]

# Fields the documentation sends as strings ("512"); the rest keep their JSON type.
_STRING_FIELDS = ("width", "height", "samples", "steps", "clip_skip")
# Sent even when None: the service documents null as "random" / "none".
_NULLABLE_FIELDS = frozenset({"seed", "negative_prompt"})


def _numbers_as_strings(version: ApiVersion) -> bool:
    # The v3 to v6 pages send numbers as strings ("512"); v7's examples use JSON numbers.
    return version != "v7"


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
    # A StrEnum would serialise anyway, but the wire dict should hold plain JSON types only.
    conv.register_unstructure_hook(Scheduler, lambda scheduler: scheduler.value)
    as_string = _numbers_as_strings(version)
    for cls in (Text2Img, Img2Img, Inpaint):
        overrides: dict[str, Any] = (
            {name: override(unstruct_hook=_as_wire_string) for name in _STRING_FIELDS}
            if as_string
            else {}
        )
        overrides["steps"] = override(
            rename=_steps_name(cls.kind, version),
            unstruct_hook=_as_wire_string if as_string else None,
        )
        overrides["extra"] = override(omit=True)
        for image_field in ("init_image", "mask_image"):
            # Images need the version and file I/O: handled by _encode_images below.
            overrides[image_field] = override(omit=True)
        for field in attrs.fields(cls):
            if field.default is None and field.name not in _NULLABLE_FIELDS:
                # An optional field left unset is not sent: skipped here, before its hook runs,
                # which keeps the ~20 unset fields of a usual request off the hot path.
                given = overrides.get(field.name)
                overrides[field.name] = (
                    override(omit_if_default=True)
                    if given is None
                    else attrs.evolve(given, omit_if_default=True)
                )
        conv.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, conv, **overrides))
    return conv


def _is_url(value: Any) -> bool:
    return looks_like_url(value)


def _shown(value: Any) -> Any:
    return f"<{len(value)} bytes>" if isinstance(value, bytes | bytearray) else value


def _encode_image(field: str, value: Any, version: ApiVersion) -> str:
    """The wire value of a local image (bytes or a path): base64, where ``version`` takes it."""
    if version == "v3":
        raise RequestValidationError(
            field,
            _shown(value),
            "an http(s) URL with api_version='v3' (v4 and v6 also accept local files and bytes)",
        )
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
    else:
        try:
            data = Path(os.fspath(value)).read_bytes()
        except OSError as exc:
            # Checked at construction, but the file may have gone since.
            raise RequestValidationError(
                field, value, f"a readable file ({exc.strerror or exc})"
            ) from None
    return base64.b64encode(data).decode("ascii")


def to_wire(request: GenerationRequest, version: ApiVersion) -> dict[str, Any]:
    """The JSON body for ``request`` (without the key), in ``version``'s wire form.

    Raises :class:`RequestValidationError` for what only the version can rule out: local
    images on v3, and a URL mixed with local data in one request (``"base64": "yes"`` applies
    to every image of the body, so the service would read the URL as base64).
    """
    body: dict[str, Any] = converter_for(version).unstructure(request)
    body = {k: v for k, v in body.items() if v is not None or k in _NULLABLE_FIELDS}
    images = {
        name: value
        for name in ("init_image", "mask_image")
        if (value := getattr(request, name, None)) is not None
    }
    local = [name for name, value in images.items() if not _is_url(value)]
    if local and len(local) < len(images):
        raise RequestValidationError(
            local[0],
            _shown(images[local[0]]),
            "the same kind as the other image: both http(s) URLs or both local data",
        )
    for name, value in images.items():
        body[name] = value if _is_url(value) else _encode_image(name, value, version)
    if local:
        body["base64"] = "yes"
    body.update(request.extra)
    return body


# --- wire to requests -------------------------------------------------------------------------


def from_wire(body: Mapping[str, Any], kind: str, version: ApiVersion) -> GenerationRequest:
    """Read a wire body (as :func:`to_wire` writes it) back into a request.

    Each field's value is read by :func:`~dreambooth_async._convert.structure_field` (the
    rules the command line reads prompts files by); base64 images come back as bytes; fields
    the request class does not model go to ``extra``. Raises :class:`RequestValidationError`
    when a value is out of its limits, and ``ValueError`` when the body is not in the wire form
    at all.
    """
    cls = REQUEST_CLASSES[kind]
    data = {k: v for k, v in body.items() if k not in ("key", "base64")}
    if str(body.get("base64", "no")).lower() == "yes":
        for name in ("init_image", "mask_image"):
            if isinstance(data.get(name), str) and not _is_url(data[name]):
                data[name] = base64.b64decode(data[name], validate=True)
    # Wire name -> field: only ``steps`` is renamed, per endpoint and version.
    fields = {
        _steps_name(kind, version) if a.name == "steps" else a.name: a.name
        for a in attrs.fields(cls)
        if a.name != "extra"
    }
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    try:
        for wire_name, value in data.items():
            field = fields.get(wire_name)
            if field is None:
                extra[wire_name] = value
            else:
                values[field] = structure_field(cls, field, value)
    except ValueError as exc:
        raise ValueError(f"not a {kind} wire body: {exc}") from None
    try:
        return cls(**values, extra=extra)
    except TypeError as exc:  # a required field missing
        raise ValueError(f"not a {kind} wire body: {exc}") from None


# --- inbound ----------------------------------------------------------------------------------


def decode_json(body: bytes) -> Any:
    """The decoded JSON body, or None when it is empty or not JSON."""
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


# A tuple, not a union: ``str | int | float`` would make a new union object on every answer.
_ID_TYPES = (str, int, float)


def _job_id(value: Any) -> str | None:
    # An int or a string in practice; anything else is not an id worth polling.
    if isinstance(value, bool) or not isinstance(value, _ID_TYPES):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None  # a lone surrogate: no URL or request body can carry it back
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
        # A list, not a generator: tuple() of a generator costs more, on every answer.
        return tuple([str(item) for item in value if isinstance(item, str) and item.strip()])
    return ()


def _links(value: Any) -> tuple[str, ...]:
    """``proxy_links`` in each documented shape: a list of URLs (the OpenAPI file), ``""``, a
    single URL, or an object of URLs by image number (``{"0": "https://..."}``, the flux
    text-to-image page), read in image order."""
    if isinstance(value, Mapping):
        return _urls([url for _, url in sorted(value.items(), key=_image_order)])
    return _urls(value)


def _image_order(item: tuple[Any, Any]) -> tuple[int, int, str]:
    # Numbered keys in number order ("10" after "9"), anything else after them, by name.
    name = str(item[0])
    return (0, int(name), "") if name.isdecimal() and len(name) < 10 else (1, 0, name)


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("yes", "true", "no", "false"):
        return value.lower() in ("yes", "true")
    if isinstance(value, list) and value:
        # v6 sends one flag per image; one level only, so a hostile nesting cannot recurse.
        flags = [f for v in value if not isinstance(v, list) and (f := _flag(v)) is not None]
        return any(flags) if flags else None
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _structure_result(
    body: Mapping[str, Any], _: type, session: SessionSource | None = None
) -> GenerationResult:
    return GenerationResult(
        session=session,
        id=_job_id(body.get("id")),
        status=str(body.get("status", "success")),
        output=_urls(body.get("output")),
        generation_time=_float(body.get("generationTime", body.get("generation_time"))),
        meta=_mapping(body.get("meta")),
        proxy_links=_links(body.get("proxy_links")),
        nsfw_content_detected=_flag(body.get("nsfw_content_detected")),
        raw=dict(body),
    )


def _structure_processing(
    body: Mapping[str, Any], _: type, asked_for: str | None = None
) -> Processing:
    # The fetch page's own "processing" example has no id: the job is the one asked about.
    job_id = _job_id(body.get("id")) or asked_for
    if job_id is None:
        # A processing answer we cannot poll: reporting it beats polling an empty id.
        # It did accept the job, so say so: resubmitting would pay twice.
        raise APIError(
            "the service answered 'processing' without a job id",
            body=dict(body),
            may_have_landed=True,
        )
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


def _structure_wallet_balance(body: Mapping[str, Any], _: type) -> WalletBalance:
    data = body.get("data")
    source = data if isinstance(data, Mapping) else body
    balance = _float(source.get("balance"))
    if balance is None:
        raise APIError("wallet_balance answered without a balance", body=dict(body))
    return WalletBalance(balance=balance, currency=_text(source.get("currency")), raw=dict(body))


def request_count_from(body: Any) -> int:
    """The number in a ``request_count`` answer. The OpenAPI file names it
    ``processing_count``; other names are read too, since no example answer is published."""
    sources = [body]
    if isinstance(body, Mapping) and isinstance(body.get("data"), Mapping):
        sources.append(body["data"])
    for source in sources:
        if not isinstance(source, Mapping):
            continue
        for name in ("processing_count", "request_count", "count", "processing"):
            number = _float(source.get(name))
            if number is not None and number >= 0:
                return int(number)
    raise APIError("request_count answered without a count", body=_shown_body(body))


def _shown_body(body: Any) -> dict[str, Any] | None:
    return dict(body) if isinstance(body, Mapping) else None


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
    WalletBalance: _structure_wallet_balance,
}
# By predicate: GenerationResult names its session handle's type lazily, so its hints cannot be
# resolved here.
inbound.register_structure_hook_func(
    lambda cls: cls in _structure_hooks, lambda body, cls: _structure_hooks[cls](body, cls)
)


def parse_response(
    http_status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    session: SessionSource | None = None,
    job_id: str | None = None,
) -> GenerationResult | Processing:
    """Map any answer to a generation or fetch call: a result, a processing status, or raise.

    Every answer goes through here, whatever its HTTP status or body (JSON, HTML, nothing).
    A result keeps ``session``, the client's session handle (for ``save()``). ``job_id`` is the
    job a fetch asked about: an answer that leaves its id out (the docs' processing example
    does) is about it.
    """
    parsed = decode_json(body)
    if 200 <= http_status < 300 and isinstance(parsed, dict):
        # The common answers, decided without the full error mapping (it agrees on these).
        status = parsed.get("status")
        if status == "success":
            return _identified(_structure_result(parsed, GenerationResult, session), job_id)
        if status == "processing":
            return _structure_processing(parsed, Processing, job_id)
    error = error_from_response(http_status, headers, body, parsed)
    if error is not None:
        raise error
    if not isinstance(parsed, Mapping):
        raise APIError("expected a JSON object", http_status=http_status)
    if str(parsed.get("status", "")).lower() == "processing":
        return _structure_processing(parsed, Processing, job_id)
    return _identified(_structure_result(parsed, GenerationResult, session), job_id)


def _identified(result: GenerationResult, job_id: str | None) -> GenerationResult:
    # The v3 fetch answer may leave the id out; it is the one that was asked for.
    return result if result.id is not None or job_id is None else attrs.evolve(result, id=job_id)


def parse_json(http_status: int, headers: Mapping[str, str], body: bytes) -> Any:
    """For the non-generation endpoints: the decoded JSON, or raise as :func:`parse_response`."""
    parsed = decode_json(body)
    error = error_from_response(http_status, headers, body, parsed)
    if error is not None:
        raise error
    return parsed
