"""The HTTP API (base /api/v1): processes, status, jobs, documents, admin keys."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Annotated, Any, Generic, Literal, TypeVar
from uuid import UUID

import msgspec
from aiohttp import web

from . import cnj, keys, queries, state, webhooks
from .errors import InvalidRequest, NotFound
from .jobs import StatusSnapshot, UrlSigner
from .keys import KeyInfo
from .middleware import caller
from .openapi import Operation, Param, Route
from .problems import Problem
from .storage import Storage
from .views import JobList, JobView, ProcessResponse, StatusView

_encode = msgspec.json.Encoder().encode

JSON = "application/json"
_PROC = queries.load("processes")
MAX_LIMIT = 200

K = TypeVar("K", bound=Hashable)
M = TypeVar("M")
R = TypeVar("R")


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


class Rounds(Generic[K, M, R]):
    """Concurrent reads of one key run in rounds: a request joins the next round to *start*.

    Many clients poll the same process's status. While a round of a key runs, the requests that
    arrive gather for the next one, which starts once the running one ends and answers all of
    them with one read (`run(key, members)`, each request adding its member, e.g. its caller).
    A request never gets an answer read before it arrived, so it sees every write committed
    before it was made, as if it had read alone.
    """

    def __init__(self, run: Callable[[K, list[M]], Awaitable[R]]) -> None:
        self._run = run
        self._gathering: dict[K, _Round[M, R]] = {}
        self._running: dict[K, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def join(self, key: K, member: M) -> R:
        """The result of a round of `key` started after this call; raises what `run` raises."""
        gathering = self._gathering.get(key)
        if gathering is None:
            gathering = self._gathering[key] = _Round()
            # In a context of its own: the round is not the request that happened to start it
            # (its log lines must not carry that request's id).
            task = asyncio.create_task(
                self._serve(key, gathering), name="read-round", context=contextvars.Context()
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        gathering.members.append(member)
        # A future of its own: a waiter that goes away (client disconnect) cancels only it.
        waiter: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        gathering.waiters.append(waiter)
        return await waiter

    async def _serve(self, key: K, gathering: _Round[M, R]) -> None:
        try:
            running = self._running.get(key)
            if running is not None:
                await asyncio.wait([running])
        except asyncio.CancelledError as exc:
            del self._gathering[key]
            gathering.fail(exc)
            raise
        # Closed to newcomers in the same step as it starts: a later request waits for the next.
        del self._gathering[key]
        finished = self._running[key] = asyncio.get_running_loop().create_future()
        try:
            gathering.resolve(await self._run(key, gathering.members))
        except BaseException as exc:  # handed to every waiter
            gathering.fail(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            del self._running[key]
            finished.set_result(None)


class _Round(Generic[M, R]):
    """The requests gathered for one round: their members, and a future for each."""

    __slots__ = ("members", "waiters")

    def __init__(self) -> None:
        self.members: list[M] = []
        self.waiters: list[asyncio.Future[R]] = []

    def resolve(self, result: R) -> None:
        for waiter in self.waiters:
            if not waiter.done():  # done: its request went away
                waiter.set_result(result)

    def fail(self, error: BaseException) -> None:
        for waiter in self.waiters:
            if waiter.done():
                continue
            if isinstance(error, asyncio.CancelledError):
                waiter.cancel()
            else:
                waiter.set_exception(error)


# Valid numbers a client polls, parsed once (invalid ones raise, and are not kept).
_parse_number = functools.lru_cache(maxsize=1024)(cnj.parse)


# A round of status reads: one process, as seen from one base URL (it is in the job's links).
StatusKey = tuple[cnj.ProcessNumber, str]


class SignedUrls:
    """Download URLs memoized within the current second, for rounds that sign the same ones.

    Both stores put the signing second in the URL (S3's X-Amz-Date, the filesystem's expiry)
    and sign deterministically, so a URL kept from earlier in the same second is the very URL
    signing now would give: valid for the full lifetime from every request it answers (for a
    store that did not, it would be signed under a second before: valid for lifetime - 1 s).
    """

    def __init__(self) -> None:
        self._second = -1
        self._urls: dict[str, str] = {}

    def signer(self, storage: Storage) -> UrlSigner:
        """A signer for one round (within one second of its start)."""
        second = int(time.time())
        if second != self._second:
            self._second, self._urls = second, {}
        urls = self._urls

        def sign(storage_key: str) -> str:
            url = urls.get(storage_key)
            if url is None:
                url = urls[storage_key] = storage.download_url(storage_key)
            return url

        return sign


async def _status_round(
    app: web.Application, urls: SignedUrls, key: StatusKey, scopes: list[int | None]
) -> StatusSnapshot:
    # Signed when the round starts, after each of its requests arrived: every URL is valid for
    # the full lifetime from the moment its request was made.
    number, base = key
    sign = urls.signer(app[state.STORAGE])
    return await app[state.JOBS].status_snapshot(number, scopes, base, sign)


STATUS_ROUNDS = web.AppKey("status_rounds", Rounds[StatusKey, int | None, StatusSnapshot])


async def get_status(request: web.Request) -> web.Response:
    """The documents of a process with their states and fresh download URLs."""
    who = caller(request)
    number = _parse_number(request.match_info["number"])
    # What a caller sees of the jobs depends on who it is (its own latest; an admin: anyone's);
    # the documents are the same for all, so one round serves every caller of the process.
    scope = None if who.is_admin else who.id
    snapshot = await request.app[STATUS_ROUNDS].join((number, base_url(request)), scope)
    return web.Response(body=snapshot.body(scope), content_type=JSON)


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
    url = request.app[state.STORAGE].download_url(row["storage_key"])
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
        "Revoke an API key", "Admin only. The last active admin key cannot be revoked (409).",
        params=[Param("key_id", "path", "key id", "integer")],
        responses={200: KeyInfo, 409: Problem})),
]  # fmt: skip


def all_routes() -> list[Route]:
    """Every documented route: this module's and the webhook endpoints'."""
    from . import webhook_routes

    return [*ROUTES, *webhook_routes.ROUTES]


def setup_routes(app: web.Application) -> None:
    """Mount the API routes."""
    app[STATUS_ROUNDS] = Rounds(functools.partial(_status_round, app, SignedUrls()))
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
