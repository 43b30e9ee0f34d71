"""Typed requests and results.

Requests are frozen attrs classes validated on construction, so a bad value is reported by
field name before anything touches the network. They hold Python types; the wire form (numbers
as strings, ``"yes"``/``"no"`` flags, per-version field names) is the converter's job
(``_wire.py``).
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Required, TypeAlias, TypedDict

import attrs

from ._display import fetch_png, result_html
from ._download import DEFAULT_MAX_BYTES, SessionSource, copy_files, download_result
from ._elide import elided_strings
from ._errors import RequestValidationError
from ._inline import inline_image
from ._urls import is_http_url, looks_like_url

ApiVersion: TypeAlias = Literal["v3", "v4", "v6", "v7"]
"""Which version of the API a client speaks: ``"v6"`` (the default, modelslab.com's
``/api/v6/images/...``), ``"v7"`` (``/api/v7/images/...``, today's official CLI), or the legacy
``"v3"`` and ``"v4"`` of the 2023 pages (``/api/v3/dreambooth``...). Paths and wire names
differ; ``docs/protocol.md`` lists them."""
API_VERSIONS: tuple[ApiVersion, ...] = ("v3", "v4", "v6", "v7")

#: An image given to img2img / inpaint: an http(s) URL, a local file path, or the raw bytes.
ImageInput: TypeAlias = "str | os.PathLike[str] | bytes"


class Scheduler(enum.StrEnum):
    """The 18 scheduler names the service accepts (``scheduler`` field)."""

    DDPMScheduler = "DDPMScheduler"
    DDIMScheduler = "DDIMScheduler"
    PNDMScheduler = "PNDMScheduler"
    LMSDiscreteScheduler = "LMSDiscreteScheduler"
    EulerDiscreteScheduler = "EulerDiscreteScheduler"
    EulerAncestralDiscreteScheduler = "EulerAncestralDiscreteScheduler"
    DPMSolverMultistepScheduler = "DPMSolverMultistepScheduler"
    HeunDiscreteScheduler = "HeunDiscreteScheduler"
    KDPM2DiscreteScheduler = "KDPM2DiscreteScheduler"
    DPMSolverSinglestepScheduler = "DPMSolverSinglestepScheduler"
    KDPM2AncestralDiscreteScheduler = "KDPM2AncestralDiscreteScheduler"
    UniPCMultistepScheduler = "UniPCMultistepScheduler"
    DDIMInverseScheduler = "DDIMInverseScheduler"
    DEISMultistepScheduler = "DEISMultistepScheduler"
    IPNDMScheduler = "IPNDMScheduler"
    KarrasVeScheduler = "KarrasVeScheduler"
    ScoreSdeVeScheduler = "ScoreSdeVeScheduler"
    LCMScheduler = "LCMScheduler"


# --- validators -------------------------------------------------------------------------------
# Each one raises RequestValidationError naming the field, the value and the limit.


# Tuples, not unions: ``int | float`` makes a new union object each time it is evaluated, and
# these checks run for every request built.
_NUMBERS = (int, float)


@attrs.frozen
class _Range:
    """A number from ``lo`` to ``hi``: a validator that can say its limit (``--help`` does)."""

    lo: float
    hi: float
    integer: bool
    optional: bool = False

    @property
    def limit(self) -> str:
        return f"from {self.lo} to {self.hi}"

    def __call__(self, _inst: object, attr: attrs.Attribute[Any], value: object) -> None:
        if value is None and self.optional:
            return
        kinds: type | tuple[type, ...] = int if self.integer else _NUMBERS
        if isinstance(value, bool) or not isinstance(value, kinds):
            kind = "an integer" if self.integer else "a number"
            raise RequestValidationError(attr.name, value, f"{kind} {self.limit}")
        assert isinstance(value, _NUMBERS)
        if not self.lo <= value <= self.hi:  # also rejects NaN
            raise RequestValidationError(attr.name, value, self.limit)


def _int_range(lo: int, hi: int, *, optional: bool = False) -> Any:
    return _Range(lo, hi, integer=True, optional=optional)


def _float_range(lo: float, hi: float, *, optional: bool = False) -> Any:
    return _Range(lo, hi, integer=False, optional=optional)


def _non_empty_text(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise RequestValidationError(attr.name, value, "a non-empty string")


def _optional_text(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise RequestValidationError(attr.name, value, "a string or None")


def _flag(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, bool):
        raise RequestValidationError(attr.name, value, "True, False or None")


def _seed(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 2**32:
        raise RequestValidationError(attr.name, value, "an integer from 0 to 4294967295, or None")


def _url(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not (isinstance(value, str) and is_http_url(value)):
        raise RequestValidationError(attr.name, value, "an absolute http(s) URL")


def _to_scheduler(value: Scheduler | str | None) -> Scheduler | None:
    # Typed for callers (a name or a Scheduler); anything else reaches the validator, which
    # names the field and the limit.
    if isinstance(value, str) and not isinstance(value, Scheduler):
        try:
            return Scheduler(value)
        except ValueError:
            raise RequestValidationError(
                "scheduler",
                value,
                f"one of the {len(Scheduler)} names in dreambooth_async.Scheduler",
            ) from None
    return value


def _scheduler(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, Scheduler):
        raise RequestValidationError(attr.name, value, "a Scheduler or one of its names")


def _image(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bytes | bytearray):
        if not value:
            raise RequestValidationError(attr.name, b"", "non-empty image bytes")
        return
    if looks_like_url(value):
        assert isinstance(value, str)
        if not is_http_url(value):
            raise RequestValidationError(attr.name, value, "a well-formed http(s) URL")
        return
    if isinstance(value, str | os.PathLike):
        try:
            exists = Path(value).is_file()
        except OSError:  # a name too long for the file system, say
            exists = False
        if not exists:
            raise RequestValidationError(
                attr.name, value, "an http(s) URL, bytes, or the path of an existing file"
            )
        return
    raise RequestValidationError(attr.name, value, "an http(s) URL, a local path or bytes")


def _track_id(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
        raise RequestValidationError(attr.name, value, "a string, an integer or None")
    if isinstance(value, int):
        try:
            str(value)  # past int's digit limit (4300) it cannot be written as JSON
        except ValueError:
            raise RequestValidationError(
                attr.name, value, "an integer short enough to send as JSON"
            ) from None


# Wire names `extra` may not set: the key is the client's, and the modelled fields would
# bypass their validation (extra={"width": 5000}) if extra could overwrite them.
_RESERVED_WIRE_NAMES = frozenset({"key", "num_inference_steps", "base64"})


def _extra(inst: Any, attr: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, Mapping) and not value:
        return  # the usual case, and on every request's path
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise RequestValidationError(attr.name, value, "a mapping of wire field names to values")
    if "key" in value:
        raise RequestValidationError(attr.name, "{'key': ...}", "no 'key': the client sends it")
    modelled = {a.name for a in attrs.fields(type(inst))} | _RESERVED_WIRE_NAMES
    clashes = sorted(modelled.intersection(value) - {"extra"})
    if clashes:
        raise RequestValidationError(
            attr.name,
            {name: value[name] for name in clashes},
            f"only fields this class does not model (set {', '.join(clashes)} as fields)",
        )
    try:
        # Strict JSON (no NaN or Infinity, which the service could not parse); nesting deeper
        # than the encoder goes is refused too.
        json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise RequestValidationError(attr.name, value, "JSON-serialisable values") from None


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    # A copy, so that changing the caller's dict later does not change a frozen request.
    return dict(value) if isinstance(value, Mapping) else value if value is not None else {}


def _image_bytes(value: object) -> object:
    # bytearray is mutable and unhashable: keep an immutable copy.
    return bytes(value) if isinstance(value, bytearray) else value


# --- requests ---------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _Generation:
    """Fields shared by every generation endpoint. Not instantiated directly."""

    model_id: str = attrs.field(validator=_non_empty_text)
    prompt: str = attrs.field(validator=_non_empty_text)
    negative_prompt: str | None = attrs.field(default=None, validator=_optional_text)
    width: int = attrs.field(default=512, validator=_int_range(1, 1024))
    height: int = attrs.field(default=512, validator=_int_range(1, 1024))
    samples: int = attrs.field(default=1, validator=_int_range(1, 4))
    steps: int = attrs.field(default=30, validator=_int_range(1, 50))
    safety_checker: bool | None = attrs.field(default=None, validator=_flag)
    enhance_prompt: bool | None = attrs.field(default=None, validator=_flag)
    guidance_scale: float | None = attrs.field(
        default=None, validator=_float_range(1, 20, optional=True)
    )
    scheduler: Scheduler | None = attrs.field(
        default=None, converter=_to_scheduler, validator=_scheduler
    )
    seed: int | None = attrs.field(default=None, validator=_seed)
    webhook: str | None = attrs.field(default=None, validator=_url)
    track_id: str | int | None = attrs.field(default=None, validator=_track_id)
    # Documented optional fields, sent only when set.
    multi_lingual: bool | None = attrs.field(default=None, validator=_flag)
    panorama: bool | None = attrs.field(default=None, validator=_flag)
    self_attention: bool | None = attrs.field(default=None, validator=_flag)
    upscale: bool | None = attrs.field(default=None, validator=_flag)
    embeddings_model: str | None = attrs.field(default=None, validator=_optional_text)
    lora_model: str | None = attrs.field(default=None, validator=_optional_text)
    lora_strength: str | None = attrs.field(default=None, validator=_optional_text)
    clip_skip: int | None = attrs.field(default=None, validator=_int_range(1, 8, optional=True))
    tomesd: bool | None = attrs.field(default=None, validator=_flag)
    use_karras_sigmas: bool | None = attrs.field(default=None, validator=_flag)
    algorithm_type: str | None = attrs.field(default=None, validator=_optional_text)
    vae: str | None = attrs.field(default=None, validator=_optional_text)
    safety_checker_type: str | None = attrs.field(default=None, validator=_optional_text)
    highres_fix: bool | None = attrs.field(default=None, validator=_flag)
    temp: bool | None = attrs.field(default=None, validator=_flag)
    #: Wire fields this class does not model, passed through as given.
    # Out of the hash (a dict is not hashable) but not out of equality: equal requests still
    # hash alike, so requests can be set members and dict keys.
    extra: Mapping[str, Any] = attrs.field(
        factory=dict, converter=_frozen_mapping, validator=_extra, repr=False, hash=False
    )

    #: Which endpoint family serves this request (``"text2img"``, ``"img2img"``, ``"inpaint"``).
    kind: ClassVar[str] = "text2img"


@attrs.frozen(kw_only=True)
class Text2Img(_Generation):
    """A text-to-image request.

    Validated on construction: ``width``/``height`` 1..1024, ``samples`` 1..4, ``steps`` 1..50,
    ``guidance_scale`` 1..20, ``seed`` a non-negative 32-bit integer or None (random), and the
    rest as in the service's documentation. Violations raise :class:`RequestValidationError`.
    """

    kind: ClassVar[str] = "text2img"


@attrs.frozen(kw_only=True)
class Img2Img(_Generation):
    """An image-to-image request: ``init_image`` (URL, path or bytes) reworked by ``strength``."""

    init_image: str | os.PathLike[str] | bytes = attrs.field(
        converter=_image_bytes, validator=_image, repr=False
    )
    strength: float = attrs.field(default=0.7, validator=_float_range(0.0, 1.0))
    kind: ClassVar[str] = "img2img"


@attrs.frozen(kw_only=True)
class Inpaint(_Generation):
    """An inpainting request: the white area of ``mask_image`` is repainted in ``init_image``."""

    init_image: str | os.PathLike[str] | bytes = attrs.field(
        converter=_image_bytes, validator=_image, repr=False
    )
    mask_image: str | os.PathLike[str] | bytes = attrs.field(
        converter=_image_bytes, validator=_image, repr=False
    )
    strength: float = attrs.field(default=0.7, validator=_float_range(0.0, 1.0))
    kind: ClassVar[str] = "inpaint"


GenerationRequest: TypeAlias = Text2Img | Img2Img | Inpaint
"""Any generation request: a :class:`Text2Img`, :class:`Img2Img` or :class:`Inpaint`."""

# What the validators without parameters accept, in the words of their errors.
_LIMITS: Mapping[Any, str] = {
    _non_empty_text: "non-empty text",
    _optional_text: "text",
    _flag: "yes or no",
    _seed: "an integer from 0 to 4294967295",
    _url: "an absolute http(s) URL",
    _scheduler: f"one of the {len(Scheduler)} names in dreambooth_async.Scheduler",
    _image: "an http(s) URL or the path of an existing file",
    _track_id: "text or an integer",
}


def field_limit(cls: type[GenerationRequest], name: str) -> str:
    """What field ``name`` of ``cls`` accepts, and its default, in words, from the field's
    own validator and default (``from 1 to 1024; default: 512``): the one source of the
    command line's help for the request options."""
    field = attrs.fields_dict(cls)[name]
    check = field.validator
    limit = check.limit if isinstance(check, _Range) else _LIMITS.get(check, "")
    if field.default is attrs.NOTHING:
        default = "required"
    elif field.default is None:
        default = "default: the service's (not sent)"
    else:
        default = f"default: {field.default}"
    return f"{limit}; {default}" if limit else default


# --- results ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class GenerationResult:
    """A finished generation: the output image URLs and what the service said about them.

    ``raw`` keeps the whole response body, unknown fields included. ``id`` is always a string
    (the service sends it as an int or a string).
    """

    id: str | None
    status: str
    # Inline (base64) outputs are long: the repr shows their start and length.
    output: tuple[str, ...] = attrs.field(repr=elided_strings)
    generation_time: float | None = None
    meta: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    proxy_links: tuple[str, ...] = attrs.field(default=(), repr=False)
    nsfw_content_detected: bool | None = attrs.field(default=None, repr=False)
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    # A handle on the HTTP session of the client that produced this result, so that save()
    # reuses it while that client is open; never the client itself (results are plain data).
    _session: SessionSource | None = attrs.field(
        default=None, repr=False, eq=False, alias="session"
    )

    @property
    def seed(self) -> int | None:
        """The seed that ran (``meta.seed``), useful when the request asked for a random one."""
        value = self.meta.get("seed")
        try:
            return int(value) if value is not None else None
        except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's Infinity
            return None

    @property
    def inline_images(self) -> tuple[bytes, ...]:
        """The images that ``output`` carries in itself (base64: data URLs or bare strings, as
        the service answers to ``"base64": "yes"``), decoded and checked by magic bytes.
        Links are not fetched: :meth:`save` writes every image, linked or inline."""
        return tuple(data for item in self.output if (data := inline_image(item)) is not None)

    async def save(
        self,
        directory: str | os.PathLike[str],
        *,
        not_found_grace: float = 30.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> list[Path]:
        """Save every output image into ``directory`` and return the paths written.

        Uses the HTTP session of the client that produced the result while that client is open
        (its connection pool and timeouts; a download is not retried, apart from the 404s of
        ``not_found_grace``), a session of its own otherwise; see
        :meth:`DreamboothClient.download` for the options.
        """
        return await download_result(
            self,
            directory,
            sessions=self._session,
            not_found_grace=not_found_grace,
            max_bytes=max_bytes,
        )

    # --- Jupyter display ----------------------------------------------------------------------

    def _repr_html_(self) -> str:
        """The output images (by URL) and a summary of ``meta``, for Jupyter."""
        return result_html(self)

    def _repr_png_(self) -> bytes | None:
        """The first output image as PNG bytes, fetched on first display and cached by URL
        (None when there is none or it cannot be fetched: expired, offline, not a PNG)."""
        return fetch_png(self.output[0]) if self.output else None


@attrs.frozen(kw_only=True)
class CachedResult(GenerationResult):
    """A :class:`GenerationResult` kept by the cache. ``files`` are the stored copies of the
    images, one per ``output`` entry (empty when they could not be fetched when stored)."""

    files: tuple[Path, ...] = attrs.field(default=(), repr=False)

    async def save(
        self,
        directory: str | os.PathLike[str],
        *,
        not_found_grace: float = 30.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> list[Path]:
        """Copy the stored images into ``directory`` (no download); the links are used only
        when a stored copy is missing."""
        if len(self.files) != len(self.output) or not all(p.is_file() for p in self.files):
            return await super().save(
                directory, not_found_grace=not_found_grace, max_bytes=max_bytes
            )
        return copy_files(self, self.files, directory)


@attrs.frozen(kw_only=True)
class Processing:
    """The service's "processing" answer: the job is queued; fetch it later by ``id``."""

    id: str
    eta: float | None = None
    fetch_result: str | None = None
    future_links: tuple[str, ...] = ()
    message: str | None = None
    meta: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    status: str = "processing"


@attrs.frozen(kw_only=True)
class SystemLoad:
    """``/api/v3/system_load``: how many requests the service has queued and for how long."""

    queue_num: int
    queue_time: float
    status: str
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False)


@attrs.frozen(kw_only=True)
class ModelInfo:
    """One entry of ``model_list``."""

    model_id: str
    status: str | None = None
    model_name: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False)


@attrs.frozen(kw_only=True)
class WalletBalance:
    """``/api/wallet_balance``: what the account has left to spend."""

    balance: float
    currency: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False)


