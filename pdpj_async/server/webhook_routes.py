"""Webhook endpoints: redeliver, ping, and the built-in test receiver of the local demo."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

from .. import keys
from ..errors import AuthError, InvalidRequest, NotFound
from ..keys import ApiKey
from ..webhooks import endpoints, outbox
from ..webhooks.client import WebhookClient
from ..webhooks.ssrf import Resolver
from . import appkeys
from .idempotency import PARAM as IDEMPOTENCY_KEY
from .idempotency import idempotent
from .middleware import caller, presented_key
from .openapi import Operation, Param, Route
from .problems import Problem

_encode = msgspec.json.Encoder().encode


class PingRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /api/v1/webhooks/ping."""

    url: str


class PingResult(msgspec.Struct, kw_only=True):
    """What the receiver made of the ping: its status and the latency, nothing it said.

    The receiver's body and the connection error stay out: echoed back, they would turn the
    ping into a probe of whatever answers at an address (banners, error pages, open ports).
    """

    webhook_id: str
    url: str
    delivered: bool
    status_code: int | None
    latency_ms: float


class TestReceiverAnswer(msgspec.Struct, kw_only=True):
    """The built-in receiver's echo of what it got."""

    __test__ = False

    verified: bool
    webhook_id: str | None
    webhook_timestamp: str | None
    webhook_attempt: str | None
    body: Any


class Inbox(msgspec.Struct, kw_only=True):
    """What the built-in test receiver got (signed with the caller's secret; admins: all)."""

    messages: list[outbox.ReceivedWebhook]


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encode(value), status=status, content_type="application/json")


async def redeliver(request: web.Request) -> web.Response:
    """POST /api/v1/webhook-deliveries/{id}/redeliver: a fresh round with the same webhook-id."""
    key = caller(request)
    delivery = await outbox.redeliver(
        request.app[appkeys.POOL],
        request.match_info["id"],
        owner_id=None if key.is_admin else key.id,
    )
    return _json(delivery, status=202)


async def ping(request: web.Request) -> web.Response:
    """POST /api/v1/webhooks/ping: send a signed `ping` event to a URL, report what happened."""
    key = caller(request)
    try:
        body = msgspec.json.decode(await request.read(), type=PingRequest)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f'expected a JSON body {{"url": ...}}: {exc}') from None
    client = request.app[appkeys.WEBHOOK_CLIENT]
    await client.guard.validate(body.url)
    msg_id = outbox.new_webhook_id()
    payload = {
        "type": "ping",
        "webhook_id": msg_id,
        "timestamp": datetime.now(UTC).isoformat(),
        "message": "a test message from pdpj-async",
    }
    result = await client.post(
        body.url, msg_id, _encode(payload), await _signing_secrets(request, key.id), 1
    )
    return _json(
        PingResult(
            webhook_id=msg_id,
            url=body.url,
            delivered=result.delivered,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
        )
    )


async def _signing_secrets(request: web.Request, key_id: int) -> list[str]:
    overlap = request.app[appkeys.CONFIG].webhooks.secret_overlap_s
    found = await outbox.key_signing_secrets(request.app[appkeys.POOL], key_id, overlap)
    if found is None:
        raise NotFound("the API key is gone")
    return found


async def _optional_key(request: web.Request) -> ApiKey | None:
    # The test receiver is public; a key, when given, says whose secret to try.
    presented = presented_key(request)
    return await keys.authenticate(request.app[appkeys.POOL], presented) if presented else None


def _require_test_receiver(request: web.Request) -> None:
    if not request.app[appkeys.CONFIG].webhooks.test_receiver:
        raise NotFound("the built-in test receiver is off (webhooks.test_receiver)")


