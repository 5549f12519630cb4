"""A local PDPJ look-alike (aiohttp): the contract's endpoints, deterministic data, faults."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import signal
from typing import Any

import msgspec
from aiohttp import web

from .. import cnj, logs
from ..errors import InvalidProcessNumber
from .control import setup_control
from .data import FIXTURE_NUMBER, DocSpec, document_chunks, fixture_search, search_answer
from .state import SANDBOX, DocStats, Fault, Limit, SandboxSettings, SandboxState

__all__ = [
    "SANDBOX",
    "Fault",
    "Limit",
    "SandboxSettings",
    "SandboxState",
    "create_sandbox_app",
    "serve",
]

log = logs.get_logger(__name__)

API = "/api/v2"


def expected_document(app: web.Application, number: str, uuid: str) -> tuple[int, str, str]:
    """(size, sha256, mime) of what a sandbox app serves for a document."""
    return app[SANDBOX].expected_document(number, uuid)


SHELL_HTML = (
    b'<!doctype html>\n<html lang="pt-BR">\n<head>\n  <meta charset="utf-8">\n'
    b'  <title>PDPJ-Br | Portal de Servi\xc3\xa7os</title>\n  <base href="/">\n'
    b'  <meta name="viewport" content="width=device-width, initial-scale=1">\n'
    b'  <link rel="icon" type="image/x-icon" href="favicon.ico">\n'
    b'  <link rel="stylesheet" href="styles.9f1c2e.css">\n</head>\n<body>\n'
    b"  <app-root></app-root>\n  <noscript>Habilite o JavaScript para usar o portal.</noscript>\n"
    + b"  <!-- "
    + b"portal-de-servicos " * 80
    + b"-->\n"
    b'  <script src="runtime.3a7b.js" type="module"></script>\n'
    b'  <script src="main.5c0d.js" type="module"></script>\n</body>\n</html>\n'
)
_encode = msgspec.json.Encoder().encode


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=_encode(data), status=status, content_type="application/json", headers=headers
    )


def _shell() -> web.Response:
    return web.Response(body=SHELL_HTML, content_type="text/html", charset="utf-8")


def _number(request: web.Request) -> cnj.ProcessNumber:
    try:
        return cnj.parse(request.match_info["numero"])
    except InvalidProcessNumber:
        raise web.HTTPNotFound(text='{"message":"processo inválido"}') from None


@web.middleware
async def _api_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bearer auth, global latency and status counting for /api/v2."""
    state = request.app[SANDBOX]
    if not request.path.startswith(API + "/"):
        response: web.StreamResponse = await handler(request)
        return response
    state.requests += 1
    state.user_agents[request.headers.get("User-Agent", "")] += 1
    # The hidden limit is met on arrival, as a gateway does; the answer still takes the latency.
    admitted = state.admit()
    latency_ms = state.settings.latency_ms + state.limit.latency_ms
    if latency_ms:
        await asyncio.sleep(latency_ms / 1000)
    if not admitted:
        state.by_status["429"] += 1
        headers = {"Retry-After": state.limit.retry_after}
        return _json({"message": "Muitas requisições; tente mais tarde"}, 429, headers)
    if not _authorized(state, request.headers.get("Authorization", "")):
        state.unauthorized += 1
        state.by_status["401"] += 1
        return _json({"message": "Token inválido ou expirado"}, 401)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        state.by_status[str(exc.status)] += 1
        raise
    state.by_status[str(response.status)] += 1
    return response


def _authorized(state: SandboxState, header: str) -> bool:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), state.token.encode()):
        return False
    if state.token_expires_after is not None and state.authorized >= state.token_expires_after:
        return False
    state.authorized += 1
    return True


async def _apply(fault: Fault | None, kind: str) -> web.Response | None:
    """The answer a fault gives instead of the real one, after its latency."""
    if fault is None:
        return None
    if fault.latency_ms:
        await asyncio.sleep(fault.latency_ms / 1000)
    headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
    if fault.status is not None and fault.html_shell:
        # What the gateway answers clients it dislikes (e.g. no browser-like User-Agent).
        page = f"<html><body>{fault.status} Forbidden</body></html>"
        return web.Response(text=page, status=fault.status, content_type="text/html")
    if fault.status is not None:
        return _json({"status": fault.status, "message": "falha simulada"}, fault.status, headers)
    if fault.html_shell:
        return _shell()
    if fault.not_ready and kind == "binary":
        note = {"status": "EM_PROCESSAMENTO", "mensagem": "O documento está sendo preparado"}
        return _json(note, 200, headers)
    return None


async def details(request: web.Request) -> web.Response:
    """GET /processos/{numero}: array form by default, bare object per override or settings."""
    state = request.app[SANDBOX]
    number = _number(request)
    state.details[number.digits] += 1
    if answer := await _apply(state.fault_for("details", number.digits, None), "details"):
        return answer
    override = state.overrides.get(number.digits)
    form = (override.form if override else None) or state.settings.default_form
    if form == "missing":
        return _json({"message": "Processo não encontrado"}, 404)
    if form == "empty":
        return _json([])
    raw = state.process(number).raw
    return _json(raw if form == "object" else [raw])


