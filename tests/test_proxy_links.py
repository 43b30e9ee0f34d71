"""``proxy_links`` in every documented shape: a list of URLs (the OpenAPI file), ``""`` (the
notes), and an object of URLs by image number (``{"0": "https://cdn..."}``, the flux
text-to-image page's example and its table row "proxy_links | object")."""

from __future__ import annotations

import json
from typing import Any

import pytest

import dreambooth_async as dba
from dreambooth_async._wire import parse_response
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig

SECRET = "sk-proxy-links-5e1a9c"
SCALE = 0.02
OUTPUT = ["https://r2.example/generations/a-0.png"]


def _result(links: Any) -> dba.GenerationResult:
    body = {"status": "success", "id": 7, "output": OUTPUT, "proxy_links": links}
    answer = parse_response(200, {}, json.dumps(body).encode())
    assert isinstance(answer, dba.GenerationResult)
    return answer


@pytest.mark.parametrize(
    ("links", "expected"),
    [
        # The flux text-to-image page's example, word for word.
        ({"0": "https://cdn.modelslab.com/generations/abc123.png"}, ("https://cdn.modelslab.com/generations/abc123.png",)),
        # Numbered keys in number order, not text order ("10" after "9").
        (
            {str(n): f"https://cdn.example/{n}.png" for n in (10, 2, 0, 9, 1)},
            tuple(f"https://cdn.example/{n}.png" for n in (0, 1, 2, 9, 10)),
        ),
        (["https://cdn.example/a.png", "https://cdn.example/b.png"], ("https://cdn.example/a.png", "https://cdn.example/b.png")),
        ("https://cdn.example/one.png", ("https://cdn.example/one.png",)),
        ("", ()),
        ({}, ()),
        (None, ()),
        # Whatever is not a URL string is left out, not an error.
        ({"0": "https://cdn.example/a.png", "1": None, "2": 5, "3": ["x"], "4": ""}, ("https://cdn.example/a.png",)),
        # Keys that are not numbers come after the numbered ones, by name.
        ({"b": "https://cdn.example/b.png", "1": "https://cdn.example/1.png", "a": "https://cdn.example/a.png"},
         ("https://cdn.example/1.png", "https://cdn.example/a.png", "https://cdn.example/b.png")),
        # A number too long to be an image's is not turned into a huge int.
        ({"9" * 5000: "https://cdn.example/x.png"}, ("https://cdn.example/x.png",)),
    ],
    ids=["flux page", "number order", "list", "string", "empty string", "empty object", "null",
         "junk values", "named keys", "huge key"],
)  # fmt: skip
def test_every_shape_is_read(links: Any, expected: tuple[str, ...]) -> None:
    assert _result(links).proxy_links == expected


@pytest.mark.anyio
@pytest.mark.parametrize("api_version", ["v6", "v7"])
@pytest.mark.parametrize("shape", ["list", "object", "empty"])
@pytest.mark.parametrize("queued", [False, True], ids=["answered at once", "fetched"])
async def test_the_emulator_answers_in_each_shape_and_the_client_reads_it(
    api_version: dba.ApiVersion, shape: str, queued: bool
) -> None:
    # A job longer than the sync window is queued, so its success comes from fetch.
    base = 6.0 if queued else 0.1
    config = EmulatorConfig(
        keys=(SECRET,),
        time_scale=SCALE,
        cost=CostModel(base=base, per_step=0, per_sample=0, per_megapixel=0, noise=0),
        spam_filter=False,
        proxy_links=shape,  # type: ignore[arg-type]
    )
    async with Emulator(config) as emu:
        client = dba.DreamboothClient(
            SECRET,
            base_url=emu.base_url,
            api_version=api_version,
            poll=dba.PollPolicy().scaled(SCALE),
        )
        async with client:
            request = dba.Text2Img(model_id="midjourney", prompt="a quay", seed=1, samples=2)
            job = await client.submit(request)
            assert job.done() is not queued
            result = await job.wait()
    assert len(result.output) == 2
    raw = result.raw["proxy_links"]
    if shape == "empty":
        assert raw == "" and result.proxy_links == ()
    else:
        assert isinstance(raw, dict if shape == "object" else list)
        assert result.proxy_links == result.output


def test_the_emulator_refuses_an_unknown_shape() -> None:
    with pytest.raises(ValueError, match="proxy_links"):
        EmulatorConfig(proxy_links="tuple")  # type: ignore[arg-type]
