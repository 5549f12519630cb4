"""Request middlewares: request id, errors as problem documents, API-key authentication, and
the request duration histogram.

They run as one middleware (`api_middleware`): each layer is one more coroutine per request,
and a status poll is cheap enough for that to show.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Awaitable, Callable

import asyncpg
import structlog
from aiohttp import web

from .. import keys
from ..config import RateLimitConfig
from ..errors import AuthError, DatabaseUnavailable, Forbidden, PdpjAsyncError, RateLimited
from ..keys import ApiKey
from ..logs import get_logger
from ..ratelimit import TokenBucket
from . import appkeys, problems
from .bulk_input import body_limit
from .metrics import METRICS

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-ID"
# Paths open without a key; everything else under /api/ needs one.
PUBLIC_PATHS = frozenset({"/api/v1/openapi.json", "/api/v1/webhooks/webhook-test"})
ADMIN_PREFIX = "/api/v1/admin/"


def caller(request: web.Request) -> ApiKey:
    """The authenticated key of this request."""
    key: ApiKey | None = request.get(appkeys.API_KEY)
    if key is None:
        raise AuthError("this route needs an API key")
    return key


def request_id(request: web.Request) -> str:
    """This request's id (from X-Request-ID when sane, else generated)."""
    rid: str = request.get(appkeys.REQUEST_ID, "")
    return rid


# Generated ids: a random per-process prefix and a counter (unique, and no syscall per request).
_ID_PREFIX = secrets.token_hex(4)
_ID_COUNTER = itertools.count(1)


def _start_request(request: web.Request) -> str:
    """Give the request its id, bound to the request and to its log lines."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    if 0 < len(given) <= 64 and given.isascii() and given.isprintable():
        rid = given
    else:
        rid = f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"
    request[appkeys.REQUEST_ID] = rid
    # Requests of one keep-alive connection share a context: the last one's fields must go.
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=rid)
    return rid


def _end_request(
    request: web.Request, response: web.StreamResponse, rid: str, started: float
) -> None:
    response.headers[REQUEST_ID_HEADER] = rid
    config = request.app.get(appkeys.CONFIG)
    # Checked here: even a filtered-out log call costs a few µs, a tenth of a small request.
    if config is not None and config.logging.level == "debug":
        log.debug(
            "http_request",
            method=request.method,
            path=request.path,
            status=response.status,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, errors as problem documents, authentication, metrics (the daemon's one layer)."""
    started = time.perf_counter()
    rid = _start_request(request)
    status = 500  # what a request that never answers (the client went away) counts as
    try:
        response = await _answer(request, handler, rid, authenticate=True)
        status = response.status
    except web.HTTPException as exc:  # a redirect, answered by aiohttp
        status = exc.status
        raise
    finally:
        _observe(request, status, started)
    _end_request(request, response, rid, started)
    return response


def _observe(request: web.Request, status: int, started: float) -> None:
    metrics = request.app.get(METRICS)
    if metrics is not None:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics.observe_http(route, request.method, status, time.perf_counter() - started)


async def _answer(
    request: web.Request, handler: Handler, rid: str, *, authenticate: bool
) -> web.StreamResponse:
    """The handler's response, or the problem document of what it (or the auth) raised."""
    try:
        config = request.app.get(appkeys.CONFIG)
        length = request.content_length
        if config is not None and length is not None and length > (limit := body_limit(request)):
            # Refused before any handler acts, also on routes that would never read the body.
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=length)
        if authenticate:
            await _authenticate(request)
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problems.from_http_exception(exc, rid)
    except PdpjAsyncError as exc:
        response = problems.from_exception(exc, rid)
        if response is None:
            log.exception("unmapped_error", path=request.path)
            return problems.problem_response(
                500, "internal-error", "Internal error", "see the logs", request_id=rid
            )
        return response
    except (
        asyncpg.CharacterNotInRepertoireError,
        asyncpg.UntranslatableCharacterError,
    ):
        # Client text PostgreSQL cannot hold (a NUL byte, say) reached a query: the request's
        # fault, not ours.
        return problems.problem_response(
            400,
            "invalid-request",
            "Invalid request",
            "the request holds characters that cannot be stored (e.g. NUL)",
            request_id=rid,
        )
    except Exception:
        log.exception("unhandled_error", path=request.path)
        return problems.problem_response(
            500,
            "internal-error",
            "Internal error",
            "an unexpected error happened; the request id is in the logs",
            request_id=rid,
        )


