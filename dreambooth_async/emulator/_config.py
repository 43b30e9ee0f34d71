"""Settings of the emulator: the service it pretends to be, its cost model and its faults.

Every duration here is in *service seconds*: the time the real service would take. The emulator
multiplies them by ``EmulatorConfig.time_scale`` to get real seconds.
"""

from __future__ import annotations

import string
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs

DEFAULT_KEY = "emulator-key"
"""The API key the emulator accepts unless ``EmulatorConfig.keys`` says otherwise."""

DEFAULT_MODELS: tuple[str, ...] = (
    "midjourney",
    "sd-1.5",
    "redshift-diffusion",
    "anything-v3",
    "realistic-vision-v13",
)


def _names(value: Iterable[str]) -> tuple[str, ...]:
    # A lone string would otherwise become a tuple of its letters.
    return (value,) if isinstance(value, str) else tuple(value)


def _float_map(value: Mapping[str, float]) -> Mapping[str, float]:
    # Read-only, so that a frozen configuration stays frozen; compares equal to a plain dict.
    return types.MappingProxyType(dict(value))


def _int_map(value: Mapping[str, int]) -> Mapping[str, int]:
    return types.MappingProxyType(dict(value))


class ConfigError(ValueError):
    """A setting the emulator cannot use.

    ``fields`` are the settings at fault; ``reason`` finishes the sentence and may name further
    settings as ``{field}`` placeholders (``values`` fills the other placeholders, so a value
    holding braces is safe). ``str()`` names the settings by field; ``explain`` lets a command
    line name them by its options instead.
    """

    def __init__(self, fields: Sequence[str], reason: str, **values: object) -> None:
        self.fields = tuple(fields)
        self.reason = reason
        self.values = dict(values)
        super().__init__(self.sentence(lambda field: field))

    def referenced(self) -> tuple[str, ...]:
        """The further settings ``reason`` names."""
        names = (name for _, name, _, _ in string.Formatter().parse(self.reason) if name)
        return tuple(name for name in names if name not in self.values)

    def explain(self, name: Callable[[str], str]) -> str:
        """``reason`` with each setting it names put as ``name`` says."""
        return self.reason.format_map(
            {**{field: name(field) for field in self.referenced()}, **self.values}
        )

    def sentence(self, name: Callable[[str], str]) -> str:
        """The whole message: ``queue_limit must be >= 1 (got 0)``."""
        return f"{' + '.join(map(name, self.fields))} {self.explain(name)}"


