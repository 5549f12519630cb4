"""The HTTP API (base /api/v1): processes, status, jobs, documents, admin keys."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from aiohttp import web

from . import cnj, keys, queries, state, webhooks
from .errors import InvalidRequest, NotFound
from .keys import KeyInfo
from .middleware import caller
from .openapi import Operation, Param, Route
from .problems import Problem
from .views import JobList, JobView, ProcessResponse, StatusView

_encode = msgspec.json.Encoder().encode

JSON = "application/json"
_PROC = queries.load("processes")
MAX_LIMIT = 200


class CreateKeyRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Body of POST /admin/api-keys."""

    name: str = msgspec.field()
    role: Literal["admin", "user"] = "user"
    # Bounded: the columns are a double and a 32-bit integer.
    rate_limit_per_s: Annotated[float, msgspec.Meta(gt=0, le=1_000_000)] | None = None
    rate_limit_burst: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None


class JobDetail(JobView, kw_only=True):
    """A job with its webhook deliveries and their attempts."""

    deliveries: list[webhooks.Delivery]


class CreatedKey(msgspec.Struct, kw_only=True):
    """A new key: the only time `key` and `webhook_secret` are shown."""

    key: str
    webhook_secret: str
    info: KeyInfo


def json_response(value: Any, status: int = 200) -> web.Response:
    """Encode a Struct (or builtins) as a JSON response."""
    return web.Response(body=_encode(value), status=status, content_type=JSON)


def base_url(request: web.Request) -> str:
    """The URL clients reach us at: http.public_url, or the request's own origin."""
    configured = request.app[state.CONFIG].http.public_url
    return configured.rstrip("/") if configured else str(request.url.origin())


