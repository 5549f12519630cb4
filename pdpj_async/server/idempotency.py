"""The Idempotency-Key header on POST routes: a repeat gets the first answer, not a second effect.

A route wrapped in `idempotent` keeps its 2xx answer for 24 h per (API key, Idempotency-Key):

- the same key with the same request (method, path, query, Content-Type and body) replays the
  stored answer, with `Idempotent-Replayed: true`;
- the same key with a different request is refused (422), and so is a repeat that arrives while
  the first is still running (409, with Retry-After);
- an answer that is not a 2xx is not kept: the key is free for the client's retry.

A wrapped handler reads its body with `bulk_input.read_body` or `request.read()` (both keep it:
the fingerprint has read it already). `keep` chooses what is stored for the replays: an answer
holding a secret that must not rest in the database (a new API key) keeps a stand-in instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from collections.abc import Callable

from aiohttp import web

from .. import idempotency
from ..errors import InvalidRequest
from . import appkeys
from .bulk_input import read_body
from .middleware import Handler, caller
from .openapi import Param
from .problems import problem_response

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
PARAM = Param(
    "Idempotency-Key",
    "header",
    "makes the request safe to repeat: the same key and request within 24 h get the first "
    "answer again (Idempotent-Replayed: true); a different request with it is a 422",
)


# What to store of a successful answer, for its replays.
Keep = Callable[[web.Response], idempotency.Answer]


def as_sent(response: web.Response) -> idempotency.Answer:
    """Keep the answer as it was sent (the default)."""
    assert isinstance(response.body, bytes)
    return idempotency.Answer(
        status=response.status, content_type=response.content_type, body=response.body
    )


def idempotent(handler: Handler, *, keep: Keep = as_sent) -> Handler:
    """Wrap a POST handler so that the Idempotency-Key header makes it safe to repeat."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        key = request.headers.get(HEADER)
        if key is None:
            return await handler(request)
        _check(key)
        owner = caller(request).id
        body = await read_body(request)
        held = fingerprint(
            request.method, request.path, request.query_string, request.content_type, body
        )
        pool = request.app[appkeys.POOL]
        claim = await idempotency.reserve(pool, owner, key, held)
        if claim.outcome != "reserved":
            return _refusal_or_replay(claim)
        try:
            response = await handler(request)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(idempotency.release(pool, owner, key, held))
            raise
        sent = response.body if isinstance(response, web.Response) else None
        if 200 <= response.status < 300 and isinstance(sent, bytes):
            assert isinstance(response, web.Response)
            await idempotency.store(pool, owner, key, held, keep(response))
        else:
            await idempotency.release(pool, owner, key, held)
        return response

    return wrapped


def _check(key: str) -> None:
    if not 0 < len(key) <= MAX_KEY_CHARS or not (key.isascii() and key.isprintable()):
        raise InvalidRequest(
            f"{HEADER}: expected 1 to {MAX_KEY_CHARS} printable ASCII characters (a UUID, say)"
        )


def fingerprint(method: str, path: str, query: str, content_type: str, body: bytes) -> bytes:
    """What makes two requests the same request: a digest of all that the handler reads."""
    digest = hashlib.sha256()
    for part in (method, path, query, content_type):
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    digest.update(body)
    return digest.digest()


def _refusal_or_replay(claim: idempotency.Claim) -> web.Response:
    if claim.outcome == "replay":
        assert claim.answer is not None
        answer = claim.answer
        return web.Response(
            status=answer.status,
            body=answer.body,
            content_type=answer.content_type,
            headers={REPLAYED_HEADER: "true"},
        )
    if claim.outcome == "mismatch":
        return problem_response(
            422,
            "idempotency-key-reused",
            "Idempotency-Key reused",
            f"this {HEADER} was used with a different request (method, path, query or body) "
            "in the last 24 h; use a new key for a new request",
        )
    wait = round(claim.retry_after_s or 1.0)
    return problem_response(
        409,
        "idempotency-key-in-use",
        "Request in progress",
        f"a request with this {HEADER} is still running; retry in {wait} s",
        headers={"Retry-After": str(wait)},
        retry_after=float(wait),
    )
