"""A Postman collection (v2.1) built from the OpenAPI document: `python -m pdpj_async.postman`."""

from __future__ import annotations

import re
import sys
from typing import Any

import msgspec

from .. import __version__

SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
_EXAMPLES = {
    "number": "0801234-38.2024.8.26.0100",
    "job_id": "{{job_id}}",
    "uuid": "{{document_uuid}}",
    "key_id": "{{key_id}}",
    "id": "{{delivery_id}}",
}


def collection(spec: dict[str, Any]) -> dict[str, Any]:
    """The collection: one request per operation, base URL and key as variables."""
    folders: dict[str, list[dict[str, Any]]] = {}
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            folder = path.removeprefix("/api/v1/").split("/")[0]
            folders.setdefault(folder, []).append(_request(path, method, op))
    return {
        "info": {
            "name": f"pdpj-async {__version__}",
            "description": spec["info"]["description"],
            "schema": SCHEMA,
        },
        "auth": {
            "type": "bearer",
            "bearer": [{"key": "token", "value": "{{api_key}}", "type": "string"}],
        },
        "variable": [
            {"key": "base_url", "value": "http://127.0.0.1:8080"},
            {"key": "api_key", "value": "pdpj_..."},
        ],
        "item": [{"name": name, "item": items} for name, items in sorted(folders.items())],
    }


def _example(match: re.Match[str]) -> str:
    return _EXAMPLES.get(match.group(1), "{{" + match.group(1) + "}}")


def _request(path: str, method: str, op: dict[str, Any]) -> dict[str, Any]:
    raw_path = re.sub(
        r"\{(\w+)\}", lambda m: _EXAMPLES.get(m.group(1), "{{" + m.group(1) + "}}"), path
    )
    query = [
        {"key": p["name"], "value": "", "description": p["description"], "disabled": True}
        for p in op.get("parameters", [])
        if p["in"] == "query"
    ]
    request: dict[str, Any] = {
        "method": method.upper(),
        "description": op.get("description", ""),
        "url": {
            "raw": "{{base_url}}" + raw_path,
            "host": ["{{base_url}}"],
            "path": [s for s in raw_path.split("/") if s],
            "query": query,
        },
    }
    if op.get("security") == []:
        request["auth"] = {"type": "noauth"}
    if "requestBody" in op:
        request["header"] = [{"key": "Content-Type", "value": "application/json"}]
        request["body"] = {"mode": "raw", "raw": "{}", "options": {"raw": {"language": "json"}}}
    return {"name": op.get("summary", f"{method.upper()} {path}"), "request": request}


def main() -> None:
    """Print the collection of the current API."""
    from . import api, openapi

    spec = openapi.build(api.all_routes())
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(collection(spec))).decode() + "\n")


if __name__ == "__main__":
    main()
