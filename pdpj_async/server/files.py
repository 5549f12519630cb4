"""`GET /files/{key}`: downloads the daemon serves itself for the filesystem store (sendfile)."""

from __future__ import annotations

from aiohttp import web

from ..errors import NotFound
from ..storage import content_disposition
from ..storage.fs import ROUTE_PREFIX, FilesystemStorage
from . import appkeys


def setup_routes(app: web.Application, storage: FilesystemStorage | None = None) -> None:
    """Mount `GET /files/{key}`: the store checks signature and expiry, then sendfile serves it.

    Without `storage`, the handler uses `app[appkeys.STORAGE]` (set later, at startup, by the
    storage cleanup context); the route answers 404 when that store is not a filesystem one.
    """

    async def serve(request: web.Request) -> web.StreamResponse:
        store = storage if storage is not None else request.app.get(appkeys.STORAGE)
        if not isinstance(store, FilesystemStorage):
            raise NotFound("downloads are not served by this daemon")
        return await _serve(store, request)

    app.router.add_get(ROUTE_PREFIX + "{key:.+}", serve, name="storage_file")


async def _serve(storage: FilesystemStorage, request: web.Request) -> web.StreamResponse:
    query = request.query
    name = query.get("name", "")
    path, meta = await storage.open_link(
        request.match_info["key"], query.get("expires", ""), name, query.get("sig", "")
    )
    headers = {
        "Content-Type": meta.content_type,
        "Content-Disposition": content_disposition(name or meta.filename),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store",
    }
    return web.FileResponse(path, headers=headers)
