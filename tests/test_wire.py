"""The converter: requests to the wire form and back, and any answer to a result or an error."""

from __future__ import annotations

import base64
import json
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dreambooth_async as dba
from dreambooth_async._urls import is_http_url
from dreambooth_async._wire import from_wire, parse_response, to_wire

VERSIONS: list[dba.ApiVersion] = ["v3", "v4", "v6"]
FLAGS = (
    "safety_checker",
    "enhance_prompt",
    "multi_lingual",
    "panorama",
    "self_attention",
    "upscale",
    "tomesd",
    "use_karras_sigmas",
    "highres_fix",
    "temp",
)
TEXTS = (
    "embeddings_model",
    "lora_model",
    "lora_strength",
    "algorithm_type",
    "vae",
    "safety_checker_type",
)
MODELLED = {a.name for cls in (dba.Text2Img, dba.Img2Img, dba.Inpaint) for a in attrs.fields(cls)}

# --- valid requests ---------------------------------------------------------------------------

text = st.text(min_size=1, max_size=30).filter(str.strip)
optional_text = st.none() | st.text(max_size=20)
flag = st.none() | st.booleans()
url = st.builds(
    "{}://{}.example{}/{}.png".format,
    st.sampled_from(["http", "https"]),
    st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8),
    st.sampled_from(["", ":8080"]),
    st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=10),
)
json_scalar = st.none() | st.booleans() | st.integers() | st.text(max_size=10)
json_value = st.recursive(
    json_scalar | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
extra = st.dictionaries(
    st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12).filter(
        lambda k: k not in MODELLED and k not in ("key", "num_inference_steps", "base64")
    ),
    json_value,
    max_size=3,
)
#: ("url", str) | ("bytes", data) | ("path", data): paths are written to a file by the test.
image = st.one_of(
    st.tuples(st.just("url"), url),
    st.tuples(st.sampled_from(["bytes", "path"]), st.binary(min_size=1, max_size=64)),
)


@st.composite
def common_fields(draw: st.DrawFn) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "model_id": draw(text),
        "prompt": draw(text),
        "negative_prompt": draw(optional_text),
        "width": draw(st.integers(1, 1024)),
        "height": draw(st.integers(1, 1024)),
        "samples": draw(st.integers(1, 4)),
        "steps": draw(st.integers(1, 50)),
        "guidance_scale": draw(st.none() | st.floats(1, 20) | st.integers(1, 20)),
        "scheduler": draw(
            st.none()
            | st.sampled_from(list(dba.Scheduler))
            | st.sampled_from([s.value for s in dba.Scheduler])
        ),
        "seed": draw(st.none() | st.integers(0, 2**32 - 1)),
        "webhook": draw(st.none() | url),
        "track_id": draw(st.none() | st.integers() | st.text(max_size=10)),
        "clip_skip": draw(st.none() | st.integers(1, 8)),
        "extra": draw(extra),
    }
    fields.update({name: draw(flag) for name in FLAGS})
    fields.update({name: draw(optional_text) for name in TEXTS})
    return fields


@st.composite
def requests(draw: st.DrawFn) -> tuple[type[dba.GenerationRequest], dict[str, Any], dict[str, Any]]:
    """(class, fields, images) with images still as ("url"|"bytes"|"path", data)."""
    cls = draw(st.sampled_from([dba.Text2Img, dba.Img2Img, dba.Inpaint]))
    fields = draw(common_fields())
    images: dict[str, Any] = {}
    if cls is not dba.Text2Img:
        fields["strength"] = draw(st.floats(0, 1) | st.sampled_from([0, 1]))
        images["init_image"] = draw(image)
    if cls is dba.Inpaint:
        images["mask_image"] = draw(image)
    return cls, fields, images


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("images")


