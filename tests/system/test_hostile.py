"""Hostile input against a running daemon: fuzzing from the OpenAPI document, malformed
numbers, oversized requests, path traversal, and every way to hold the wrong key."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest

from pdpj_async import keys
from pdpj_async.config import PdpjConfig
from tests.fixtures.sandbox import Sandbox
from tests.system.daemon import Daemon
from tests.system.harness import daemon_config, make_number

NUMBER = make_number(9101)

# Digits, but not ASCII ones: Arabic-Indic and full-width.
ARABIC_INDIC = "".join(chr(0x0660 + int(c)) for c in "12345678901234567890")
FULL_WIDTH = "".join(chr(0xFF10 + int(c)) for c in "12345678901234567890")
MALFORMED_NUMBERS = [
    "", " ", "0", "1" * 19, "1" * 21, "9" * 20, "0" * 20, "00000000000000000000",
    "0001234-56.2025.8.26.0100",  # wrong check digits
    "0001234-5.2025.8.26.0100", "0001234-567.2025.8.26.0100", "0001234-56.202.8.26.0100",
    "0001234-56.2025.0.26.0100",  # segment 0
    "0001234_56_2025_8_26_0100", "0001234-56/2025/8/26/0100", "0001234-56.2025.8.26.01OO",
    "O001234-56.2025.8.26.0100", "0001234-56.2025.8.26.0100.", ".0001234-56.2025.8.26.0100",
    "0001234--56.2025.8.26.0100", "abc", "null", "undefined", "NaN", "-1", "1e20",
    "0x1234", ARABIC_INDIC,
    FULL_WIDTH,
    "00012345620258260100\x00", "0001234%00", "%00", "%2e%2e", "..", "...",
    "' OR 1=1 --", "1; DROP TABLE pdpj.jobs", "<script>alert(1)</script>", "${jndi:x}",
    "{{7*7}}", "0001234-56.2025.8.26.0100' --", "\u202e0010", "\ufeff00012345620258260100",
    "0" * 200, "9" * 5000, "😀" * 20, "\t\n", "%0d%0aX-Injected: 1", "[]", "{}",
    "true", "0001234 56 2025 8 26 0100",
]  # fmt: skip
TRAVERSALS = [
    "..", "../..", "..%2f..%2fetc%2fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "....//....//etc/passwd", "..\\..\\windows", "%252e%252e%252f", "/etc/passwd",
    "..%00", "%c0%ae%c0%ae%2f",
]  # fmt: skip
PATHS = [
    "/api/v1/processes/{}",
    "/api/v1/processes/{}/status",
    "/api/v1/jobs/{}",
    "/api/v1/jobs/{}/cancel",
    "/api/v1/jobs/{}/retry",
    "/api/v1/documents/{}/download",
    "/api/v1/admin/api-keys/{}",
    "/api/v1/webhook-deliveries/{}/redeliver",
    "/files/{}",
]


class Running(msgspec.Struct):
    url: str
    admin: keys.NewKey
    user: keys.NewKey
    other: keys.NewKey
    revoked: keys.NewKey
    job_id: str


@pytest.fixture
async def running(
    db_dsn: str,
    tmp_path: Path,
    sandbox: Sandbox,
    pdpj_config: PdpjConfig,
    pool: asyncpg.Pool,
    unused_tcp_port_factory: Any,
) -> AsyncIterator[Running]:
    """A daemon on the filesystem store with one finished job of `user`'s."""
    await sandbox.override(NUMBER, documents=[{"size": 2_000}] * 2)
    # Every wrong key here must meet its 401; the per-address budget for requests without a
    # valid key (a 429 once spent: test_auth.py) is set out of the way.
    flood_budget = {"unauthenticated_per_s": 10_000, "unauthenticated_burst": 10_000}
    config = daemon_config(
        db_dsn, tmp_path, pdpj_config, unused_tcp_port_factory(), None, "h1",
        rate_limit=flood_budget,
    )  # fmt: skip
    daemon = Daemon(config, tmp_path / "hostile.log")
    daemon.start()
    try:
        await daemon.wait_ready()
        admin = await keys.create_key(pool, "admin", "admin")
        user = await keys.create_key(pool, "alice", "user")
        other = await keys.create_key(pool, "bob", "user")
        revoked = await keys.create_key(pool, "mallory", "user")
        await keys.revoke_key(pool, revoked.info.id)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{daemon.url}/api/v1/processes/{NUMBER}", headers=_auth(user.key)) as resp,
        ):
            assert resp.status == 202, await resp.text()
            job_id = (await resp.json())["job"]["job_id"]
        yield Running(
            url=daemon.url, admin=admin, user=user, other=other, revoked=revoked, job_id=job_id
        )
        # Our own handlers never failed; aiohttp's parser logs refused request lines itself.
        text = daemon.log_text()
        assert "Traceback" not in text and "unhandled_error" not in text, daemon.tail(80)
    finally:
        daemon.kill()


