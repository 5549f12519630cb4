"""RFC 9457 problem documents: the only place domain errors meet HTTP statuses."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from .. import errors

CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:pdpj-async:problem:"


class Problem(msgspec.Struct, omit_defaults=True, kw_only=True):
    """An RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str = ""
    instance: str = ""
    # Extension members: a machine-readable reason, the request id, a retry hint.
    reason: str | None = None
    request_id: str | None = None
    retry_after: float | None = None
    errors: list[dict[str, Any]] | None = None


_encode = msgspec.json.Encoder().encode

# Domain error → (status, slug, title). Order matters: subclasses first.
_MAP: list[tuple[type[BaseException], int, str, str]] = [
    (errors.InvalidProcessNumber, 400, "invalid-process-number", "Invalid process number"),
    (errors.InvalidWebhookUrl, 400, "invalid-webhook-url", "Webhook URL refused"),
    (errors.InvalidRequest, 400, "invalid-request", "Invalid request"),
    (errors.AuthError, 401, "unauthorized", "Missing or invalid API key"),
    (errors.InvalidLink, 403, "invalid-download-link", "Invalid download link"),
    (errors.Forbidden, 403, "forbidden", "Not allowed for this API key"),
    (errors.NotFound, 404, "not-found", "Not found"),
    (errors.UpstreamNotFound, 404, "process-not-found", "Process not found at PDPJ"),
    (errors.Conflict, 409, "conflict", "Conflict"),
    (errors.RateLimited, 429, "rate-limited", "Too many requests"),
    (errors.UpstreamAuthExpired, 503, "upstream-token-expired", "PDPJ token expired"),
    (errors.UpstreamTransient, 503, "upstream-unavailable", "PDPJ unavailable"),
    (errors.UpstreamError, 502, "upstream-error", "PDPJ error"),
    (errors.DatabaseUnavailable, 503, "database-unavailable", "Database unavailable"),
]


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str = "",
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """A problem+json response."""
    body = Problem(type=TYPE_PREFIX + slug, title=title, status=status, detail=detail, **extra)
    return web.Response(
        status=status, body=_encode(body), content_type=CONTENT_TYPE, headers=headers
    )


def from_exception(exc: BaseException, request_id: str | None = None) -> web.Response | None:
    """The problem response for a domain error, or None when it is not one we map."""
    for cls, status, slug, title in _MAP:
        if isinstance(exc, cls):
            headers: dict[str, str] = {}
            extra: dict[str, Any] = {"request_id": request_id}
            reason = getattr(exc, "reason", None)
            if reason:
                extra["reason"] = reason
            retry_after = getattr(exc, "retry_after", None)
            if status == 503:
                retry_after = retry_after if retry_after is not None else 30
            if retry_after is not None:
                headers["Retry-After"] = str(max(1, round(retry_after)))
                extra["retry_after"] = retry_after
            if isinstance(exc, errors.RateLimited):
                headers["RateLimit-Limit"] = str(exc.limit)
                headers["RateLimit-Remaining"] = "0"
                headers["RateLimit-Reset"] = headers["Retry-After"]
            if status == 401:
                headers["WWW-Authenticate"] = 'Bearer realm="pdpj-async"'
            return problem_response(status, slug, title, str(exc), headers=headers, **extra)
    return None


def from_http_exception(exc: web.HTTPException, request_id: str | None = None) -> web.Response:
    """aiohttp's own errors (404 route, 405, 413, ...) as problem documents."""
    slug = exc.reason.lower().replace(" ", "-") if exc.reason else "error"
    detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else ""
    headers = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "retry-after"}}
    return problem_response(
        exc.status, slug, exc.reason, detail, headers=headers, request_id=request_id
    )
