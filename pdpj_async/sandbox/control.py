"""The sandbox's control endpoints (no auth: the sandbox listens on loopback): faults, process
overrides, movements and documents added at run time, the token, counters, reset."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from .. import cnj
from ..errors import InvalidProcessNumber
from . import rich
from .data import ProcessOverride
from .state import SANDBOX, Fault, Limit

_encode = msgspec.json.Encoder().encode


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encode(data), status=status, content_type="application/json")


async def _body(request: web.Request, type_: Any) -> Any:
    try:
        return msgspec.json.decode(await request.read(), type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError, InvalidProcessNumber) as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None


async def add_fault(request: web.Request) -> web.Response:
    """POST /_sandbox/faults: add a fault rule (see Fault)."""
    fault = await _body(request, Fault)
    request.app[SANDBOX].faults.append(fault)
    return _json(msgspec.to_builtins(fault), 201)


async def clear_faults(request: web.Request) -> web.Response:
    """DELETE /_sandbox/faults: remove every fault rule."""
    request.app[SANDBOX].faults.clear()
    return _json({"faults": []})


async def set_process(request: web.Request) -> web.Response:
    """POST /_sandbox/processes: override a number's form and documents; answers the documents."""
    override = await _body(request, ProcessOverride)
    state = request.app[SANDBOX]
    try:
        state.set_override(override)
        number = cnj.parse(override.number)
    except InvalidProcessNumber as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    docs = [msgspec.to_builtins(d) for d in state.process(number).documents.values()]
    return _json({"number": number.digits, "documents": docs}, 201)


class _TokenChange(msgspec.Struct, forbid_unknown_fields=True):
    token: str
    expires_after: int | None = None


async def set_token(request: web.Request) -> web.Response:
    """POST /_sandbox/token: accept a new token (the old one stops working)."""
    change = await _body(request, _TokenChange)
    state = request.app[SANDBOX]
    state.token, state.token_expires_after, state.authorized = change.token, change.expires_after, 0
    return _json({"ok": True})


async def set_limit(request: web.Request) -> web.Response:
    """POST /_sandbox/limit: a hidden limit (rate, burst, latency_ms) from now on; rate 0: none."""
    limit = await _body(request, Limit)
    request.app[SANDBOX].set_limit(limit)
    return _json(msgspec.to_builtins(limit))


async def get_stats(request: web.Request) -> web.Response:
    """GET /_sandbox/stats: request counters and per-uuid fetches/completed fetches."""
    return _json(request.app[SANDBOX].stats())


async def reset(request: web.Request) -> web.Response:
    """POST /_sandbox/reset: back to the settings, counters cleared."""
    request.app[SANDBOX].reset()
    return _json({"ok": True})


def _control_number(request: web.Request) -> cnj.ProcessNumber:
    try:
        return cnj.parse(request.match_info["numero"])
    except InvalidProcessNumber as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None


async def add_movements(request: web.Request) -> web.Response:
    """POST /_sandbox/processes/{numero}/movements: new movements in the current instance."""
    body = await _body(request, rich.AddMovements)
    state = request.app[SANDBOX]
    number = _control_number(request)
    added = rich.added_movements(state.process(number).raw, body)
    state.add(number, movements=added)
    return _json({"number": number.digits, "movements": added}, 201)


async def add_documents(request: web.Request) -> web.Response:
    """POST /_sandbox/processes/{numero}/documents: new documents in the current instance."""
    body = await _body(request, rich.AddDocuments)
    state = request.app[SANDBOX]
    number = _control_number(request)
    added = rich.added_documents(state.process(number).raw, number, body)
    state.add(number, documents=added)
    return _json({"number": number.digits, "documents": added}, 201)


def setup_control(app: web.Application) -> None:
    """Mount the control endpoints under /_sandbox."""
    app.router.add_post("/_sandbox/faults", add_fault)
    app.router.add_delete("/_sandbox/faults", clear_faults)
    app.router.add_post("/_sandbox/processes", set_process)
    app.router.add_post("/_sandbox/processes/{numero}/movements", add_movements)
    app.router.add_post("/_sandbox/processes/{numero}/documents", add_documents)
    app.router.add_post("/_sandbox/token", set_token)
    app.router.add_post("/_sandbox/limit", set_limit)
    app.router.add_get("/_sandbox/stats", get_stats)
    app.router.add_post("/_sandbox/reset", reset)