async def _raw(url: str, head: bytes) -> int:
    """Send raw request bytes (what aiohttp's client refuses to send); returns the status."""
    parsed = aiohttp.client.URL(url)
    reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
    try:
        writer.write(head)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    return int(line.split()[1])


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _status(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, str]:
    async with http.request(method, url, allow_redirects=False, **kwargs) as resp:
        return resp.status, await resp.text()


def _schemathesis(
    url: str, header: str | None, report: Path, examples: int, only: list[str]
) -> Any:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.skip("schemathesis is not installed (a dev dependency)")
    command = [
        cli, "run", f"{url}/api/v1/openapi.json", "--url", f"{url}",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,response_headers_conformance",
        "--max-examples", str(examples), "--seed", "1", "--workers", "1",
        "--phases", "examples,coverage,fuzzing", "--request-timeout", "10",
        "--report", "ndjson", "--report-ndjson-path", str(report), "--no-color",
        "--suppress-health-check", "all",
    ]  # fmt: skip
    if header:
        command += ["-H", header]
    command += only
    # Run from the report's directory: schemathesis leaves a .schemathesis/ cache in its cwd.
    return subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=report.parent)


# One daemon per identity, so that the four runs spread over the test workers. The admin's
# DELETE run has a daemon of its own: it revokes whatever keys it guesses, its own included.
IDENTITIES = {
    "anonymous": (None, []),
    "user": ("user", []),
    "admin": ("admin", ["--exclude-method", "DELETE"]),
    "admin-delete": ("admin", ["--include-method", "DELETE"]),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("identity", list(IDENTITIES))
async def test_schemathesis_finds_no_5xx_and_no_undocumented_response(
    running: Running, tmp_path: Path, identity: str
) -> None:
    role, only = IDENTITIES[identity]
    key = {"user": running.user, "admin": running.admin}.get(role or "")
    header = f"Authorization: Bearer {key.key}" if key is not None else None
    report = tmp_path / f"schemathesis-{identity}.ndjson"
    result = await asyncio.to_thread(_schemathesis, running.url, header, report, 25, only)
    if result.returncode != 0:
        pytest.fail(
            f"schemathesis as {identity}:\n{result.stdout[-8000:]}\n{result.stderr[-2000:]}"
        )
    calls = sum(1 for line in report.read_text().splitlines() if '"response"' in line)
    assert calls > 0, f"schemathesis as {identity} sent no request:\n{result.stdout[-2000:]}"


async def test_fifty_malformed_numbers_are_refused_with_a_problem(running: Running) -> None:
    assert len(MALFORMED_NUMBERS) >= 50
    async with aiohttp.ClientSession() as http:
        for raw in MALFORMED_NUMBERS:
            for suffix in ("", "/status"):
                # Sent as the raw path segment (quoted), the way a careless client would.
                url = aiohttp.client.URL(running.url).with_path(
                    f"/api/v1/processes/{raw}{suffix}", encoded=False
                )
                async with http.get(url, headers=_auth(running.user.key)) as resp:
                    body = await resp.text()
                    assert resp.status in (400, 404), (raw, resp.status, body)
                    if resp.status == 400:
                        assert resp.content_type == "application/problem+json", (raw, body)
                        assert json.loads(body)["detail"], (raw, body)


# Each refused by the guard before any lookup: no DNS is needed to answer them.
HOSTILE_WEBHOOK_URLS = [
    "https://" + "a" * 300 + ".example.com/hook",
    "https://" + "\u00e9" * 300 + ".example.com/hook",
    "https://" + "abcdefgh." * 40 + "com/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:8.8.8.8]/",
    "http://[fe80::1%25eth0]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/",
    "https://hooks.example.com:6379/",
    "http://ex%20ample.com/",
    "http://1.2.3.999/",
    "http://a..b/",
    "http://hooks.example.com:99999/",
]


async def test_hostile_webhook_urls_and_foreign_digits_get_a_400_problem(running: Running) -> None:
    number = "0801234-38.2024.8.26.0100"
    async with aiohttp.ClientSession() as http:
        for url in HOSTILE_WEBHOOK_URLS:
            calls: list[tuple[str, str, dict[str, Any]]] = [
                ("GET", f"/api/v1/processes/{number}", {"params": {"webhook_url": url}}),
                ("POST", "/api/v1/webhooks/ping", {"json": {"url": url}}),
            ]
            for method, path, kwargs in calls:
                async with http.request(
                    method, running.url + path, headers=_auth(running.user.key), **kwargs
                ) as resp:
                    body = await resp.text()
                    assert resp.status == 400, (url, path, resp.status, body)
                    assert resp.content_type == "application/problem+json", (url, body)
                    assert json.loads(body)["type"].endswith("invalid-webhook-url"), (url, body)
        # Digits of other scripts (Arabic-Indic, fullwidth), the check digits left in ASCII.
        for digits in (
            "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669",
            "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19",
        ):
            table = str.maketrans("0123456789", digits)
            foreign = number[:8].translate(table) + "38" + number[10:].translate(table)
            async with http.get(
                f"{running.url}/api/v1/processes/{foreign}", headers=_auth(running.user.key)
            ) as resp:
                body = await resp.text()
                assert resp.status == 400, (foreign, resp.status, body)
                assert "0-9" in json.loads(body)["detail"], body


async def test_oversized_headers_bodies_and_queries_get_4xx(running: Running) -> None:
    big = "x" * 100_000
    async with aiohttp.ClientSession() as http:
        cases: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", f"/api/v1/processes/{NUMBER}", {"headers": {"X-Big": big}}),
            ("GET", f"/api/v1/processes/{NUMBER}", {"headers": {"Authorization": "Bearer " + big}}),
            ("GET", f"/api/v1/processes/{NUMBER}?webhook_url=http://a/{big}", {}),
            ("GET", f"/api/v1/jobs?cursor={big}", {}),
            ("GET", f"/api/v1/jobs?status={'x' * 5000}", {}),
            ("GET", f"/api/v1/jobs?limit={'9' * 400}", {}),
            ("POST", "/api/v1/admin/api-keys", {"data": io.BytesIO(b"{" * 2_000_000)}),
            ("POST", "/api/v1/admin/api-keys", {"data": b'{"name": "' + b"n" * 70_000 + b'"}'}),
            ("POST", "/api/v1/webhooks/ping", {"data": b"[" * 60_000}),
            (
                "POST",
                f"/api/v1/jobs/{running.job_id}/cancel",
                {"data": io.BytesIO(b"z" * 2_000_000)},
            ),
        ]
        many = {f"X-H{i}": "v" for i in range(500)}
        cases.append(("GET", f"/api/v1/processes/{NUMBER}", {"headers": many}))
        for method, path, kwargs in cases:
            headers = {**_auth(running.admin.key), **kwargs.pop("headers", {})}
            try:
                status, body = await _status(
                    http, method, running.url + path, headers=headers, **kwargs
                )
            except aiohttp.ClientError as exc:
                # The server may close on a request it refuses to read (a 413 then a reset).
                status, body = 400, repr(exc)
            assert 400 <= status < 500, (method, path[:80], status, body[:300])


