"""Request validation: every out-of-range value is refused by field name, before any I/O.

The property tests go through the client's shortcuts (``client.text2img(**fields)`` builds the
request inside the client), against a live replay server that must receive nothing at all.
"""

from __future__ import annotations

import math
import string
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from replay_server import ReplayServer, fast_client_options

import dreambooth_async as dba
from dreambooth_async._urls import is_http_url

URL = "https://example.com/in.png"
MASK = "https://example.com/mask.png"
CLASSES: list[type[dba.GenerationRequest]] = [dba.Text2Img, dba.Img2Img, dba.Inpaint]
IMAGE_CLASSES: list[type[dba.GenerationRequest]] = [dba.Img2Img, dba.Inpaint]


def required(cls: type[dba.GenerationRequest]) -> dict[str, Any]:
    fields: dict[str, Any] = {"model_id": "midjourney", "prompt": "a cat"}
    if cls is not dba.Text2Img:
        fields["init_image"] = URL
    if cls is dba.Inpaint:
        fields["mask_image"] = MASK
    return fields


# --- invalid values, per field ----------------------------------------------------------------

junk = st.one_of(st.text(max_size=8), st.lists(st.integers(), max_size=2), st.just(object()))


def bad_int(lo: int, hi: int, *, optional: bool = False) -> st.SearchStrategy[Any]:
    wrong_type = st.one_of(st.booleans(), st.floats(), junk)
    out_of_range = st.one_of(st.integers(max_value=lo - 1), st.integers(min_value=hi + 1))
    return st.one_of(out_of_range, wrong_type, st.nothing() if optional else st.none())


def bad_float(lo: float, hi: float, *, optional: bool = False) -> st.SearchStrategy[Any]:
    outside = st.floats(allow_nan=True).filter(lambda x: math.isnan(x) or not lo <= x <= hi)
    ints = st.integers().filter(lambda x: not lo <= x <= hi)
    wrong_type = st.one_of(st.booleans(), junk)
    return st.one_of(outside, ints, wrong_type, st.nothing() if optional else st.none())


blank_text = st.text(alphabet=" \t\n\r\u00a0\u2003", max_size=4)
not_a_flag = st.one_of(st.integers(), st.text(max_size=4), st.floats())
not_text = st.one_of(st.integers(), st.floats(), st.booleans(), st.lists(st.text(), max_size=1))
bad_url = st.one_of(
    st.text(max_size=20).filter(lambda s: not is_http_url(s)),
    st.sampled_from(
        [
            "ftp://example.com/hook",
            "http://",
            "https:///path",
            "http://exa mple.com/",
            "http://example.com:99999/",
            "http://example.com/\nInjected: yes",
            "//example.com/hook",
            "example.com/hook",
        ]
    ),
    st.integers(),
)
bad_image = st.one_of(
    st.just(b""),
    st.just(bytearray()),
    st.sampled_from(["http://", "https://exa mple.com/a.png", "/no/such/file.png", ".", ""]),
    st.text(alphabet=string.ascii_letters + "/._-", max_size=12).filter(
        lambda s: not s.startswith(("http://", "https://")) and not Path(s).is_file()
    ),
    st.integers(),
    st.none(),
)
bad_scheduler = st.one_of(
    st.text(max_size=30).filter(lambda s: s not in dba.Scheduler.__members__),
    st.sampled_from(["unipcmultistepscheduler", "Euler", "UniPCMultistepScheduler "]),
    st.integers(),
    st.booleans(),
)
bad_seed = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=2**32),
    st.booleans(),
    st.floats(),
    st.text(max_size=4),
)
bad_extra = st.one_of(
    st.fixed_dictionaries({"key": st.text()}),
    st.sampled_from(["width", "steps", "prompt", "num_inference_steps", "base64"]).map(
        lambda name: {name: "1"}
    ),
    st.just({"x": object()}),
    st.just({1: "x"}),
    st.just(["not", "a", "mapping"]),
)

