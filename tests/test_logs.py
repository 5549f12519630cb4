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

from pdpj_async import keys, logs

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


def test_event_names_and_token_fingerprints_are_never_rewritten(captured: io.StringIO) -> None:
    """`pdpj_token_loaded` looked like an API key and came out as `pdpj_[REDACTED]`."""
    log = logs.get_logger("t")
    log.info("pdpj_token_loaded", source="file", token_id="3f2a9c1b", previous_token_id="0a1b2c3d")
    log.info("pdpj_token_file_unreadable_after_the_operator_replaced_it_twice", path="/x")
    first, second = lines(captured)
    assert first["event"] == "pdpj_token_loaded"
    assert (first["token_id"], first["previous_token_id"]) == ("3f2a9c1b", "0a1b2c3d")
    assert second["event"] == "pdpj_token_file_unreadable_after_the_operator_replaced_it_twice"


def test_api_keys_are_matched_by_their_generated_shape() -> None:
    key = keys.generate_key()
    secret = keys.generate_webhook_secret()
    assert key not in logs.redact_text(f"key={key}.") and logs.REDACTED in logs.redact_text(key)
    assert secret not in logs.redact_text(f"secret {secret}")
    # Names that merely start like a key stay readable.
    for text in ("pdpj_token_loaded", "pdpj_async.upstream.tokens", "pdpj_template"):
        assert logs.redact_text(text) == text


def test_dsn_passwords_and_s3_secrets_are_redacted(captured: io.StringIO) -> None:
    aws_secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    log = logs.get_logger("t")
    log.warning("db_unreachable", error="cannot connect to postgresql://app:s3cr3t-pw@db:5432/x")
    log.warning("db_unreachable", error="connect failed: host=db user=app password=s3cr3t-pw")
    log.warning("s3_error", detail=f"aws_secret_access_key={aws_secret}", note=aws_secret)
    text = captured.getvalue()
    assert "s3cr3t-pw" not in text and aws_secret not in text
    assert "postgresql://app:" in text and "@db:5432/x" in text and "host=db user=app" in text
    # A hex digest of the same length is not a secret.
    digest = "3f786850e387550fdab836ed7e6dc881de23001b"
    assert logs.redact_text(digest) == digest


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_tracebacks_pass_through_redaction(fmt: str) -> None:
    """An API key in an exception message was printed as is by the console renderer."""
    key = keys.generate_key()
    # A secret of no recognisable shape, held in a local: tracebacks must not print locals.
    password = "correct-horse-battery"
    stream = io.StringIO()
    logs.configure("info", fmt, stream=stream)
    try:
        try:
            raise RuntimeError(f"authentication failed for {key}")
        except RuntimeError:
            logs.get_logger("t").exception("request_failed")
            logging.getLogger("aiohttp.server").exception("Error handling request")
    finally:
        logs.configure("info", "json")
    text = stream.getvalue()
    assert "Traceback" in text and "RuntimeError" in text and "request_failed" in text
    assert key not in text and logs.REDACTED in text
    assert password not in text