def _compare(
    holds: Callable[[Any], bool], words: str
) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    """A validator that raises ConfigError naming the field (attrs' own ones put the name in
    quotes inside the text, where a command line cannot swap in its option)."""

    def check(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        try:
            fine = holds(value)
        except TypeError:
            fine = False
        if not fine:
            raise ConfigError((attribute.name,), f"{words} (got {{value!r}})", value=value)

    return check


def _one_of(*options: str) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    return _compare(lambda value: value in options, f"must be one of {', '.join(options)}")


_non_negative = _compare(lambda value: value >= 0, "must be >= 0")
_positive = _compare(lambda value: value > 0, "must be > 0")
_at_least_one = _compare(lambda value: value >= 1, "must be >= 1")
_probability = _compare(lambda value: 0 <= value <= 1, "must be from 0 to 1")


@attrs.frozen(kw_only=True)
class CostModel:
    """How long a job takes on one worker, in service seconds.

    ``base + per_step * steps + per_sample * samples + per_megapixel * megapixels * samples``,
    then multiplied by ``max(0.05, 1 + N(0, noise))``: ``noise`` is a relative standard deviation.
    """

    base: float = attrs.field(default=2.0, validator=_non_negative)
    per_step: float = attrs.field(default=0.1, validator=_non_negative)
    per_sample: float = attrs.field(default=1.0, validator=_non_negative)
    per_megapixel: float = attrs.field(default=4.0, validator=_non_negative)
    noise: float = attrs.field(default=0.1, validator=_non_negative)

    def mean_duration(self, *, steps: int, samples: int, width: int, height: int) -> float:
        megapixels = width * height / 1_000_000
        return (
            self.base
            + self.per_step * steps
            + self.per_sample * samples
            + self.per_megapixel * megapixels * samples
        )


#: The FaultConfig rates of the request-level kinds, which share one draw (see _faults.py).
_REQUEST_FAULTS = ("rate_5xx", "rate_drop_before", "rate_429", "rate_drop_after", "rate_slow")


@attrs.frozen(kw_only=True)
class FaultConfig:
    """Injected faults. Each ``rate_*`` is a probability, drawn from RNGs seeded with ``seed``.

    Request-level faults hit submissions and fetches only (never ``system_load``, ``model_list``,
    ``model_reload``, output files, samples or the admin endpoints); at most one per request:

    - ``rate_5xx``: HTTP 502 or 503 with an HTML body; the request is not processed.
    - ``rate_drop_before``: the connection is closed before the body is read; not processed.
    - ``rate_429``: HTTP 429 with ``Retry-After`` and a rate-limit JSON body; not processed.
    - ``rate_drop_after``: the request is processed (a valid submission is accepted: it holds a
      queue slot and runs), then the connection is closed without an answer.
    - ``rate_slow``: the request is processed at once, the answer leaves ``slow_delay`` later.

    Job-level faults are drawn once per accepted job:

    - ``rate_failed``: the job ends ``failed`` (fetch and webhook say so).
    - ``rate_stuck``: the job runs ``stuck_extra`` longer than its ETA promised; fetch keeps
      answering processing, its ``eta`` counting down to 0 and staying there. It holds its
      worker and its queue slot for that time.
    - ``rate_output_404``: the job's output files answer 404 for ``output_404_for`` after it
      succeeded.
    """

    seed: int = 0
    rate_5xx: float = attrs.field(default=0.0, validator=_probability)
    rate_drop_before: float = attrs.field(default=0.0, validator=_probability)
    rate_drop_after: float = attrs.field(default=0.0, validator=_probability)
    rate_slow: float = attrs.field(default=0.0, validator=_probability)
    slow_delay: float = attrs.field(default=5.0, validator=_non_negative)
    rate_429: float = attrs.field(default=0.0, validator=_probability)
    retry_after_429: float = attrs.field(default=2.0, validator=_non_negative)
    rate_failed: float = attrs.field(default=0.0, validator=_probability)
    rate_stuck: float = attrs.field(default=0.0, validator=_probability)
    stuck_extra: float = attrs.field(default=60.0, validator=_non_negative)
    rate_output_404: float = attrs.field(default=0.0, validator=_probability)
    output_404_for: float = attrs.field(default=10.0, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        # The request-level kinds are slices of one uniform draw (see _faults.py), so their
        # probabilities cannot add up to more than 1.
        total = sum(getattr(self, name) for name in _REQUEST_FAULTS)
        if total > 1.0 + 1e-9:
            involved = [name for name in _REQUEST_FAULTS if getattr(self, name) > 0]
            raise ConfigError(
                involved,
                "add up to {total:.3f}, more than 1 (the request-level fault kinds are slices "
                "of one draw per request)",
                total=total,
            )


@attrs.frozen(kw_only=True)
class EmulatorConfig:
    """How the emulated service behaves. All fields have defaults; see the package docstring."""

    host: str = "127.0.0.1"
    port: int = attrs.field(default=0, validator=_non_negative)
    keys: tuple[str, ...] = attrs.field(default=(DEFAULT_KEY,), converter=_names)
    queue_limit: int = attrs.field(default=5, validator=_at_least_one)
    workers: int = attrs.field(default=2, validator=_at_least_one)
    time_scale: float = attrs.field(default=1.0, validator=_positive)
    cost: CostModel = attrs.field(factory=CostModel)
    sync_window: float = attrs.field(default=1.0, validator=_non_negative)
    eta_bias: float = attrs.field(
        default=0.0, validator=_compare(lambda value: value > -1, "must be > -1")
    )
    eta_noise: float = attrs.field(default=0.0, validator=_non_negative)
    #: "normal": eta_noise is a relative standard deviation; "uniform": the ETA is off by up to
    #: eta_noise either way, evenly spread ("off by up to 20% at random").
    eta_noise_kind: Literal["normal", "uniform"] = attrs.field(
        default="normal", validator=_one_of("normal", "uniform")
    )
    models: tuple[str, ...] = attrs.field(default=DEFAULT_MODELS, converter=_names)
    cold_models: tuple[str, ...] = attrs.field(default=(), converter=_names)
    cold_start: float = attrs.field(default=120.0, validator=_non_negative)
    http_errors: bool = False
    spam_filter: bool = True
    spam_window: float = attrs.field(default=30.0, validator=_non_negative)
    image_format: Literal["png", "jpg"] = attrs.field(
        default="png", validator=_one_of("png", "jpg")
    )
    webhook_drop_rate: float = attrs.field(default=0.0, validator=_probability)
    webhook_duplicate_rate: float = attrs.field(default=0.0, validator=_probability)
    webhook_delay: float = attrs.field(default=0.0, validator=_non_negative)
    faults: FaultConfig = attrs.field(factory=FaultConfig)
    seed: int = 0
    # Large enough for a 1024x1024 PNG sent as base64 several times over.
    max_body_bytes: int = attrs.field(
        default=32 * 1024 * 1024, validator=_compare(lambda value: value >= 1024, "must be >= 1024")
    )
    #: Probability, per fetch answer that says processing, of answering the docs' id-less form
    #: ``{"status": "processing", "messege": "try again later.", "output": "", "tip": ...}``.
    idless_processing_rate: float = attrs.field(default=0.0, validator=_probability)
    #: How a finished job asked with ``"base64": "yes"`` (v4, v6, v7) gives its images: data
    #: URLs, bare base64 strings, or links ending in ``.base64`` whose body is base64 text.
    base64_output: Literal["data_url", "bare", "link"] = attrs.field(
        default="data_url", validator=_one_of("data_url", "bare", "link")
    )
    #: How a v6/v7 success gives ``proxy_links``: a list of URLs (the OpenAPI file), an object
    #: of URLs by image number (``{"0": "https://..."}``, the flux text-to-image page), or ``""``.
    proxy_links: Literal["list", "object", "empty"] = attrs.field(
        default="list", validator=_one_of("list", "object", "empty")
    )
    #: Starting balance of every key (None: unlimited). An accepted job draws
    #: ``samples * price_per_image`` at acceptance; a submission the balance cannot pay is 402.
    wallet: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(_non_negative)
    )
    #: Starting balance per key, overriding ``wallet`` for the keys it names.
    key_wallets: Mapping[str, float] = attrs.field(factory=dict, converter=_float_map, hash=False)
    price_per_image: float = attrs.field(default=0.01, validator=_non_negative)
    #: Models not on the plan: submissions for them are refused with 403.
    premium_models: tuple[str, ...] = attrs.field(default=(), converter=_names)
    #: Queue slots per key, overriding ``queue_limit`` for the keys it names.
    key_queue_limits: Mapping[str, int] = attrs.field(factory=dict, converter=_int_map, hash=False)
    #: The ``retry_after`` a "queue full" answer suggests, in service seconds (the service's
    #: docs show a constant 30); None: the exact wait until one of the key's slots frees.
    queue_full_retry_after: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(_non_negative)
    )

    def __attrs_post_init__(self) -> None:
        if not self.keys:
            raise ConfigError(("keys",), "must name at least one API key")
        unknown = [model for model in self.cold_models if model not in self.models]
        if unknown:
            raise ConfigError(
                ("cold_models",), "not in {models} ({unknown})", unknown=", ".join(unknown)
            )
        # Per-key settings name keys by value; errors say which position, never the value.
        for name, per_key in (
            ("key_wallets", self.key_wallets),
            ("key_queue_limits", self.key_queue_limits),
        ):
            strangers = sum(1 for key in per_key if key not in self.keys)
            if strangers:
                raise ConfigError(
                    (name,), "names {count} key(s) that are not in {keys}", count=strangers
                )
        for key, amount in self.key_wallets.items():
            if isinstance(amount, bool) or not isinstance(amount, int | float) or not amount >= 0:
                raise ConfigError(
                    ("key_wallets",),
                    "gives {keys}[{position}] a wallet that is not a number >= 0",
                    position=self.keys.index(key),
                )
        for key, limit in self.key_queue_limits.items():
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ConfigError(
                    ("key_queue_limits",),
                    "gives {keys}[{position}] a limit that is not an integer >= 1",
                    position=self.keys.index(key),
                )

    def queue_limit_of(self, key: str) -> int:
        """Queue slots of this key."""
        return int(self.key_queue_limits.get(key, self.queue_limit))

    def wallet_of(self, key: str) -> float | None:
        """Starting balance of this key; None: unlimited."""
        value = self.key_wallets.get(key, self.wallet)
        return None if value is None else float(value)

    def scaled(self, service_seconds: float) -> float:
        """Real seconds for a duration given in service seconds."""
        return service_seconds * self.time_scale