def materialise(images: dict[str, Any], directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request values, the values read back from the wire) for each image."""
    given: dict[str, Any] = {}
    expected: dict[str, Any] = {}
    for name, (kind, data) in images.items():
        if kind == "path":
            path = directory / f"{name}.bin"
            path.write_bytes(data)
            given[name] = path
        else:
            given[name] = data
        expected[name] = data  # URLs come back as URLs, local data as bytes
    return given, expected


PROPERTY = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY
@given(case=requests(), version=st.sampled_from(VERSIONS))
def test_every_valid_request_survives_the_round_trip(
    case: tuple[type[dba.GenerationRequest], dict[str, Any], dict[str, Any]],
    version: dba.ApiVersion,
    image_dir: Path,
) -> None:
    cls, fields, images = case
    given_images, expected_images = materialise(images, image_dir)
    request = cls(**fields, **given_images)
    kinds = {kind for kind, _ in images.values()}
    local = bool(kinds - {"url"})

    if local and (version == "v3" or "url" in kinds):
        # v3 takes URLs only; and "base64": "yes" covers both images, so no mixing.
        with pytest.raises(dba.RequestValidationError) as caught:
            to_wire(request, version)
        assert caught.value.field in images
        return

    wire = to_wire(request, version)
    # It is plain JSON, with no key in it.
    assert json.loads(json.dumps(wire)) == wire
    assert "key" not in wire

    # The wire form of docs/protocol.md.
    for name in ("width", "height", "samples"):
        assert wire[name] == str(fields[name])
    steps_name = (
        "steps" if cls is dba.Inpaint and version in ("v3", "v4") else "num_inference_steps"
    )
    other_name = "num_inference_steps" if steps_name == "steps" else "steps"
    assert wire[steps_name] == str(fields["steps"]) and other_name not in wire
    for name in FLAGS:
        if fields[name] is None:
            assert name not in wire
        else:
            assert wire[name] == ("yes" if fields[name] else "no")
    if fields["scheduler"] is not None:
        assert type(wire["scheduler"]) is str
        assert wire["scheduler"] == str(fields["scheduler"])
    if fields["guidance_scale"] is not None:
        assert wire["guidance_scale"] == fields["guidance_scale"]  # a number, not a string
    assert wire["seed"] == fields["seed"]  # null means random: always sent
    if fields["clip_skip"] is not None:
        assert wire["clip_skip"] == str(fields["clip_skip"])
    for name, value in fields["extra"].items():
        assert wire[name] == value
    for name, (kind, data) in images.items():
        assert wire[name] == (data if kind == "url" else base64.b64encode(data).decode())
    assert wire.get("base64") == ("yes" if local else None)

    # And back: the same request.
    back = from_wire(json.loads(json.dumps(wire)), cls.kind, version)
    assert back == attrs.evolve(request, **expected_images)


def test_the_seed_example_body() -> None:
    """The inpaint page's example request, built from Python types."""
    request = dba.Inpaint(
        model_id="your_model_id",
        prompt="a cat sitting on a bench",
        init_image="https://raw.githubusercontent.com/CompVis/stable-diffusion/main/data/a.png",
        mask_image="https://raw.githubusercontent.com/CompVis/stable-diffusion/main/data/m.png",
        width=512,
        height=512,
        samples=1,
        steps=30,
        safety_checker=False,
        enhance_prompt=True,
        guidance_scale=7.5,
        strength=0.7,
        scheduler=dba.Scheduler.UniPCMultistepScheduler,
        seed=None,
    )
    assert to_wire(request, "v3") == {
        "model_id": "your_model_id",
        "prompt": "a cat sitting on a bench",
        "negative_prompt": None,
        "init_image": "https://raw.githubusercontent.com/CompVis/stable-diffusion/main/data/a.png",
        "mask_image": "https://raw.githubusercontent.com/CompVis/stable-diffusion/main/data/m.png",
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
    }