async def test_path_traversal_in_every_path_parameter_stays_out(running: Running) -> None:
    async with aiohttp.ClientSession() as http:
        for template in PATHS:
            for attack in TRAVERSALS:
                url = aiohttp.client.URL(running.url + template.format(attack), encoded=True)
                for key in (running.admin.key, running.user.key):
                    method = (
                        "POST" if template.endswith(("cancel", "retry", "redeliver")) else "GET"
                    )
                    if template.startswith("/api/v1/admin") and method == "GET":
                        method = "DELETE"
                    async with http.request(
                        method, url, headers=_auth(key), allow_redirects=False
                    ) as resp:
                        body = await resp.text()
                        assert 400 <= resp.status < 500, (template, attack, resp.status, body)
                        assert "root:" not in body and "[extensions]" not in body


async def test_auth_every_wrong_key_is_refused(running: Running) -> None:
    base = running.url
    job = f"/api/v1/jobs/{running.job_id}"
    async with aiohttp.ClientSession() as http:
        for header in [
            {},
            {"Authorization": ""},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer "},
            {"Authorization": "Basic dXNlcjpwYXNz"},
            {"Authorization": "Bearer not-a-key"},
            {"Authorization": "Bearer " + running.user.key[:-4] + "AAAA"},
            {"Authorization": "Bearer pdpj_" + "A" * 40},
            {"Authorization": "Bearer " + running.user.key + " extra"},
            {"Authorization": _auth(running.revoked.key)["Authorization"]},
            {"X-API-Key": "not-a-key"},
            {"X-API-Key": running.revoked.key},
        ]:
            for method, path in [("GET", job), ("GET", "/api/v1/jobs"),
                                 ("GET", f"/api/v1/processes/{NUMBER}/status")]:  # fmt: skip
                status, body = await _status(http, method, base + path, headers=header)
                assert status == 401, (header, path, status, body)
                assert running.user.key not in body

        for tail in (b"\x00", b"\x00 ", b"\x7f", b"\x01x"):
            head = (
                b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + running.user.key.encode()
                + tail
                + b"\r\nConnection: close\r\n\r\n"
            )
            status = await _raw(base, head)
            assert status in (400, 401), (tail, status)

        user = _auth(running.user.key)
        other = _auth(running.other.key)
        for method, path in [
            ("GET", "/api/v1/admin/api-keys"),
            ("POST", "/api/v1/admin/api-keys"),
            ("DELETE", f"/api/v1/admin/api-keys/{running.admin.info.id}"),
        ]:
            status, body = await _status(
                http, method, base + path, headers=user, json={"name": "x", "role": "admin"}
            )
            assert status == 403, (method, path, status, body)
        for method, path in [
            ("GET", job),
            ("POST", job + "/cancel"),
            ("POST", job + "/retry"),
        ]:
            status, body = await _status(http, method, base + path, headers=other)
            assert status == 404, (method, path, status, body)
        status, body = await _status(http, "GET", base + "/api/v1/jobs", headers=other)
        assert status == 200 and running.job_id not in body
        # The owner still sees it, and the admin key was not revoked by the attempts above.
        assert (await _status(http, "GET", base + job, headers=user))[0] == 200
        status, _ = await _status(
            http, "GET", base + "/api/v1/admin/api-keys", headers=_auth(running.admin.key)
        )
        assert status == 200


async def test_every_operation_answers_a_wrong_key_with_a_documented_status(
    running: Running,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(running.url + "/api/v1/openapi.json") as resp:
            spec = await resp.json()
        undocumented = []
        for path, item in spec["paths"].items():
            for method, op in item.items():
                if method not in {"get", "post", "delete", "put", "patch"}:
                    continue
                url = running.url + path.replace("{job_id}", running.job_id)
                for param in ("number", "uuid", "key_id", "id"):
                    url = url.replace("{" + param + "}", NUMBER if param == "number" else "1")
                for header in (_auth(running.revoked.key), _auth("not-a-key"), {}):
                    status, body = await _status(http, method.upper(), url, headers=header)
                    if str(status) not in op["responses"] or status >= 500:
                        undocumented.append((method.upper(), path, header != {}, status, body))
        assert not undocumented, undocumented
