"""Downloads from a hostile service: file names cannot leave the output folder, and what is too
big, of the wrong type or cut short leaves nothing behind.

A small aiohttp server plays the service: its generation answer lists output URLs crafted to
escape (``../``, ``%2e%2e``, encoded slashes and backslashes, absolute paths, NUL, very long and
unicode names, names that collide), and its file route serves whatever each test needs. Every
download goes through the real client over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import re
import string
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
from _chaos_fixtures import HostileCounter, record_hostile
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

import dreambooth_async as dba

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n"
CAP = 64 * 1024


@attrs.define
class Hostile:
    url: str = ""
    outputs: list[str] = attrs.field(factory=list)
    served: list[str] = attrs.field(factory=list)

    def body_for(self, path_qs: str) -> bytes:
        # Each URL gets its own bytes, so that a file can be traced to the URL it came from.
        return PNG + path_qs.encode()


HOSTILE = web.AppKey("hostile", Hostile)


async def files(request: web.Request) -> web.StreamResponse:
    hostile: Hostile = request.app[HOSTILE]
    hostile.served.append(request.path_qs)
    mode = request.match_info["tail"].split("/", 1)[0]
    if mode == "big-cl":
        return web.Response(body=PNG + b"\0" * CAP, content_type="image/png")
    if mode == "exact":
        return web.Response(body=PNG + b"\0" * (CAP - len(PNG)), content_type="image/png")
    if mode in ("big-chunked", "drop"):
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        if mode == "big-chunked":
            response.enable_chunked_encoding()
        else:
            response.content_length = CAP  # promised, never delivered
        await response.prepare(request)
        await response.write(PNG + b"\0" * 4096)
        if mode == "drop":
            assert request.transport is not None
            request.transport.abort()
            return response
        for _ in range(CAP // 4096 + 1):
            await response.write(b"\0" * 4096)
        await response.write_eof()
        return response
    if mode == "html":
        return web.Response(body=b"<html>not an image</html>", content_type="text/html")
    if mode == "octet":
        return web.Response(body=PNG, content_type="application/octet-stream")
    if mode == "json":
        return web.Response(body=b'{"a": 1}', content_type="application/json")
    if mode == "none":
        response = web.Response(body=PNG)
        response.headers.popall("Content-Type", None)
        return response
    if mode == "missing":
        raise web.HTTPNotFound()
    return web.Response(body=hostile.body_for(request.path_qs), content_type="image/png")


async def generation(request: web.Request) -> web.Response:
    hostile: Hostile = request.app[HOSTILE]
    return web.json_response(
        {"status": "success", "id": 77, "output": hostile.outputs, "meta": {"seed": 1}}
    )


@contextlib.asynccontextmanager
async def hostile_service() -> AsyncIterator[Hostile]:
    hostile = Hostile()
    app = web.Application()
    app[HOSTILE] = hostile
    app.router.add_post("/api/v3/dreambooth", generation)
    app.router.add_get("/{tail:.*}", files)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hostile.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield hostile
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[tuple[Hostile, dba.DreamboothClient]]:
    async with hostile_service() as hostile:
        client = dba.DreamboothClient("sk-paths", base_url=hostile.url, api_version="v3")
        async with client:
            yield hostile, client


async def generate(
    hostile: Hostile, client: dba.DreamboothClient, outputs: list[str]
) -> dba.GenerationResult:
    hostile.outputs = outputs
    return await client.generate(dba.Text2Img(model_id="m", prompt="p"))


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


SAFE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")


def escape_paths(base: str) -> list[str]:
    return [
        f"{base}/files/../../../../etc/passwd",
        f"{base}/files/%2e%2e%2f%2e%2e%2fescape.png",
        f"{base}/files/..%2F..%2F..%2Fescape2.png",
        f"{base}/files/%2Fabsolute%2Fpath.png",
        f"{base}//absolute//again.png",
        f"{base}/files/..%5C..%5Cwindows.png",
        f"{base}/files/C:%5CWindows%5Csystem32.png",
        f"{base}/files/nul%00byte.png",
        f"{base}/files/" + "L" * 3000 + ".png",
        f"{base}/files/%E2%80%AE%E2%80%8Bgnp.exe-%C3%BC.png",
        f"{base}/files/",
        f"{base}/files/.",
        f"{base}/files/%2e%2e",
        f"{base}/files/.hidden.png",
        f"{base}/files/CON",
        f"{base}/files/x.png?name=../../evil.png",
        f"{base}/files/space%20and%09tab.png",
        f"{base}/a/0.png",
        f"{base}/b/0.png",  # the same name as the one above, from another directory
        f"{base}/c/0.PNG",
        f"{base}/files/a%3F.png",
        f"{base}/files/a%2A.png",  # cleans to the same name as the one above
    ]


async def test_hostile_output_names_stay_in_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("untouched")
    before = snapshot(tmp_path)
    async with session() as (hostile, client):
        urls = escape_paths(hostile.url)
        result = await generate(hostile, client, urls)
        assert list(result.output) == urls
        paths = await client.download(result, folder)
        assert len(hostile.served) == len(urls)
    resolved = folder.resolve()
    # One file per URL, each directly in the folder, under a plain name, none twice.
    assert len(paths) == len(urls)
    assert len({p.name for p in paths}) == len(paths), sorted(p.name for p in paths)
    for path in paths:
        assert path.parent == resolved
        assert SAFE.match(path.name), path.name
        assert len(path.name) <= 130
    on_disk = sorted(p.name for p in folder.iterdir())
    assert on_disk == sorted(p.name for p in paths)
    # Every file holds what its own URL served: nothing overwritten by a colliding name.
    served = {hostile.body_for(qs) for qs in hostile.served}
    assert {p.read_bytes() for p in paths} == served
    # Nothing appeared or changed outside the folder.
    ours = {str(p.relative_to(tmp_path)) for p in folder.rglob("*")} | {folder.name}
    assert snapshot(tmp_path) - ours == before
    assert (outside / "passwd").read_text() == "untouched"


async def test_a_symlink_planted_in_the_folder_is_not_followed(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    (folder / "planted.png").symlink_to(victim)
    async with session() as (hostile, client):
        result = await generate(hostile, client, [f"{hostile.url}/files/planted.png"])
        with pytest.raises(dba.DownloadError, match="outside"):
            await client.download(result, folder)
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in folder.iterdir()) == ["planted.png"]


REFUSED = [
    ("big-cl", "exceeds max_bytes"),
    ("big-chunked", "more than max_bytes"),
    ("html", "not an image"),
    ("octet", "not an image"),
    ("json", "not an image"),
    ("none", "not an image"),
    ("drop", "failed"),
    ("missing", "404"),
]


@pytest.mark.parametrize(("mode", "message"), REFUSED)
async def test_refused_downloads_leave_nothing(tmp_path: Path, mode: str, message: str) -> None:
    folder = tmp_path / "out"
    async with session() as (hostile, client):
        good = f"{hostile.url}/files/first.png"
        result = await generate(hostile, client, [good, f"{hostile.url}/{mode}/x.png"])
        with pytest.raises(dba.DownloadError, match=message) as caught:
            await client.download(result, folder, max_bytes=CAP, not_found_grace=0.05)
        assert caught.value.url == result.output[1]
    # The good first file is whole; of the refused one there is no trace, partial or final.
    assert sorted(p.name for p in folder.iterdir()) == ["first.png"]


async def test_exactly_the_cap_is_allowed(tmp_path: Path) -> None:
    async with session() as (hostile, client):
        result = await generate(hostile, client, [f"{hostile.url}/exact/x.png"])
        [path] = await client.download(result, tmp_path, max_bytes=CAP)
    assert path.stat().st_size == CAP


async def test_a_batch_refuses_a_bad_output_and_names_files_by_key(tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = tmp_path / "manifest.jsonl"
    async with session() as (hostile, client):
        hostile.outputs = [f"{hostile.url}/files/..%2F..%2Fowned.png", f"{hostile.url}/html/x"]
        # A result with one hostile name and one file that is not an image: the item fails.
        items = await client.gather(
            [dba.Text2Img(model_id="m", prompt="p")], manifest=manifest, download_to=out
        )
        assert isinstance(items[0].error, dba.DownloadError)
        hostile.outputs = [f"{hostile.url}/files/..%2F..%2Fowned.png", f"{hostile.url}/c/0.png"]
        items = await client.gather(
            [dba.Text2Img(model_id="m", prompt="q")], manifest=manifest, download_to=out
        )
    [item] = items
    assert item.ok and item.key is not None
    names = sorted(p.name for p in out.iterdir() if p.is_file())
    assert names == [f"{item.key}-0.png", f"{item.key}-1.png"]
    staging = out / ".partial"
    assert not staging.exists() or list(staging.iterdir()) == []
    assert not (tmp_path / "owned.png").exists()
    states = dba.read_manifest(manifest)
    assert sorted(s.status for s in states.values()) == ["done", "failed"]
    assert {s.error for s in states.values() if s.status == "failed"} == {"DownloadError"}


# --- the name function itself -----------------------------------------------------------------

path_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"]) | st.sampled_from(list("./\\%\x00:")),
    max_size=300,
)


def check_name(url: str) -> None:
    name = dba.safe_file_name(url, "fallback-0")
    assert SAFE.match(name), (url, name)
    assert name not in (".", "..") and not name.startswith(".")
    assert len(name) <= 120
    assert os.sep not in name and "\x00" not in name


@pytest.mark.parametrize(
    "examples",
    [pytest.param(500, id="quick"), pytest.param(20_000, id="slow", marks=pytest.mark.slow)],
)
def test_safe_file_name_is_always_one_plain_name(examples: int) -> None:
    counter = HostileCounter()

    @settings(max_examples=examples, deadline=None, database=None)
    @given(segments=st.lists(path_text, max_size=4), query=st.text(max_size=20))
    def one(segments: list[str], query: str) -> None:
        quoted = "/".join(urllib.parse.quote(s, safe="") for s in segments)
        check_name(f"https://cdn.example/{quoted}?{urllib.parse.quote(query)}")
        check_name(f"https://cdn.example/{'/'.join(segments)}")
        counter.add("output_url_name", 2)

    one()
    for url in escape_paths("http://127.0.0.1:1"):
        check_name(url)
    # The hostile URLs, refused downloads and the planted symlink of the tests above.
    counter.add("hostile_download", len(escape_paths("")) + len(REFUSED) + 1)
    record_hostile("output_paths_and_downloads", counter.counts, write=examples > 1000)


def test_safe_file_name_keeps_plain_names() -> None:
    for name in ("a.png", "b792ad2b-4488-435d-9264-7d2f4dcb8433-0.png", "x_1.JPG"):
        assert dba.safe_file_name(f"https://cdn.example/generations/{name}", "f") == name
    assert set(string.ascii_letters) <= set(
        dba.safe_file_name("https://x/" + string.ascii_letters, "f")
    )