async def _signer(request: web.Request, raw: bytes, headers: dict[str, str]) -> int | None:
    """The id of the key whose secret (or whose endpoint's secret) signed the message, or None."""
    pool = request.app[appkeys.POOL]
    overlap = request.app[appkeys.CONFIG].webhooks.secret_overlap_s
    # A message to a standing endpoint is signed with that endpoint's own secret.
    sent = await endpoints.delivery_signing_secrets(pool, headers.get("webhook-id", ""), overlap)
    if sent is not None:
        key_id, candidates = sent
        return key_id if any(outbox.verify(s, raw, headers) for s in candidates) else None
    if presented_key(request):
        # A presented key names the one secret to try: one check, however many keys exist.
        try:
            key = await _optional_key(request)
        except AuthError:
            return None
        own = await outbox.key_signing_secrets(pool, key.id, overlap) if key else None
        return key.id if key and any(outbox.verify(s, raw, headers) for s in own or []) else None
    # No key: every active key's secrets (a cost per request; the receiver is off outside dev).
    for key_id, candidates in await outbox.active_secrets(pool):
        if any(outbox.verify(s, raw, headers) for s in candidates):
            return key_id
    return None


async def receive_test(request: web.Request) -> web.Response:
    """POST /api/v1/webhooks/webhook-test: verify the signature if we can, echo what came."""
    _require_test_receiver(request)
    raw = await request.read()
    headers = {k.lower(): v for k, v in request.headers.items()}
    signer = await _signer(request, raw, headers)
    try:
        body: Any = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        body = raw.decode("utf-8", errors="replace")
    message = outbox.ReceivedWebhook(
        received_at=datetime.now(UTC),
        webhook_id=headers.get("webhook-id"),
        webhook_timestamp=headers.get("webhook-timestamp"),
        webhook_attempt=headers.get("x-webhook-attempt"),
        user_agent=headers.get("user-agent"),
        verified=signer is not None,
        key_id=signer,
        body=body,
    )
    request.app[appkeys.WEBHOOK_TEST_INBOX].add(message)
    return _json(
        TestReceiverAnswer(
            verified=message.verified,
            webhook_id=message.webhook_id,
            webhook_timestamp=message.webhook_timestamp,
            webhook_attempt=message.webhook_attempt,
            body=body,
        )
    )


async def list_test(request: web.Request) -> web.Response:
    """GET /api/v1/webhooks/webhook-test: what the test receiver got, signed with your secret."""
    _require_test_receiver(request)
    key = await _optional_key(request)
    if key is None:
        raise AuthError("listing received webhooks needs an API key")
    inbox = request.app[appkeys.WEBHOOK_TEST_INBOX]
    return _json(Inbox(messages=inbox.visible_to(None if key.is_admin else key.id)))


def client_ctx(
    resolver: Resolver | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The SSRF-guarded HTTP client that pings go through."""

    async def webhook_client_ctx(app: web.Application) -> AsyncIterator[None]:
        client = WebhookClient(app[appkeys.CONFIG].webhooks, resolver)
        await client.start()
        app[appkeys.WEBHOOK_CLIENT] = client
        try:
            yield
        finally:
            await client.close()

    return webhook_client_ctx


def setup_routes(app: web.Application, *, resolver: Resolver | None = None) -> None:
    """Register the webhook routes and the resources they use."""
    keep = app[appkeys.CONFIG].webhooks.test_receiver_keep
    app[appkeys.WEBHOOK_TEST_INBOX] = outbox.TestInbox(keep)
    app.cleanup_ctx.append(client_ctx(resolver))
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)


ROUTES: list[Route] = [
    Route("POST", "/api/v1/webhook-deliveries/{id}/redeliver", idempotent(redeliver), Operation(
        "Redeliver a webhook", "Queues a fresh round of attempts with the same webhook-id.",
        params=[Param("id", "path", "delivery id (the webhook-id)"), IDEMPOTENCY_KEY],
        responses={202: outbox.Delivery, 409: Problem, 422: Problem})),
    Route("POST", "/api/v1/webhooks/ping", ping, Operation(
        "Ping a webhook URL", "Sends a signed `ping` event to the URL and reports the answer.",
        body=PingRequest, responses={200: PingResult})),
    Route("POST", "/api/v1/webhooks/webhook-test", receive_test, Operation(
        "Built-in test receiver", "Verifies the signature when it can and echoes what it got.",
        responses={200: TestReceiverAnswer}, public=True)),
    Route("GET", "/api/v1/webhooks/webhook-test", list_test, Operation(
        "Messages the test receiver got", "Those signed with the caller's secret; admins: all.",
        responses={200: Inbox})),
]  # fmt: skip