def test_from_wire_refuses_out_of_range_and_junk() -> None:
    body = to_wire(dba.Text2Img(model_id="m", prompt="p"), "v6")
    with pytest.raises(dba.RequestValidationError) as caught:
        from_wire({**body, "num_inference_steps": "51"}, "text2img", "v6")
    assert caught.value.field == "steps"
    with pytest.raises(ValueError):
        from_wire({**body, "width": "wide"}, "text2img", "v6")
    with pytest.raises(ValueError):
        from_wire({**body, "safety_checker": "maybe"}, "text2img", "v6")


# --- any answer: a result, a processing status, or a DreamboothError ---------------------------

statuses = st.sampled_from([200, 201, 204, 400, 401, 402, 403, 404, 422, 429, 500, 502, 503, 504])
vocabulary = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(["success", "processing", "error", "failed", "ok", "", "x"])
        | json_value,
        "id": st.integers() | st.text(max_size=8) | st.floats() | json_value,
        "output": st.lists(st.text(max_size=10), max_size=3) | json_value,
        "eta": st.floats() | st.text(max_size=6) | json_value,
        "message": st.text(max_size=40) | json_value,
        "messege": st.text(max_size=40),
        "tip": json_value,
        "tips": st.text(max_size=40),
        "retry_after": st.floats() | st.text(max_size=6) | json_value,
        "fetch_result": st.text(max_size=20) | json_value,
        "future_links": json_value,
        "meta": json_value,
        "generationTime": st.floats() | st.text(max_size=6),
        "proxy_links": json_value,
        "nsfw_content_detected": json_value,
    },
)
headers = st.fixed_dictionaries(
    {}, optional={"Retry-After": st.text(max_size=30) | st.integers().map(str)}
)
FUZZ = settings(max_examples=300, deadline=None)


def check_answer(status: int, head: dict[str, str], body: bytes) -> None:
    try:
        answer = parse_response(status, head, body)
    except dba.DreamboothError as error:
        str(error), repr(error)  # both must work
        if isinstance(error, dba.RateLimitError) and error.retry_after is not None:
            assert error.retry_after >= 0
        return
    assert isinstance(answer, dba.GenerationResult | dba.Processing)
    assert answer.id is None or (isinstance(answer.id, str) and answer.id)
    if isinstance(answer, dba.GenerationResult):
        assert all(isinstance(u, str) for u in answer.output)
    else:
        assert answer.eta is None or answer.eta >= 0


@FUZZ
@given(status=statuses | st.integers(100, 599), head=headers, body=vocabulary)
def test_any_protocol_shaped_json_maps_to_a_result_or_a_library_error(
    status: int, head: dict[str, str], body: dict[str, Any]
) -> None:
    check_answer(status, head, json.dumps(body).encode())


@FUZZ
@given(
    status=statuses,
    head=headers,
    body=json_value.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=80),
)
def test_any_bytes_map_to_a_result_or_a_library_error(
    status: int, head: dict[str, str], body: bytes
) -> None:
    check_answer(status, head, body)


def test_pathological_bodies() -> None:
    for body in (
        b"[" * 5000 + b"]" * 5000,  # deeper than the JSON decoder goes
        b'{"status": "success", "nsfw_content_detected": ' + b"[" * 900 + b"]" * 900 + b"}",
        b'{"status": "processing", "id": 1e999}',
        b'{"status": "success", "id": ' + b"9" * 5000 + b"}",  # past int's digit limit
        b"\xff\xfe\x00garbage",
        b'{"status": "processing", "id": {"a": 1}}',
        b"null",
        b'"just a string"',
    ):
        check_answer(200, {}, body)


def test_url_check() -> None:
    assert is_http_url("https://stablediffusionapi.com/api/v3/dreambooth")
    assert is_http_url("http://127.0.0.1:7860")
    for bad in ("http://", "ftp://x.com", "http://x.com:0x50", "http://a b", "http://x\n.com", ""):
        assert not is_http_url(bad), bad