def _bool_param(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    raise InvalidRequest(f"{name}: expected true or false, got {raw[:40]!r}")


def _process_number(request: web.Request) -> cnj.ProcessNumber:
    return cnj.parse(request.match_info["number"])


def _job_id(request: web.Request) -> UUID:
    raw = request.match_info["job_id"]
    try:
        return UUID(raw)
    except ValueError:
        raise NotFound(f"no job {raw[:64]!r}") from None


async def get_process(request: web.Request) -> web.Response:
    """Read (or fetch) a process and start downloading its documents for the caller."""
    number = _process_number(request)
    webhook_url = request.query.get("webhook_url") or None
    if webhook_url is not None:
        webhook_url = str(await request.app[state.URL_GUARD].validate(webhook_url))
    response = await request.app[state.PROCESSES].request(
        caller(request),
        number,
        base_url=base_url(request),
        webhook_url=webhook_url,
        auto_download=_bool_param(request, "auto_download", True),
        force_refresh=_bool_param(request, "force_refresh", False),
    )
    return json_response(response, status=202 if response.job is not None else 200)


class SharedReads:
    """Identical concurrent reads share one: a request joins the next read to *start*.

    Many clients poll the same process's status; while one read is running, the requests that
    arrive wait for a single next read (started once the running one ends) and all get its
    answer. A request never gets an answer read before it arrived, so it sees every write
    committed before it was made, as if it had read alone.
    """

    def __init__(self) -> None:
        self._queued: dict[Hashable, asyncio.Future[bytes]] = {}
        self._running: dict[Hashable, asyncio.Future[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def read(self, key: Hashable, produce: Callable[[], Awaitable[bytes]]) -> bytes:
        """The answer of a read of `key` started after this call; raises what `produce` raises."""
        future = self._queued.get(key)
        if future is None:
            future = self._queued[key] = asyncio.get_running_loop().create_future()
            # Marks a failure as seen even when every waiter has gone away.
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            task = asyncio.create_task(self._run(key, future, produce), name="shared-read")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # A waiter that goes away (client disconnect) must not cancel the others' read.
        return await asyncio.shield(future)

    async def _run(
        self, key: Hashable, future: asyncio.Future[bytes], produce: Callable[[], Awaitable[bytes]]
    ) -> None:
        try:
            running = self._running.get(key)
            if running is not None:
                await asyncio.wait([running])
        finally:
            del self._queued[key]
        self._running[key] = future
        try:
            future.set_result(await produce())
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:  # handed to every waiter
            future.set_exception(exc)
        finally:
            del self._running[key]


SHARED_READS = web.AppKey("shared_reads", SharedReads)


async def get_status(request: web.Request) -> web.Response:
    """The documents of a process with their states and fresh download URLs."""
    storage = request.app[state.STORAGE]
    who = caller(request)
    number = _process_number(request)
    base = base_url(request)

    def sign(key: str, name: str) -> str:
        return storage.download_url(key, filename=name)

    async def produce() -> bytes:
        view = await request.app[state.JOBS].process_status(who, number, base, sign)
        return _encode(view)

    # What a caller sees depends on who it is (its own latest job; an admin's: anyone's).
    scope = None if who.is_admin else who.id
    body = await request.app[SHARED_READS].read((number.digits, scope, base), produce)
    return web.Response(body=body, content_type=JSON)


async def list_jobs(request: web.Request) -> web.Response:
    """The caller's jobs (an admin's: everyone's), newest first, by cursor."""
    query = request.query
    status = query.get("status") or None
    if status is not None and status not in {
        "pending",
        "processing",
        "completed",
        "failed",
        "cancelled",
    }:
        raise InvalidRequest(f"status: not a job status: {status[:40]!r}")
    process = cnj.parse(query["process"]) if query.get("process") else None
    try:
        limit = int(query.get("limit", "50"))
    except ValueError:
        raise InvalidRequest("limit: expected an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit: expected 1 to {MAX_LIMIT}")
    page = await request.app[state.JOBS].list(
        caller(request),
        base_url(request),
        status=status,
        process=process,
        cursor=query.get("cursor") or None,
        limit=limit,
    )
    return json_response(page)


async def get_job(request: web.Request) -> web.Response:
    """One job with its webhook deliveries."""
    jobs = request.app[state.JOBS]
    view = await jobs.get(caller(request), _job_id(request), base_url(request))
    deliveries = await webhooks.deliveries_for_job(request.app[state.POOL], view.job_id)
    fields = {f: getattr(view, f) for f in view.__struct_fields__}
    return json_response(JobDetail(**fields, deliveries=deliveries))


async def cancel_job(request: web.Request) -> web.Response:
    """Cancel an active job."""
    view = await request.app[state.JOBS].cancel(
        caller(request), _job_id(request), base_url(request)
    )
    return json_response(view)


async def retry_job(request: web.Request) -> web.Response:
    """Queue a job's failed documents again."""
    view = await request.app[state.JOBS].retry(caller(request), _job_id(request), base_url(request))
    return json_response(view, status=202)


async def download_document(request: web.Request) -> web.Response:
    """Redirect to a fresh signed URL of an available document."""
    caller(request)
    uuid = request.match_info["uuid"]
    if len(uuid) > 100 or "\x00" in uuid:
        raise NotFound("no such document")
    row = await request.app[state.POOL].fetchrow(_PROC["available_document_by_uuid"], uuid)
    if row is None:
        raise NotFound(f"no available document {uuid[:64]!r}")
    url = request.app[state.STORAGE].download_url(row["storage_key"], filename=row["name"])
    raise web.HTTPFound(url)


async def create_key(request: web.Request) -> web.Response:
    """Create an API key (admin)."""
    try:
        body = msgspec.json.decode(await request.read(), type=CreateKeyRequest)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"body: {exc}") from None
    except msgspec.DecodeError:
        raise InvalidRequest("body: expected a JSON object") from None
    if not 1 <= len(body.name) <= 200:
        raise InvalidRequest("name: 1 to 200 characters")
    new = await keys.create_key(
        request.app[state.POOL],
        body.name,
        body.role,
        rate_limit_per_s=body.rate_limit_per_s,
        rate_limit_burst=body.rate_limit_burst,
    )
    return json_response(
        CreatedKey(key=new.key, webhook_secret=new.webhook_secret, info=new.info), status=201
    )


async def list_keys(request: web.Request) -> web.Response:
    """Every API key (admin); never the keys themselves."""
    return json_response(await keys.list_keys(request.app[state.POOL]))


async def revoke_key(request: web.Request) -> web.Response:
    """Revoke an API key (admin)."""
    try:
        key_id = int(request.match_info["key_id"])
    except ValueError:
        raise NotFound("no such API key") from None
    info = await keys.revoke_key(request.app[state.POOL], key_id)
    request.app[state.AUTH_CACHE].clear()
    return json_response(info)


_NUMBER = Param("number", "path", "CNJ number: 20 digits or NNNNNNN-DD.AAAA.J.TR.OOOO")
_JOB = Param("job_id", "path", "job id (uuid)")
ROUTES: list[Route] = [
    Route("GET", "/api/v1/processes/{number}", get_process, Operation(
        "Request a process", "Reads the process (from PDPJ when needed) and starts downloading "
        "its documents for the caller; returns the caller's active job.",
        params=[_NUMBER,
                Param("webhook_url", "query", "where to POST the job's final event"),
                Param("auto_download", "query", "start a job (default true)", "boolean"),
                Param("force_refresh", "query", "fetch from PDPJ again (default false)",
                      "boolean")],
        responses={200: ProcessResponse, 202: ProcessResponse})),
    Route("GET", "/api/v1/processes/{number}/status", get_status, Operation(
        "Status of a process", "Every document with its state and a fresh download URL.",
        params=[_NUMBER], responses={200: StatusView})),
    Route("GET", "/api/v1/jobs", list_jobs, Operation(
        "List jobs", "The caller's jobs, newest first; admins see all.",
        params=[Param("status", "query", "filter by status"),
                Param("process", "query", "filter by process number"),
                Param("cursor", "query", "next_cursor of the previous page"),
                Param("limit", "query", "page size, 1 to 200 (default 50)", "integer")],
        responses={200: JobList})),
    Route("GET", "/api/v1/jobs/{job_id}", get_job, Operation(
        "Get a job", "One job with its webhook deliveries and their attempts.",
        params=[_JOB], responses={200: JobDetail})),
    Route("POST", "/api/v1/jobs/{job_id}/cancel", cancel_job, Operation(
        "Cancel a job", "Cancels an active job; shared documents keep downloading for others.",
        params=[_JOB], responses={200: JobView, 409: Problem})),
    Route("POST", "/api/v1/jobs/{job_id}/retry", retry_job, Operation(
        "Retry a job's failed documents", "A new job when the old one is final.",
        params=[_JOB], responses={202: JobView, 409: Problem})),
    Route("GET", "/api/v1/documents/{uuid}/download", download_document, Operation(
        "Download a document", "Redirects (302) to a fresh signed URL.",
        params=[Param("uuid", "path", "PDPJ document uuid")], responses={302: None})),
    Route("POST", "/api/v1/admin/api-keys", create_key, Operation(
        "Create an API key", "Admin only. The key and its webhook secret are shown once.",
        body=CreateKeyRequest, responses={201: CreatedKey})),
    Route("GET", "/api/v1/admin/api-keys", list_keys, Operation(
        "List API keys", "Admin only.", responses={200: list[KeyInfo]})),
    Route("DELETE", "/api/v1/admin/api-keys/{key_id}", revoke_key, Operation(
        "Revoke an API key", "Admin only.",
        params=[Param("key_id", "path", "key id", "integer")], responses={200: KeyInfo})),
]  # fmt: skip


def all_routes() -> list[Route]:
    """Every documented route: this module's and the webhook endpoints'."""
    from . import webhook_routes

    return [*ROUTES, *webhook_routes.ROUTES]


def setup_routes(app: web.Application) -> None:
    """Mount the API routes."""
    app[SHARED_READS] = SharedReads()
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
