"""API keys: shown once, stored hashed; the middleware answers 401/403 as problem documents."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient

from pdpj_async import keys
from pdpj_async.app import create_app
from pdpj_async.config import Config
from tests.fixtures.app import Keys

PROBLEM = "application/problem+json"


async def _echo(request: web.Request) -> web.Response:
    from pdpj_async.middleware import caller

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
