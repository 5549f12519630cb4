"""Watches: a key follows processes; one refresh per process (a queue row due at its slot)
serves every key watching it, and each gets `process.updated` with exactly the new items
(model: wire types; store: the API's operations; scheduler: due times; refresh: the refresh
handler; events: what each watcher is told, and the announce handler)."""

from .events import ANNOUNCE_KIND, Announcer
from .model import PutResult, WatchPage, WatchRequest, WatchView
from .refresh import Refresher, RefreshStats
from .scheduler import REFRESH_KIND, REFRESH_PRIORITY
from .store import WatchService, list_all, policy

__all__ = [
    "ANNOUNCE_KIND",
    "REFRESH_KIND",
    "REFRESH_PRIORITY",
    "Announcer",
    "PutResult",
    "RefreshStats",
    "Refresher",
    "WatchPage",
    "WatchRequest",
    "WatchService",
    "WatchView",
    "list_all",
    "policy",
]
