"""How a GenerationResult shows itself in Jupyter: escaped HTML, and a lazily fetched, cached
PNG that never raises."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from anyio.from_thread import start_blocking_portal

import dreambooth_async as dba
from dreambooth_async import _display, sync
from dreambooth_async.emulator import Emulator, EmulatorConfig

PNG = b"\x89PNG\r\n\x1a\n"
FAST = dba.PollPolicy().scaled(0.01)


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with start_blocking_portal("asyncio") as portal:
        emu = Emulator(EmulatorConfig(time_scale=0.01, sync_window=0))
        portal.call(emu.start)
        try:
            yield emu
        finally:
            portal.call(emu.aclose)


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    _display.clear_cache()
    yield
    _display.clear_cache()


def refused_url() -> str:
    # A loopback port nobody listens on: connection refused at once.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone.png"


def test_html_escapes_everything_and_only_links_http_images() -> None:
    result = dba.GenerationResult(
        id="1<2",
        status="success",
        output=('https://cdn.example/a.png?x="><script>alert(1)</script>', "javascript:alert(1)"),
        generation_time=1.5,
        meta={"prompt": "<b>bold</b> & co", "seed": 7, "W": 512, "H": 512},
    )
    text = result._repr_html_()
    assert "<script>" not in text and "<b>bold" not in text
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in text
    assert 'src="https://cdn.example/a.png?x=&quot;&gt;&lt;script&gt;' in text
    assert 'src="javascript' not in text and "<code>javascript:alert(1)</code>" in text
    assert "1&lt;2" in text and "1.50 s" in text and ">seed<" in text


def test_html_without_outputs() -> None:
    result = dba.GenerationResult(id=None, status="success", output=())
    assert "no output images" in result._repr_html_()
    assert result._repr_png_() is None


def test_png_is_fetched_once_and_cached(emulator: Emulator) -> None:
    with sync.DreamboothClient(emulator.key, base_url=emulator.base_url, poll=FAST) as client:
        result = client.text2img(model_id="midjourney", prompt="a fox", seed=3)
    before = emulator.stats.to_json()
    data = result._repr_png_()
    assert data is not None and data.startswith(PNG)
    assert result.output[0] in _display._cache
    assert result._repr_png_() is data  # served from the cache
    assert emulator.stats.to_json() == before  # image files are not API calls
    html = result._repr_html_()
    assert f'src="{result.output[0]}"' in html


def test_png_fetch_failures_return_none() -> None:
    assert _display.fetch_png(refused_url()) is None
    assert _display.fetch_png("file:///etc/passwd") is None
    assert _display.fetch_png("not a url") is None
    assert not _display._cache


def test_jpeg_outputs_are_not_passed_off_as_png() -> None:
    with start_blocking_portal("asyncio") as portal:
        emu = Emulator(EmulatorConfig(time_scale=0.01, sync_window=0, image_format="jpg"))
        portal.call(emu.start)
        try:
            with sync.DreamboothClient(emu.key, base_url=emu.base_url, poll=FAST) as client:
                result = client.text2img(model_id="midjourney", prompt="a fox", seed=3)
            assert result._repr_png_() is None
        finally:
            portal.call(emu.aclose)
