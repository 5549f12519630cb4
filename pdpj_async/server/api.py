"""The HTTP API (base /api/v1): processes, status, jobs, documents, admin keys."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar, get_args

import msgspec
from aiohttp import web

from .. import cnj
from ..errors import InvalidRequest, NotFound
from ..jobs import StatusSnapshot, UrlSigner, Viewer
from ..process_data import DataView
from ..schemas import JobList, JobStatus, JobView, ProcessResponse, StatusView
from ..storage import Storage
from ..webhooks import outbox
from . import admin, appkeys, process_routes, search_routes
from .idempotency import PARAM as IDEMPOTENCY_KEY
from .idempotency import idempotent
from .middleware import caller
from .openapi import Operation, Param, Route
from .params import path_uuid
from .problems import Problem

_encode = msgspec.json.Encoder().encode

JSON = "application/json"
MAX_LIMIT = 200
_JOB_STATUSES = frozenset(get_args(JobStatus))

K = TypeVar("K", bound=Hashable)
M = TypeVar("M")
R = TypeVar("R")


class JobDetail(JobView, kw_only=True):
    """A job with its webhook deliveries and their attempts."""

    deliveries: list[outbox.Delivery]


def json_response(value: Any, status: int = 200) -> web.Response:
    """Encode a Struct (or builtins) as a JSON response."""
    return web.Response(body=_encode(value), status=status, content_type=JSON)


def base_url(request: web.Request) -> str:
    """The URL clients reach us at: http.public_url, or the request's own origin."""
    configured = request.app[appkeys.CONFIG].http.public_url
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


async def get_process(request: web.Request) -> web.Response:
    """Read (or fetch) a process and start downloading its documents for the caller."""
    number = _process_number(request)
    webhook_url = request.query.get("webhook_url") or None
    if webhook_url is not None:
        webhook_url = str(await request.app[appkeys.URL_GUARD].validate(webhook_url))
    response = await request.app[appkeys.PROCESSES].request(
        caller(request),
        number,
        base_url=base_url(request),
        webhook_url=webhook_url,
        auto_download=_bool_param(request, "auto_download", True),
        force_refresh=_bool_param(request, "force_refresh", False),
    )
    status = 202 if response.job is not None else 200
    view = request.query.get("view", "summary")
    if view == "full":
        # The answer as always, plus the typed data (`GET .../data`); read only when asked: this
        # is the route clients poll.
        data = await process_routes.typed_data(request, number)
        fields = {f: getattr(response, f) for f in response.__struct_fields__}
        return json_response(ProcessFullResponse(**fields, data=data), status=status)
    if view != "summary":
        raise InvalidRequest(f"view: expected summary or full, got {view[:40]!r}")
    return json_response(response, status=status)


class ProcessFullResponse(ProcessResponse, kw_only=True):
    """Answer to GET /processes/{number}: with `view=full`, the typed process data as `data`."""

    data: DataView | None = None


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
    app: web.Application, urls: SignedUrls, key: StatusKey, viewers: list[Viewer]
) -> StatusSnapshot:
    # Signed when the round starts, after each of its requests arrived: every URL is valid for
    # the full lifetime from the moment its request was made.
    number, base = key
    sign = urls.signer(app[appkeys.STORAGE])
    return await app[appkeys.JOBS].status_snapshot(number, viewers, base, sign)


STATUS_ROUNDS = web.AppKey("status_rounds", Rounds[StatusKey, Viewer, StatusSnapshot])


async def get_status(request: web.Request) -> web.Response:
    """The documents of a process with their states and fresh download URLs."""
    viewer = Viewer.of(caller(request))
    number = _parse_number(request.match_info["number"])
    # What a caller sees of the jobs depends on who it is (its own latest; an admin: anyone's);
    # the documents are the same for all, so one round serves every caller of the process.
    snapshot = await request.app[STATUS_ROUNDS].join((number, base_url(request)), viewer)
    return web.Response(body=snapshot.body(viewer), content_type=JSON)


async def list_jobs(request: web.Request) -> web.Response:
    """The caller's jobs (an admin's: everyone's), newest first, by cursor."""
    query = request.query
    status = query.get("status") or None
    if status is not None and status not in _JOB_STATUSES:
        raise InvalidRequest(f"status: not a job status: {status[:40]!r}")
    process = cnj.parse(query["process"]) if query.get("process") else None
    try:
        limit = int(query.get("limit", "50"))
    except ValueError:
        raise InvalidRequest("limit: expected an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit: expected 1 to {MAX_LIMIT}")
    page = await request.app[appkeys.JOBS].list(
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
    jobs = request.app[appkeys.JOBS]
    view = await jobs.get(caller(request), path_uuid(request, "job_id", "job"), base_url(request))
    deliveries = await outbox.deliveries_for_job(request.app[appkeys.POOL], view.job_id)
    fields = {f: getattr(view, f) for f in view.__struct_fields__}
    return json_response(JobDetail(**fields, deliveries=deliveries))


async def cancel_job(request: web.Request) -> web.Response:
    """Cancel an active job."""
    view = await request.app[appkeys.JOBS].cancel(
        caller(request), path_uuid(request, "job_id", "job"), base_url(request)
    )
    return json_response(view)


async def retry_job(request: web.Request) -> web.Response:
    """Queue a job's failed documents again."""
    view = await request.app[appkeys.JOBS].retry(
        caller(request), path_uuid(request, "job_id", "job"), base_url(request)
    )
    return json_response(view, status=202)


async def download_document(request: web.Request) -> web.Response:
    """Redirect to a fresh signed URL of an available document."""
    who = caller(request)
    uuid = request.match_info["uuid"]
    if len(uuid) > 100 or "\x00" in uuid:
        raise NotFound(f"no available document {uuid[:64]!r}")
    key = await request.app[appkeys.JOBS].available_document_key(who, uuid)
    url = request.app[appkeys.STORAGE].download_url(key)
    raise web.HTTPFound(url)


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
                      "boolean"),
                Param("view", "query", "summary (default) or full: full adds `data`, the typed "
                      "process data of GET /processes/{number}/data")],
        responses={200: ProcessFullResponse, 202: ProcessFullResponse})),
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
    Route("POST", "/api/v1/jobs/{job_id}/retry", idempotent(retry_job), Operation(
        "Retry a job's failed documents", "A new job when the old one is final.",
        params=[_JOB, IDEMPOTENCY_KEY], responses={202: JobView, 409: Problem, 422: Problem})),
    Route("GET", "/api/v1/documents/{uuid}/download", download_document, Operation(
        "Download a document", "Redirects (302) to a fresh signed URL.",
        params=[Param("uuid", "path", "PDPJ document uuid")], responses={302: None})),
]  # fmt: skip


def all_routes() -> list[Route]:
    """Every documented route: this module's and the webhook endpoints'."""
    from . import admin, batch_routes, endpoint_routes, process_routes, watch_routes, webhook_routes

    routes = [*ROUTES, *process_routes.ROUTES, *admin.ROUTES, *webhook_routes.ROUTES]
    routes += [*endpoint_routes.ROUTES, *batch_routes.ROUTES]
    return [*routes, *search_routes.ROUTES, *watch_routes.ROUTES]


def setup_routes(app: web.Application) -> None:
    """Mount the API routes."""
    app[STATUS_ROUNDS] = Rounds(functools.partial(_status_round, app, SignedUrls()))
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    admin.setup_routes(app)
    search_routes.setup_routes(app)