SHARED: dict[str, st.SearchStrategy[Any]] = {
    "model_id": st.one_of(blank_text, st.none(), not_text),
    "prompt": st.one_of(blank_text, st.none(), not_text),
    "negative_prompt": not_text,
    "width": bad_int(1, 1024),
    "height": bad_int(1, 1024),
    "samples": bad_int(1, 4),
    "steps": bad_int(1, 50),
    "guidance_scale": bad_float(1, 20, optional=True),
    "scheduler": bad_scheduler,
    "seed": bad_seed,
    "webhook": bad_url,
    "track_id": st.one_of(st.floats(), st.booleans(), st.lists(st.integers(), max_size=1)),
    "clip_skip": bad_int(1, 8, optional=True),
    "safety_checker": not_a_flag,
    "enhance_prompt": not_a_flag,
    "multi_lingual": not_a_flag,
    "panorama": not_a_flag,
    "self_attention": not_a_flag,
    "upscale": not_a_flag,
    "tomesd": not_a_flag,
    "use_karras_sigmas": not_a_flag,
    "highres_fix": not_a_flag,
    "temp": not_a_flag,
    "embeddings_model": not_text,
    "lora_model": not_text,
    "lora_strength": not_text,
    "algorithm_type": not_text,
    "vae": not_text,
    "safety_checker_type": not_text,
    "extra": bad_extra,
}
IMAGE_ONLY: dict[str, st.SearchStrategy[Any]] = {
    "strength": bad_float(0.0, 1.0),
    "init_image": bad_image,
}


def test_every_validated_field_has_an_invalid_strategy() -> None:
    # A new field must come with its invalid values here, or this fails.
    modelled = {a.name for cls in CLASSES for a in attrs.fields(cls)}
    assert modelled == set(SHARED) | set(IMAGE_ONLY) | {"mask_image"}


# One server and one client for the whole module: hypothesis runs many examples per test.
@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def idle_server() -> AsyncIterator[ReplayServer]:
    async with ReplayServer() as server:
        yield server


@pytest.fixture(scope="module")
async def client(idle_server: ReplayServer) -> AsyncIterator[dba.DreamboothClient]:
    async with dba.DreamboothClient(
        base_url=idle_server.url, **fast_client_options(api_version="v4")
    ) as client:
        yield client


def shortcut(client: dba.DreamboothClient, cls: type[dba.GenerationRequest]) -> Callable[..., Any]:
    return {
        dba.Text2Img: client.text2img,
        dba.Img2Img: client.img2img,
        dba.Inpaint: client.inpaint,
    }[cls]


async def assert_refused(
    client: dba.DreamboothClient,
    server: ReplayServer,
    cls: type[dba.GenerationRequest],
    field: str,
    value: Any,
) -> None:
    fields = {**required(cls), field: value}
    with pytest.raises(dba.RequestValidationError) as caught:
        await shortcut(client, cls)(**fields)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}=")
    assert "must be" in str(caught.value)
    assert server.count() == 0


PROPERTY = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def refusal_test(
    field: str, values: st.SearchStrategy[Any], classes: list[type[dba.GenerationRequest]]
) -> Callable[..., Any]:
    """A property test for one field. Built per field (not parametrized) so that hypothesis
    draws everything before the coroutine starts: drawing inside an anyio test with
    ``st.data()`` breaks when hypothesis abandons an oversized example."""

    @pytest.mark.anyio
    @PROPERTY
    @given(cls=st.sampled_from(classes), value=values)
    async def test(
        cls: type[dba.GenerationRequest],
        value: Any,
        client: dba.DreamboothClient,
        idle_server: ReplayServer,
    ) -> None:
        await assert_refused(client, idle_server, cls, field, value)

    test.__name__ = f"test_out_of_range_{field}_is_refused_and_nothing_is_sent"
    return test


for _field, _values in SHARED.items():
    _test = refusal_test(_field, _values, CLASSES)
    globals()[_test.__name__] = _test
for _field, _values, _classes in [
    ("strength", IMAGE_ONLY["strength"], IMAGE_CLASSES),
    ("init_image", bad_image, IMAGE_CLASSES),
    ("mask_image", bad_image, [dba.Inpaint]),
]:
    _test = refusal_test(_field, _values, _classes)
    globals()[_test.__name__] = _test
del _field, _values, _classes, _test


@pytest.mark.anyio
async def test_local_images_on_v3_are_refused_before_sending(tmp_path: Path) -> None:
    image = tmp_path / "in.png"
    image.write_bytes(b"\x89PNG fake")
    async with ReplayServer() as server:
        async with dba.DreamboothClient(base_url=server.url, **fast_client_options()) as client:
            for value in (b"\x89PNG", image, str(image)):
                with pytest.raises(dba.RequestValidationError, match="v3") as caught:
                    await client.img2img(model_id="m", prompt="p", init_image=value)
                assert caught.value.field == "init_image"
            with pytest.raises(dba.RequestValidationError) as caught:
                await client.inpaint(model_id="m", prompt="p", init_image=URL, mask_image=b"x")
            assert caught.value.field == "mask_image"
        assert server.count() == 0


