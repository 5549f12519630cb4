"""A local PDPJ look-alike (aiohttp): the contract's endpoints, deterministic data, faults."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import signal
from collections import Counter
from typing import Any, Literal

import msgspec
from aiohttp import web

from . import cnj, logs
from .errors import InvalidProcessNumber
from .sandbox_data import (
    FIXTURE_NUMBER,
    DocSpec,
    ProcessOverride,
    SandboxProcess,
    document_chunks,
    document_sha256,
    fixture_search,
    generate_process,
    search_answer,
)

log = logs.get_logger(__name__)

API = "/api/v2"
Scope = Literal["binary", "details", "text", "all"]


class Fault(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A misbehaviour for matching requests; the newest matching rule wins."""

    uuid: str | None = None
    # 20 digits or masked; matches that process's details and documents.
    number: str | None = None
    scope: Scope = "binary"
    # Answer this status instead (500/502/503/429/404/403...), with Retry-After if given.
    status: int | None = None
    retry_after: str | None = None
    latency_ms: float = 0.0
    # Answer the web app's HTML shell (200 text/html) instead of the file; with `status`,
    # a bare HTML error page with that status instead (the gateway's 403).
    html_shell: bool = False
    # Answer a short "being prepared" JSON (200) instead of the file.
    not_ready: bool = False
    # Send this many body bytes, then abort the connection (a reset).
    reset_after: int | None = None
    # Send this many body bytes under the full Content-Length, then close cleanly.
    truncate_after: int | None = None
    bandwidth_bps: int | None = None
    # Apply to this many requests, then disappear; None: until cleared.
    times: int | None = None


class SandboxSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How the sandbox behaves; faults and overrides can also be changed at run time."""

    token: str = "sandbox-token"  # noqa: S105 - the sandbox's well-known default
    # Added to every API request.
    latency_ms: float = 0.0
    docs_per_process: tuple[int, int] = (0, 8)
    doc_size_range: tuple[int, int] = (1024, 256 * 1024)
    sigiloso_ratio: float = 0.0
    # SIGILOSO documents answer 403, as PDPJ does to a token without access.
    refuse_sigiloso: bool = True
    default_form: Literal["array", "object"] = "array"
    # After this many authenticated requests the token answers 401 until a new one is set.
    token_expires_after: int | None = None
    faults: list[Fault] = []
    overrides: list[ProcessOverride] = []
    chunk_size: int = 64 * 1024


class DocStats(msgspec.Struct):
    fetches: int = 0
    completed: int = 0
    bytes: int = 0


class SandboxState:
    """Run-time state: token, faults, overrides, counters."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.reset()

    def reset(self) -> None:
        """Back to the settings: token, faults, overrides; counters cleared."""
        self.token = self.settings.token
        self.token_expires_after = self.settings.token_expires_after
        self.faults: list[Fault] = list(self.settings.faults)
        # Before the overrides below, which invalidate cache entries.
        self._cache: dict[str, SandboxProcess] = {}
        self.overrides: dict[str, ProcessOverride] = {}
        for override in self.settings.overrides:
            self.set_override(override)
        self.authorized = 0
        self.requests = 0
        self.unauthorized = 0
        self.by_status: Counter[str] = Counter()
        self.details: Counter[str] = Counter()
        self.user_agents: Counter[str] = Counter()
        self.docs: dict[str, DocStats] = {}
        self.in_flight = 0
        self.max_in_flight = 0

    def set_override(self, override: ProcessOverride) -> None:
        """Replace how one number answers."""
        digits = cnj.parse(override.number).digits
        self.overrides[digits] = msgspec.structs.replace(override, number=digits)
        self._cache.pop(digits, None)

    def process(self, number: cnj.ProcessNumber) -> SandboxProcess:
        """The (cached) process for a number."""
        found = self._cache.get(number.digits)
        if found is None:
            found = generate_process(
                number,
                self.overrides.get(number.digits),
                size_range=self.settings.doc_size_range,
                count_range=self.settings.docs_per_process,
                sigiloso_ratio=self.settings.sigiloso_ratio,
            )
            self._cache[number.digits] = found
        return found

    def expected_document(self, number: str, uuid: str) -> tuple[int, str, str]:
        """(size, sha256, mime) of what the binary endpoint serves for this document."""
        spec = self.process(cnj.parse(number)).documents[uuid]
        return spec.size, document_sha256(spec.uuid, spec.size, spec.mime), spec.mime

    def fault_for(self, kind: str, digits: str, uuid: str | None) -> Fault | None:
        """The newest matching fault, counting down its `times`."""
        for index in range(len(self.faults) - 1, -1, -1):
            fault = self.faults[index]
            if fault.scope not in (kind, "all"):
                continue
            if fault.uuid is not None and fault.uuid != uuid:
                continue
            if fault.number is not None and cnj.parse(fault.number).digits != digits:
                continue
            if fault.times is not None:
                if fault.times <= 1:
                    del self.faults[index]
                else:
                    self.faults[index] = msgspec.structs.replace(fault, times=fault.times - 1)
            return fault
        return None

    def stats(self) -> dict[str, Any]:
        """Counters for tests: per-uuid fetches and completed fetches, statuses, concurrency."""
        return {
            "requests": self.requests,
            "unauthorized": self.unauthorized,
            "by_status": dict(self.by_status),
            "details": dict(self.details),
            "user_agents": dict(self.user_agents),
            "documents": {k: msgspec.to_builtins(v) for k, v in self.docs.items()},
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }


SANDBOX = web.AppKey("sandbox", SandboxState)


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
    if state.settings.latency_ms:
        await asyncio.sleep(state.settings.latency_ms / 1000)
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
        for start in range(0, len(piece), step):
            part = piece[start : start + step]
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


# ---- control endpoints (no auth: the sandbox listens on loopback) ----


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


async def get_stats(request: web.Request) -> web.Response:
    """GET /_sandbox/stats: request counters and per-uuid fetches/completed fetches."""
    return _json(request.app[SANDBOX].stats())


async def reset(request: web.Request) -> web.Response:
    """POST /_sandbox/reset: back to the settings, counters cleared."""
    request.app[SANDBOX].reset()
    return _json({"ok": True})


def create_sandbox_app(settings: SandboxSettings | None = None) -> web.Application:
    """The sandbox as an aiohttp application."""
    app = web.Application(middlewares=[_api_middleware])
    app[SANDBOX] = SandboxState(settings or SandboxSettings())
    app.router.add_get(f"{API}/processos", search)
    app.router.add_get(f"{API}/processos/{{numero}}", details)
    app.router.add_get(f"{API}/processos/{{numero}}/documentos/{{uuid}}/binario", binary)
    app.router.add_get(f"{API}/processos/{{numero}}/documentos/{{uuid}}/texto", text)
    app.router.add_post("/_sandbox/faults", add_fault)
    app.router.add_delete("/_sandbox/faults", clear_faults)
    app.router.add_post("/_sandbox/processes", set_process)
    app.router.add_post("/_sandbox/token", set_token)
    app.router.add_get("/_sandbox/stats", get_stats)
    app.router.add_post("/_sandbox/reset", reset)
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
