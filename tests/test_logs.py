"""Logging: JSON lines with bound ids; no secret of any kind reaches a log line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

import pytest
import structlog
from aiohttp import web

from pdpj_async import logs

SECRETS = [
    "pdpj_Zx8kq2mN4rT6vW8yA1cE3gI5kM7oQ9sU1wY3aC5eG7i",
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw2aVVvDTm3NA=",
    "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDAsInN1YiI6IjEyMyJ9.c2lnbmF0dXJl",
    "AKIAEXAMPLESECRETSIGNATURE0123456789abcdef",
]


@pytest.fixture
def captured() -> io.StringIO:
    stream = io.StringIO()
    logs.configure("debug", "json", stream=stream)
    yield stream
    structlog.contextvars.clear_contextvars()
    logs.configure("info", "json")


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_event_and_bound_ids(captured: io.StringIO) -> None:
    structlog.contextvars.bind_contextvars(request_id="r-1", job_id="j-1")
    logs.get_logger("t").info("document_available", uuid="u-1", bytes=10)
    (line,) = lines(captured)
    assert line["event"] == "document_available"
    assert line["request_id"] == "r-1" and line["job_id"] == "j-1" and line["bytes"] == 10


def test_no_secret_in_fields_messages_urls_or_exceptions(captured: io.StringIO) -> None:
    key, whsec, jwt, sig = SECRETS
    log = logs.get_logger("t")
    log.info("auth", api_key=key, webhook_secret=whsec, token=jwt, note=f"key was {key}")
    log.info("upstream", headers={"Authorization": f"Bearer {jwt}"}, attempt=1)
    log.info("url", url=f"https://s3.example/b/k?X-Amz-Credential=AKIA1&X-Amz-Signature={sig}")
    log.info("fs_url", url=f"http://127.0.0.1:8080/files/k?expires=1&sig={sig}")
    log.info("signature_sent", header=f"v1,{whsec[6:]}")
    try:
        raise RuntimeError(f"refresh failed with token {jwt}")
    except RuntimeError:
        log.exception("refresh_failed")
    logging.getLogger("aiohttp.client").warning("request failed: Bearer %s", jwt)
    text = captured.getvalue()
    assert len(lines(captured)) == 7
    for secret in [*SECRETS, whsec[6:]]:
        assert secret not in text
    assert logs.REDACTED in text
    # What is not secret stays readable.
    assert '"attempt": 1' in text and "refresh_failed" in text and "s3.example" in text


def test_console_renderer_redacts_too() -> None:
    stream = io.StringIO()
    logs.configure("info", "console", stream=stream)
    try:
        logs.get_logger("t").info("key_created", key=SECRETS[0])
    finally:
        logs.configure("info", "json")
    assert SECRETS[0] not in stream.getvalue() and "key_created" in stream.getvalue()


def test_redact_text_leaves_plain_text_alone() -> None:
    assert logs.redact_text("0801234-38.2024.8.26.0100 ok") == "0801234-38.2024.8.26.0100 ok"


async def test_a_malformed_request_is_one_info_line_not_an_error_with_a_traceback(
    captured: io.StringIO, aiohttp_server: Any
) -> None:
    """Any client can send an over-long request line; it must not fill the error log."""
    server = await aiohttp_server(web.Application())
    for request_line in (
        b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(request_line)
        await writer.drain()
        answer = await reader.read(200)
        writer.close()
        assert answer.split(b"\r\n")[0].endswith(b"400 Bad Request")
    await server.close()
    logged = [line for line in lines(captured) if "malformed" in str(line.get("event"))]
    assert len(logged) == 2
    assert {line["level"] for line in logged} == {"info"}
    assert not [line for line in lines(captured) if line.get("level") in ("error", "critical")]
    assert "Traceback" not in captured.getvalue()
