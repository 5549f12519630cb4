"""The OpenAPI document: valid 3.1, lists every route, and describes what the API really sends."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate

from tests.fixtures.app import Stack
from tests.fixtures.sandbox import Sandbox

NUMBER = "1011745-77.2025.8.11.0041"


@pytest.fixture
async def spec(stack: Stack) -> dict[str, Any]:
    resp = await stack.client.get("/api/v1/openapi.json")
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


def check(spec: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    """Validate a received body against the documented response schema."""
    responses = spec["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path}: {status} is not documented"
    content = responses[str(status)]["content"]
    schema = next(iter(content.values()))["schema"]
    jsonschema.validate(
        body,
        {**schema, "components": spec["components"]},
        cls=jsonschema.Draft202012Validator,
    )


def test_document_is_valid_openapi_31(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1")
    validate(spec)


def test_every_route_is_documented(stack: Stack, spec: dict[str, Any]) -> None:
    documented = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    served = set()
    for route in stack.app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/api/") and route.method not in ("HEAD", "OPTIONS"):
            served.add((route.method, path))
    assert served - documented == set()


async def test_responses_match_the_document(
    stack: Stack, sandbox: Sandbox, spec: dict[str, Any]
) -> None:
    await sandbox.override(NUMBER, documents=[{"size": 1000}, {"size": 2000, "mime": "text/html"}])
    user = stack.keys.user
    resp = await stack.get(f"/api/v1/processes/{NUMBER}", user)
    body = await resp.json()
    check(spec, "/api/v1/processes/{number}", "get", resp.status, body)
    job_id = body["job"]["job_id"]
    await stack.wait_job(job_id, user)
    resp = await stack.get(f"/api/v1/processes/{NUMBER}/status", user)
    check(spec, "/api/v1/processes/{number}/status", "get", resp.status, await resp.json())
    resp = await stack.get(f"/api/v1/jobs/{job_id}", user)
    check(spec, "/api/v1/jobs/{job_id}", "get", resp.status, await resp.json())
    resp = await stack.get("/api/v1/jobs", user)
    check(spec, "/api/v1/jobs", "get", resp.status, await resp.json())
    resp = await stack.post(f"/api/v1/jobs/{job_id}/cancel", user)
    check(spec, "/api/v1/jobs/{job_id}/cancel", "post", resp.status, await resp.json())
    resp = await stack.get("/api/v1/processes/123", user)
    check(spec, "/api/v1/processes/{number}", "get", resp.status, await resp.json())
    resp = await stack.get("/api/v1/jobs")
    check(spec, "/api/v1/jobs", "get", resp.status, await resp.json())
    admin = stack.keys.admin
    resp = await stack.post("/api/v1/admin/api-keys", admin, json={"name": "x", "role": "user"})
    created = await resp.json()
    check(spec, "/api/v1/admin/api-keys", "post", resp.status, created)
    resp = await stack.get("/api/v1/admin/api-keys", admin)
    check(spec, "/api/v1/admin/api-keys", "get", resp.status, await resp.json())
    resp = await stack.client.delete(
        f"/api/v1/admin/api-keys/{created['info']['id']}",
        headers={"Authorization": f"Bearer {admin.key}"},
    )
    check(spec, "/api/v1/admin/api-keys/{key_id}", "delete", resp.status, await resp.json())


def test_postman_collection_is_generated_from_the_current_document() -> None:
    from pathlib import Path

    import msgspec

    from pdpj_async.server import api, openapi, postman

    committed = Path(__file__).resolve().parents[1] / "docs" / "pdpj-async.postman_collection.json"
    expected = postman.collection(openapi.build(api.all_routes()))
    assert msgspec.json.decode(committed.read_bytes()) == msgspec.to_builtins(expected), (
        "regenerate: python -m pdpj_async.server.postman > docs/pdpj-async.postman_collection.json"
    )
    names = {item["name"] for folder in expected["item"] for item in folder["item"]}
    assert {"Request a process", "Status of a process", "Ping a webhook URL"} <= names