def presented_key(request: web.Request) -> str | None:
    """The API key the request presents (Authorization: Bearer, or X-API-Key)."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("the Authorization header must be 'Bearer <API key>'")
        return value.strip()
    return request.headers.get("X-API-Key")


async def _authenticate(request: web.Request) -> None:
    """Set the request's API key (on /api/ routes but the public ones) and spend its rate.

    A request without a valid key spends its client address's budget for such requests, so
    that a flood of made-up keys is refused before it costs a query each; a refused key is
    remembered for a while (`rate_limit.negative_cache_s`).
    """
    path = request.path
    if not path.startswith("/api/") or path in PUBLIC_PATHS:
        return
    limits = request.app[appkeys.RATE_LIMITS]
    try:
        key = presented_key(request)
    except AuthError:
        limits.spend_refused(request.remote)
        raise
    if not key:
        limits.spend_refused(request.remote)
        raise AuthError("this route needs an API key: 'Authorization: Bearer <key>'")
    cache = request.app[appkeys.AUTH_CACHE]
    api_key = cache.get(key)
    if api_key is None:
        api_key = await _look_up(request, key, limits)
        cache.put(key, api_key)
    request[appkeys.API_KEY] = api_key
    structlog.contextvars.bind_contextvars(api_key_id=api_key.id)
    # The key's own budget is spent before its role is checked: refused calls count too.
    limits.check(api_key)
    if path.startswith(ADMIN_PREFIX) and not api_key.is_admin:
        raise Forbidden("this route needs an admin key")


async def _look_up(request: web.Request, key: str, limits: RateLimits) -> ApiKey:
    """The key's row, unless it was refused lately; waits for a connection only so long."""
    cache = request.app[appkeys.AUTH_CACHE]
    reason = cache.refused(key)
    if reason is not None:
        limits.spend_refused(request.remote)
        raise AuthError(reason)
    limits.check_refused(request.remote)
    config = request.app[appkeys.CONFIG].rate_limit
    try:
        # Authentication does not queue behind the workers for a connection: it gives up.
        async with request.app[appkeys.POOL].acquire(timeout=config.auth_timeout_s) as conn:
            return await keys.authenticate(conn, key)
    except AuthError as exc:
        cache.put_refused(key, str(exc))
        limits.spend_refused(request.remote)
        raise
    except (OSError, TimeoutError) as exc:
        raise DatabaseUnavailable("cannot reach the database to check the key") from exc


class RateLimits:
    """A token bucket per API key (per daemon instance), sized by config or the key's own
    limit; and one per client address for requests that present no valid key."""

    # Client addresses tracked at most (a flood from many addresses forgets the oldest).
    MAX_ADDRESSES = 10_000

    def __init__(self, config: RateLimitConfig) -> None:
        self._rate = config.requests_per_s
        self._burst = config.burst
        self._refused_rate = config.unauthenticated_per_s
        self._refused_burst = config.unauthenticated_burst
        self._buckets: dict[int, TokenBucket] = {}
        self._by_address: dict[str, TokenBucket] = {}

    def check(self, api_key: ApiKey) -> None:
        """Spend one request of the key's budget; raises RateLimited when there is none."""
        rate = api_key.rate_limit_per_s or self._rate
        if rate <= 0:
            return
        burst = api_key.rate_limit_burst or self._burst
        bucket = self._buckets.get(api_key.id)
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[api_key.id] = TokenBucket(rate, burst)
        wait = bucket.try_acquire()
        if wait > 0:
            raise RateLimited(
                f"rate limit of {rate:g} requests/s (burst {burst}) exceeded; retry later",
                retry_after=wait,
                limit=int(bucket.burst),
            )

    def check_refused(self, address: str | None) -> None:
        """Raise RateLimited when this address has used up its budget of refused requests."""
        bucket = self._address_bucket(address)
        if bucket is not None and (wait := bucket.wait_for()) > 0:
            raise self._refused_limited(wait, bucket)

    def spend_refused(self, address: str | None) -> None:
        """Count a request refused for its key; RateLimited when the budget is spent."""
        bucket = self._address_bucket(address)
        if bucket is not None and (wait := bucket.try_acquire()) > 0:
            raise self._refused_limited(wait, bucket)

    def _address_bucket(self, address: str | None) -> TokenBucket | None:
        if self._refused_rate <= 0:
            return None
        name = address or "unknown"
        bucket = self._by_address.get(name)
        if bucket is None:
            if len(self._by_address) >= self.MAX_ADDRESSES:
                self._by_address.pop(next(iter(self._by_address)))
            bucket = self._by_address[name] = TokenBucket(self._refused_rate, self._refused_burst)
        return bucket

    def _refused_limited(self, wait: float, bucket: TokenBucket) -> RateLimited:
        return RateLimited(
            f"too many requests without a valid API key from this address "
            f"({self._refused_rate:g}/s, burst {self._refused_burst}); retry later",
            retry_after=wait,
            limit=int(bucket.burst),
        )