async def search(request: web.Request) -> web.Response:
    """GET /processos?numeroProcesso=: the paged search answer; no match is 200 with []."""
    state = request.app[SANDBOX]
    try:
        number = cnj.parse(request.query.get("numeroProcesso", ""))
    except InvalidProcessNumber:
        return _json(fixture_search("process_search_empty.json"))
    override = state.overrides.get(number.digits)
    if override is not None and override.form in ("missing", "empty"):
        return _json(fixture_search("process_search_empty.json"))
    if number.digits == FIXTURE_NUMBER and override is None:
        return _json(fixture_search())
    return _json(search_answer(state.process(number).raw))


def _document(request: web.Request) -> tuple[cnj.ProcessNumber, DocSpec]:
    state = request.app[SANDBOX]
    number = _number(request)
    spec = state.process(number).documents.get(request.match_info["uuid"])
    if spec is None:
        raise web.HTTPNotFound(text='{"message":"documento não encontrado"}')
    return number, spec


async def binary(request: web.Request) -> web.StreamResponse:
    """GET .../documentos/{uuid}/binario: the bytes, streamed, with faults applied."""
    state = request.app[SANDBOX]
    number, spec = _document(request)
    fault = state.fault_for("binary", number.digits, spec.uuid)
    if answer := await _apply(fault, "binary"):
        return answer
    if spec.sigilo != "PUBLICO" and state.settings.refuse_sigiloso:
        return _json({"message": "Acesso negado: documento sigiloso"}, 403)
    stats = state.docs.setdefault(spec.uuid, DocStats())
    stats.fetches += 1
    response = web.StreamResponse(headers={"Content-Type": spec.mime})
    response.content_length = spec.size
    await response.prepare(request)
    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    try:
        limit = None
        if fault is not None:
            limit = fault.reset_after if fault.reset_after is not None else fault.truncate_after
        sent = await _send(request, response, spec, limit, fault, state.settings.chunk_size)
        stats.bytes += sent
        if fault is not None and limit is not None:
            _cut(request, reset=fault.reset_after is not None)
            return response
        await response.write_eof()
        # Counted only here: a client that went away mid-body raised out of _send above.
        stats.completed += 1
    finally:
        state.in_flight -= 1
    return response


async def _send(
    request: web.Request,
    response: web.StreamResponse,
    spec: DocSpec,
    limit: int | None,
    fault: Fault | None,
    chunk_size: int,
) -> int:
    bps = fault.bandwidth_bps if fault is not None else None
    step = chunk_size if not bps else max(1024, min(chunk_size, bps // 10))
    sent = 0
    for piece in document_chunks(spec.uuid, spec.size, spec.mime, limit):
        view = memoryview(piece)  # parts of it, not copies
        for start in range(0, len(view), step):
            part = view[start : start + step]
            await response.write(part)
            sent += len(part)
            if bps:
                await asyncio.sleep(len(part) / bps)
    return sent


def _cut(request: web.Request, *, reset: bool) -> None:
    transport = request.transport
    if transport is None:
        return
    if reset:
        transport.abort()
    else:
        transport.close()


async def text(request: web.Request) -> web.Response:
    """GET .../documentos/{uuid}/texto: a short extracted text."""
    state = request.app[SANDBOX]
    number, spec = _document(request)
    if answer := await _apply(state.fault_for("text", number.digits, spec.uuid), "text"):
        return answer
    if spec.sigilo != "PUBLICO" and state.settings.refuse_sigiloso:
        return _json({"message": "Acesso negado: documento sigiloso"}, 403)
    body = f"Texto extraído do documento {spec.uuid} do processo {number.masked}.\n"
    return web.Response(text=body, content_type="text/plain")


async def shell(_request: web.Request) -> web.Response:
    """Anything outside the API: the web app's shell page, 200 text/html, as the real host does."""
    return _shell()


def create_sandbox_app(settings: SandboxSettings | None = None) -> web.Application:
    """The sandbox as an aiohttp application."""
    app = web.Application(middlewares=[_api_middleware])
    app[SANDBOX] = SandboxState(settings or SandboxSettings())
    app.router.add_get(f"{API}/processos", search)
    app.router.add_get(f"{API}/processos/{{numero}}", details)
    app.router.add_get(f"{API}/processos/{{numero}}/documentos/{{uuid}}/binario", binary)
    app.router.add_get(f"{API}/processos/{{numero}}/documentos/{{uuid}}/texto", text)
    setup_control(app)
    app.router.add_get("/{tail:.*}", shell)
    return app


async def serve(settings: SandboxSettings, host: str = "127.0.0.1", port: int = 8181) -> int:
    """Run the sandbox until SIGINT or SIGTERM."""
    runner = web.AppRunner(create_sandbox_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("sandbox_started", url=f"http://{host}:{port}{API}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        log.info("sandbox_stopped")
    return 0
