"""What the daemon listens on: HTTPS with the configured certificate, /metrics on its own port."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from pdpj_async import daemon
from pdpj_async.config import HttpConfig, decode_config
from pdpj_async.errors import ConfigError
from pdpj_async.server import metrics
from tests.fixtures.app import stack_config
from tests.system.daemon import Daemon

OPENSSL_REQ = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
               "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]  # fmt: skip


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here (cryptography, else the openssl CLI)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        _with_cryptography(cert, key)
    except ImportError:
        try:
            subprocess.run(
                [*OPENSSL_REQ, "-keyout", str(key), "-out", str(cert)],
                check=True,
                capture_output=True,
            )
        except (OSError, subprocess.CalledProcessError):
            pytest.skip("neither the cryptography package nor the openssl CLI is available")
    return cert, key


def _with_cryptography(cert_path: Path, key_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)


async def get(url: str, **kwargs: Any) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url, **kwargs) as resp:
        return resp.status, await resp.text()


async def wait_up(url: str, proc: Daemon, **kwargs: Any) -> None:
    async with asyncio.timeout(30):
        while True:
            assert proc.proc is not None and proc.proc.poll() is None, proc.tail()
            try:
                await get(url, **kwargs)
                return
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)


async def test_the_daemon_serves_https_with_the_configured_certificate(
    db_dsn: str, tmp_path: Path, pdpj_config: Any, unused_tcp_port_factory: Any
) -> None:
    cert, key = self_signed(tmp_path)
    port = unused_tcp_port_factory()
    config = stack_config(
        db_dsn,
        tmp_path,
        pdpj_config,
        port,
        http={"tls_cert_file": str(cert), "tls_key_file": str(key), "public_url": ""},
    )
    proc = Daemon(config, tmp_path / "daemon.log")
    proc.start()
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        url = f"https://127.0.0.1:{port}/healthz"
        await wait_up(url, proc, ssl=trusted)
        assert (await get(url, ssl=trusted))[0] == 200
        # Plain http on the same port gets no answer from the application.
        with pytest.raises(aiohttp.ClientError):
            await get(f"http://127.0.0.1:{port}/healthz")
        # Nor does a client that does not trust the certificate.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await get(url)
    finally:
        proc.kill()


async def test_metrics_move_to_their_own_loopback_listener(
    db_dsn: str, tmp_path: Path, pdpj_config: Any, unused_tcp_port_factory: Any
) -> None:
    port, metrics_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    config = stack_config(
        db_dsn, tmp_path, pdpj_config, port, metrics={"listen": f"127.0.0.1:{metrics_port}"}
    )
    proc = Daemon(config, tmp_path / "daemon.log")
    proc.start()
    try:
        await proc.wait_ready()
        status, body = await get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and "pdpj_async_queue_depth" in body
        assert (await get(f"{proc.url}/metrics"))[0] == 404
        assert (await get(f"http://127.0.0.1:{metrics_port}/healthz"))[0] == 404
    finally:
        proc.kill()


def test_metrics_listen_must_be_a_loopback_host_and_port() -> None:
    assert metrics.listen_address("") is None
    assert metrics.listen_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert metrics.listen_address("[::1]:9464") == ("::1", 9464)
    for bad in ("0.0.0.0:9464", "192.0.2.1:9464", "127.0.0.1", "127.0.0.1:0", "host:9464"):
        with pytest.raises(ConfigError, match=r"^metrics\.listen: expected a loopback"):
            metrics.listen_address(bad)


def test_tls_needs_both_files_and_names_them_when_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set both or neither"):
        daemon.tls_context(HttpConfig(tls_cert_file=str(tmp_path / "cert.pem")))
    missing = HttpConfig(tls_cert_file=str(tmp_path / "c"), tls_key_file=str(tmp_path / "k"))
    with pytest.raises(ConfigError, match=r"^http\.tls_cert_file, http\.tls_key_file: cannot"):
        daemon.tls_context(missing)
    assert daemon.tls_context(HttpConfig()) is None


def test_a_public_bind_over_plain_http_is_warned_about() -> None:
    """Checked without binding: tests use loopback addresses only."""
    cases = {
        ("0.0.0.0", "http://pdpj.example.org"): True,
        ("10.0.0.5", "http://10.0.0.5:8080"): True,
        ("0.0.0.0", "https://pdpj.example.org"): False,
        ("127.0.0.1", "http://127.0.0.1:8080"): False,
        ("::1", "http://[::1]:8080"): False,
    }
    for (host, public_url), warned in cases.items():
        http = decode_config({"http": {"host": host, "public_url": public_url}}).http
        with capture_logs() as logs:
            assert daemon.warn_if_plain_http(http, public_url) is warned
        events = [e for e in logs if e["event"] == "plain_http_on_a_public_interface"]
        assert bool(events) is warned, (host, public_url)
