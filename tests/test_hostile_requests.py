"""Request validation against *any* value in any field.

test_models.py shows that known-bad values are refused by field name. Here every field of
Text2Img, Img2Img and Inpaint gets values of every type (huge and negative numbers, NaN,
infinities, bytes, odd strings with NUL or lone surrogates or 10,000 characters, containers,
paths, arbitrary objects): construction either succeeds or raises RequestValidationError, nothing
else; and what was accepted converts to a strict-JSON wire body for every API version (or is
refused there, with the same error), so the transport never meets a value it cannot send.
"""

from __future__ import annotations

import decimal
import enum
import fractions
import json
import math
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
import pytest
from _chaos_fixtures import HostileCounter, record_hostile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dreambooth_async as dba
from dreambooth_async._wire import to_wire

CLASSES: list[type[dba.GenerationRequest]] = [dba.Text2Img, dba.Img2Img, dba.Inpaint]
VERSIONS: list[dba.ApiVersion] = ["v3", "v4", "v6"]
FORMS = pytest.mark.parametrize(
    "examples",
    [pytest.param(400, id="quick"), pytest.param(8000, id="slow", marks=pytest.mark.slow)],
)


def required(cls: type[dba.GenerationRequest]) -> dict[str, Any]:
    fields: dict[str, Any] = {"model_id": "midjourney", "prompt": "a cat"}
    if cls is not dba.Text2Img:
        fields["init_image"] = "https://example.com/in.png"
    if cls is dba.Inpaint:
        fields["mask_image"] = "https://example.com/mask.png"
    return fields


class Colour(enum.Enum):
    RED = 1


class Weird:
    def __repr__(self) -> str:
        raise RuntimeError("a repr that explodes")

    def __str__(self) -> str:
        raise RuntimeError("a str that explodes")


def deep_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


odd_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "a\x00b",
            "\ud800",
            "x" * 10_000,
            "../../etc/passwd",
            "https://",
            "http://127.0.0.1:99999/x.png",
            "HTTPS://EXAMPLE.COM/A.PNG",
            "https://example.com/\r\nX-Injected: 1",
            "UniPCMultistepScheduler",
            "unipcmultistepscheduler",
            "yes",
            "no",
            "512",
            "NaN",
            "/" * 5000,
            "a" * 5000,
        ]
    ),
)
numbers = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, 2**31, 2**32, 2**63, 10**400, -(10**400)]),
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e-320, 7.5]),
    st.complex_numbers(max_magnitude=10),
    st.decimals(allow_nan=True),
    st.fractions(),
)
containers = st.one_of(
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
    st.tuples(st.integers()),
    st.frozensets(st.integers(), max_size=3),
)
objects = st.sampled_from(
    [
        object(),
        Weird(),
        Colour.RED,
        dba.Scheduler.DDIMScheduler,
        Path("/"),
        Path("/definitely/not/here.png"),
        Path("x" * 5000),
        PurePosixPath("a/b"),
        b"",
        b"\x89PNG",
        bytearray(b"\x00"),
        memoryview(b"abc"),
        decimal.Decimal("NaN"),
        fractions.Fraction(1, 3),
        ...,
        NotImplemented,
        type,
        print,
    ]
)
anything = st.one_of(
    st.none(), st.booleans(), numbers, odd_text, st.binary(max_size=20), containers, objects
)
extras = st.one_of(
    st.dictionaries(st.text(max_size=8), anything, max_size=3),
    st.sampled_from(
        [
            {"x": math.nan},
            {"x": [math.inf]},
            {"x": 10**5000},
            {"x": deep_list(50_000)},
            {"x": {"y": deep_list(5_000)}},
            {"": None},
            {"\x00": "\x00"},
        ]
    ),
)


def field_names(cls: type[dba.GenerationRequest]) -> list[str]:
    return [a.name for a in attrs.fields(cls)]


@st.composite
def cases(draw: st.DrawFn) -> tuple[type[dba.GenerationRequest], dict[str, Any]]:
    cls = draw(st.sampled_from(CLASSES))
    fields = required(cls)
    names = draw(st.lists(st.sampled_from(field_names(cls)), min_size=1, max_size=3, unique=True))
    for name in names:
        fields[name] = draw(extras if name == "extra" else anything)
    return cls, fields


def build(cls: type[dba.GenerationRequest], fields: dict[str, Any]) -> dba.GenerationRequest | None:
    """The request, or None when it was refused the one allowed way."""
    try:
        return cls(**fields)
    except dba.RequestValidationError as error:
        # The message must be printable whatever the value was.
        assert str(error).startswith(f"{error.field}=") and len(str(error)) < 2000
        return None


def wire_bodies(request: dba.GenerationRequest) -> None:
    for version in VERSIONS:
        try:
            body = to_wire(request, version)
        except dba.RequestValidationError:
            continue
        # Strict JSON: what json.dumps would turn into NaN, Infinity or nothing is not sendable.
        json.dumps(body, allow_nan=False)


@FORMS
def test_any_value_in_any_field_is_accepted_or_refused_by_name(examples: int) -> None:
    counter = HostileCounter()
    accepted = 0

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(case=cases())
    def one(case: tuple[type[dba.GenerationRequest], dict[str, Any]]) -> None:
        nonlocal accepted
        cls, fields = case
        counter.add("request_fields")
        request = build(cls, fields)
        if request is not None:
            accepted += 1
            wire_bodies(request)

    one()
    print(f"accepted {accepted} of {counter.total}")
    counter.add("pathological_value", len(PATHOLOGICAL))  # the fixed cases below
    record_hostile("request_validation", counter.counts, write=examples > 1000)


PATHOLOGICAL: list[tuple[str, Any]] = [
    ("init_image", "a" * 5000),  # a path too long for the file system
    ("init_image", "/" + "a/" * 3000 + "x.png"),
    ("init_image", "\x00"),
    ("init_image", Path("a" * 300)),
    ("mask_image", "a" * 5000),
    ("track_id", 10**5000),  # past int's digit limit when sent as JSON
    ("track_id", -(10**5000)),
    ("extra", {"x": math.nan}),
    ("extra", {"x": -math.inf}),
    ("extra", {"x": deep_list(100_000)}),
    ("extra", {"x": 10**5000}),
    ("webhook", "http://example.com/" + "a" * 100_000),
    ("prompt", "p" * 1_000_000),
    ("seed", 2**32),
    ("guidance_scale", 10**400),
    ("scheduler", "\ud800"),
]


@pytest.mark.parametrize(
    ("field", "value"), PATHOLOGICAL, ids=[f"{f}-{i}" for i, (f, _) in enumerate(PATHOLOGICAL)]
)
def test_pathological_values(field: str, value: Any) -> None:
    for cls in CLASSES:
        if field not in field_names(cls):
            continue
        request = build(cls, {**required(cls), field: value})
        if request is not None:
            wire_bodies(request)
