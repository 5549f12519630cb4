"""API keys: shown once, stored hashed; the middleware answers 401/403 as problem documents."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from pdpj_async import keys
from pdpj_async.app import create_app
from pdpj_async.config import Config
from pdpj_async.server import appkeys
from tests.fixtures.app import Keys, make_config

PROBLEM = "application/problem+json"


@pytest.fixture(autouse=True)
def database_first(db_dsn: str) -> str:
    """Set the test database up before aiohttp_client, so that it is dropped after the app stops.

    Fixtures end in reverse order: a test naming aiohttp_client before config had its database
    dropped while the app still ran, its loop blocked by the DROP mid-handshake of the app's
    connections (a backend in authentication holds DROP for authentication_timeout, 60 s).
    """
    return db_dsn


async def _echo(request: web.Request) -> web.Response:
    from pdpj_async.server.middleware import caller

    key = caller(request)
    return web.json_response({"id": key.id, "role": key.role})


async def make_client(aiohttp_client: Any, config: Config) -> TestClient[Any, Any]:
    app = create_app(config)
    app.router.add_get("/api/v1/whoami", _echo)
    app.router.add_get("/api/v1/admin/whoami", _echo)
    return await aiohttp_client(app)


async def test_key_is_stored_only_as_a_hash(pool: asyncpg.Pool) -> None:
    new = await keys.create_key(pool, "n", "user")
    assert new.key.startswith("pdpj_") and new.webhook_secret.startswith("whsec_")
    row = await pool.fetchrow("SELECT * FROM pdpj.api_keys WHERE id = $1", new.info.id)
    assert new.key not in {str(v) for v in row.values()}
    assert row["key_hash"] == keys.hash_key(new.key)


async def test_valid_key_is_accepted_both_ways(
    aiohttp_client: Any, config: Config, api_keys: Keys
) -> None:
    client = await make_client(aiohttp_client, config)
    resp = await client.get("/api/v1/whoami", headers=Keys.header(api_keys.user))
    assert resp.status == 200 and (await resp.json())["id"] == api_keys.user.info.id
    resp = await client.get("/api/v1/whoami", headers={"X-API-Key": api_keys.admin.key})
    assert resp.status == 200 and (await resp.json())["role"] == "admin"


async def assert_problem(resp: Any, status: int, slug: str) -> dict[str, Any]:
    assert resp.status == status
    assert resp.content_type == PROBLEM
    body: dict[str, Any] = await resp.json()
    assert body["status"] == status and body["type"].endswith(slug)
    assert body["title"] and body["detail"]
    return body


async def test_missing_unknown_malformed_and_revoked_keys_get_401(
    aiohttp_client: Any, config: Config, api_keys: Keys, pool: asyncpg.Pool
) -> None:
    client = await make_client(aiohttp_client, config)
    await assert_problem(await client.get("/api/v1/whoami"), 401, "unauthorized")
    unknown = {"Authorization": "Bearer " + keys.generate_key()}
    body = await assert_problem(
        await client.get("/api/v1/whoami", headers=unknown), 401, "unauthorized"
    )
    assert "not known" in body["detail"]
    malformed = {"Authorization": "Basic dXNlcjpwYXNz"}
    await assert_problem(await client.get("/api/v1/whoami", headers=malformed), 401, "unauthorized")
    short = {"Authorization": "Bearer pdpj_x"}
    await assert_problem(await client.get("/api/v1/whoami", headers=short), 401, "unauthorized")
    await keys.revoke_key(pool, api_keys.other.info.id)
    body = await assert_problem(
        await client.get("/api/v1/whoami", headers=Keys.header(api_keys.other)), 401, "unauthorized"
    )
    assert "revoked" in body["detail"]


async def test_user_key_on_admin_route_gets_403(
    aiohttp_client: Any, config: Config, api_keys: Keys
) -> None:
    client = await make_client(aiohttp_client, config)
    resp = await client.get("/api/v1/admin/whoami", headers=Keys.header(api_keys.user))
    await assert_problem(resp, 403, "forbidden")
    resp = await client.get("/api/v1/admin/whoami", headers=Keys.header(api_keys.admin))
    assert resp.status == 200


async def test_unknown_route_is_a_problem_document(aiohttp_client: Any, config: Config) -> None:
    client = await make_client(aiohttp_client, config)
    resp = await client.get("/nope")
    await_body = await resp.json()
    assert resp.status == 404 and resp.content_type == PROBLEM and await_body["status"] == 404


async def test_health_and_readiness(aiohttp_client: Any, config: Config) -> None:
    client = await make_client(aiohttp_client, config)
    resp = await client.get("/healthz")
    assert resp.status == 200
    resp = await client.get("/readyz")
    checks = (await resp.json())["checks"]
    assert checks["database"] == "ok" and checks["storage"] == "ok"
    # No PDPJ token is configured here: the daemon is up but cannot work, and says why.
    assert resp.status == 503 and checks["pdpj_token"] == "no PDPJ token loaded"
    assert resp.headers["X-Request-ID"]


async def test_a_refused_key_is_remembered_and_needs_no_database_connection(
    aiohttp_client: Any, db_dsn: str, tmp_path: Any
) -> None:
    config = make_config(db_dsn, tmp_path, rate_limit={"auth_timeout_s": 0.3})
    client = await make_client(aiohttp_client, config)
    unknown = {"Authorization": "Bearer " + keys.generate_key()}
    await assert_problem(await client.get("/api/v1/whoami", headers=unknown), 401, "unauthorized")
    # Every connection of the daemon's pool is busy (the workers, say).
    pool = client.app[appkeys.POOL]
    held = []
    while True:  # every connection the workers and the sender do not hold already
        try:
            held.append(await pool.acquire(timeout=0.5))
        except TimeoutError:
            break
    try:
        # The refused key is answered from memory, at once.
        body = await assert_problem(
            await client.get("/api/v1/whoami", headers=unknown), 401, "unauthorized"
        )
        assert "not known" in body["detail"]
        # A key never seen needs the database: a 503 after the wait, not a queue.
        fresh = {"Authorization": "Bearer " + keys.generate_key()}
        started = asyncio.get_running_loop().time()
        resp = await client.get("/api/v1/whoami", headers=fresh)
        await assert_problem(resp, 503, "database-unavailable")
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        for conn in held:
            await pool.release(conn)


async def test_a_flood_of_bad_keys_from_one_address_is_slowed_with_429(
    aiohttp_client: Any, db_dsn: str, tmp_path: Any, api_keys: Keys
) -> None:
    config = make_config(
        db_dsn, tmp_path, rate_limit={"unauthenticated_per_s": 1, "unauthenticated_burst": 5}
    )
    client = await make_client(aiohttp_client, config)
    known = Keys.header(api_keys.user)
    assert (await client.get("/api/v1/whoami", headers=known)).status == 200
    statuses = []
    for _ in range(8):
        bad = {"Authorization": "Bearer " + keys.generate_key()}
        statuses.append((await client.get("/api/v1/whoami", headers=bad)).status)
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
    limited = await client.get("/api/v1/whoami")
    body = await assert_problem(limited, 429, "rate-limited")
    assert "without a valid API key" in body["detail"] and int(limited.headers["Retry-After"]) >= 1
    # A key verified a moment ago is not held up by its address's bad requests; one that
    # would need a lookup waits like the bad ones (the lookup is what a flood costs).
    assert (await client.get("/api/v1/whoami", headers=known)).status == 200
    other = await client.get("/api/v1/whoami", headers=Keys.header(api_keys.other))
    assert other.status == 429


async def test_a_key_spends_its_rate_limit_even_on_routes_its_role_may_not_use(
    aiohttp_client: Any, db_dsn: str, tmp_path: Any, api_keys: Keys
) -> None:
    config = make_config(db_dsn, tmp_path, rate_limit={"requests_per_s": 1, "burst": 3})
    client = await make_client(aiohttp_client, config)
    headers = Keys.header(api_keys.user)
    statuses = [
        (await client.get("/api/v1/admin/whoami", headers=headers)).status for _ in range(5)
    ]
    assert statuses == [403, 403, 403, 429, 429]
