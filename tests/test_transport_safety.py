"""Transport safety: TLS certificates are verified by default, and a plain-http base URL that
leaves the machine is warned about.

The TLS server is a real aiohttp server on 127.0.0.1 with a self-signed certificate made for
the test (with the ``cryptography`` package when it is installed, else the ``openssl`` command).
It works: a client that trusts that certificate explicitly gets through. The library's client,
trusting only the system's authorities, must refuse it before sending anything.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import shutil
import ssl
import subprocess
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import dreambooth_async as dba

pytestmark = pytest.mark.anyio


def self_signed(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, valid for a day."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor the openssl command is available")
        subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


@contextlib.asynccontextmanager
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path, list[str]]]:
    """(https base URL, certificate, paths of the requests that reached a handler)."""
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.method == "GET":
            return web.Response(body=b"\x89PNG\r\n\x1a\n", content_type="image/png")
        return web.json_response({"status": "ok", "queue_num": 0, "queue_time": 0})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}", cert, seen
    finally:
        await runner.cleanup()


async def test_a_self_signed_certificate_is_refused_by_default(tmp_path: Path) -> None:
    async with tls_server(tmp_path) as (url, cert, seen):
        # The server is fine: a client that trusts its certificate gets an answer.
        trusting = ssl.create_default_context(cafile=str(cert))
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/api/v3/system_load", json={}, ssl=trusting) as answer,
        ):
            assert answer.status == 200
        assert seen == ["/api/v3/system_load"]

        async with dba.DreamboothClient("sk-tls", base_url=url, max_retries=0) as client:
            with pytest.raises(dba.TransportError) as caught:
                await client.system_load()
            assert caught.value.may_have_landed is False  # refused before anything was sent
            assert "certificate" in str(caught.value).lower()
            with pytest.raises(dba.TransportError):
                await client.submit(dba.Text2Img(model_id="m", prompt="p"))
            # Downloads from an untrusted https server are refused as well.
            result = dba.GenerationResult(id="1", status="success", output=(f"{url}/x.png",))
            with pytest.raises(dba.DownloadError, match="certificate"):
                await client.download(result, tmp_path / "out", not_found_grace=0)
        assert seen == ["/api/v3/system_load"]  # nothing of the library's reached a handler
        assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


WARNS = [
    "http://stablediffusionapi.com",
    "http://api.example:8080/",
    "HTTP://API.EXAMPLE",
    "http://10.0.0.7",
    "http://0.0.0.0:7860",
    "http://127.0.0.1.nip.example",  # a host name that starts like a loopback address
    "http://127.evil.example",
    "http://localhost.evil.example",
    "http://[2001:db8::1]:80",
]
QUIET = [
    "http://127.0.0.1:7860",
    "http://127.0.0.1",
    "http://127.1.2.3:80",
    "http://localhost:7860",
    "http://LOCALHOST",
    "http://[::1]:7860",
    "https://stablediffusionapi.com",
    "https://127.0.0.1.nip.example",
]


@pytest.mark.parametrize("url", WARNS)
def test_plain_http_off_the_machine_warns(url: str) -> None:
    with pytest.warns(UserWarning, match="plain http"):
        dba.DreamboothClient("sk-x", base_url=url)


@pytest.mark.parametrize("url", QUIET)
def test_https_and_loopback_do_not_warn(url: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dba.DreamboothClient("sk-x", base_url=url)
    assert [str(w.message) for w in caught] == []


def test_the_warning_never_shows_the_key() -> None:
    with pytest.warns(UserWarning) as caught:
        dba.DreamboothClient("sk-never-shown", base_url="http://api.example")
    assert all("sk-never-shown" not in str(w.message) for w in caught)