# --- keyword arguments of the shortcut methods ------------------------------------------------
# ``client.text2img(model_id=..., prompt=...)`` and friends take a request's fields as keyword
# arguments; these spell them out for type checkers and editors (PEP 692). A test checks that
# they list exactly the classes' fields.


class _GenerationFields(TypedDict, total=False):
    model_id: Required[str]
    prompt: Required[str]
    negative_prompt: str | None
    width: int
    height: int
    samples: int
    steps: int
    safety_checker: bool | None
    enhance_prompt: bool | None
    guidance_scale: float | None
    scheduler: Scheduler | str | None
    seed: int | None
    webhook: str | None
    track_id: str | int | None
    multi_lingual: bool | None
    panorama: bool | None
    self_attention: bool | None
    upscale: bool | None
    embeddings_model: str | None
    lora_model: str | None
    lora_strength: str | None
    clip_skip: int | None
    tomesd: bool | None
    use_karras_sigmas: bool | None
    algorithm_type: str | None
    vae: str | None
    safety_checker_type: str | None
    highres_fix: bool | None
    temp: bool | None
    extra: Mapping[str, Any]


class Text2ImgFields(_GenerationFields, total=False):
    """The keyword arguments of :class:`Text2Img` (and ``client.text2img``)."""


class Img2ImgFields(_GenerationFields, total=False):
    """The keyword arguments of :class:`Img2Img` (and ``client.img2img``)."""

    init_image: Required[str | os.PathLike[str] | bytes]
    strength: float


class InpaintFields(_GenerationFields, total=False):
    """The keyword arguments of :class:`Inpaint` (and ``client.inpaint``)."""

    init_image: Required[str | os.PathLike[str] | bytes]
    mask_image: Required[str | os.PathLike[str] | bytes]
    strength: float