@pytest.mark.anyio
async def test_mixing_a_url_and_local_data_is_refused(tmp_path: Path) -> None:
    async with ReplayServer() as server:
        options = fast_client_options(api_version="v6")
        async with dba.DreamboothClient(base_url=server.url, **options) as client:
            with pytest.raises(dba.RequestValidationError, match="both") as caught:
                await client.inpaint(model_id="m", prompt="p", init_image=URL, mask_image=b"x")
            assert caught.value.field == "mask_image"
        assert server.count() == 0


@pytest.mark.anyio
async def test_a_file_gone_since_construction_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "in.png"
    image.write_bytes(b"png")
    request = dba.Img2Img(model_id="m", prompt="p", init_image=image)
    image.unlink()
    async with ReplayServer() as server:
        options = fast_client_options(api_version="v4")
        async with dba.DreamboothClient(base_url=server.url, **options) as client:
            with pytest.raises(dba.RequestValidationError, match="readable file"):
                await client.submit(request)
        assert server.count() == 0


# --- the classes ------------------------------------------------------------------------------


def test_defaults_and_kinds() -> None:
    request = dba.Text2Img(model_id="m", prompt="p")
    assert (request.width, request.height, request.samples, request.steps) == (512, 512, 1, 30)
    assert request.seed is None and request.scheduler is None
    assert (dba.Text2Img.kind, dba.Img2Img.kind, dba.Inpaint.kind) == (
        "text2img",
        "img2img",
        "inpaint",
    )


def test_limits_are_inclusive() -> None:
    for width, samples, steps, scale, seed in [(1, 1, 1, 1, 0), (1024, 4, 50, 20.0, 2**32 - 1)]:
        dba.Text2Img(
            model_id="m",
            prompt="p",
            width=width,
            height=width,
            samples=samples,
            steps=steps,
            guidance_scale=scale,
            seed=seed,
        )
    for strength in (0, 0.0, 1, 1.0):
        dba.Img2Img(model_id="m", prompt="p", init_image=URL, strength=strength)


def test_scheduler_accepts_the_enum_and_its_names() -> None:
    assert len(dba.Scheduler) == 18
    for scheduler in dba.Scheduler:
        by_name = dba.Text2Img(model_id="m", prompt="p", scheduler=scheduler.value)
        assert by_name.scheduler is scheduler
        assert dba.Text2Img(model_id="m", prompt="p", scheduler=scheduler) == by_name


def test_requests_are_frozen_hashable_and_keep_their_own_extra() -> None:
    extra = {"custom_flag": "yes"}
    request = dba.Text2Img(model_id="m", prompt="p", extra=extra)
    extra["custom_flag"] = "no"
    assert request.extra == {"custom_flag": "yes"}
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        request.width = 5  # type: ignore[misc]
    same = dba.Text2Img(model_id="m", prompt="p", extra={"custom_flag": "yes"})
    assert request == same and hash(request) == hash(same)
    assert len({request, same}) == 1
    image = dba.Img2Img(model_id="m", prompt="p", init_image=bytearray(b"png"))
    assert image.init_image == b"png" and isinstance(image.init_image, bytes)
    hash(image)


def test_image_inputs(tmp_path: Path) -> None:
    path = tmp_path / "in.png"
    path.write_bytes(b"png")
    for value in (URL, "HTTPS://EXAMPLE.COM/A.PNG", "http://127.0.0.1:8000/a.png", b"png", path):
        dba.Img2Img(model_id="m", prompt="p", init_image=value)
    request = dba.Img2Img(model_id="m", prompt="p", init_image=b"\x00" * 10_000)
    assert "init_image" not in repr(request)  # image data never floods a repr or a log


def test_result_seed_and_processing_defaults() -> None:
    result = dba.GenerationResult(id="1", status="success", output=(), meta={"seed": "7"})
    assert result.seed == 7
    assert dba.GenerationResult(id="1", status="success", output=(), meta={}).seed is None
    assert dba.GenerationResult(id="1", status="ok", output=(), meta={"seed": "x"}).seed is None
    assert dba.Processing(id="3").status == "processing"
