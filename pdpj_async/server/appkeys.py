"""Typed application state: every web.AppKey of the daemon, declared in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

from ..config import Config
from ..keys import ApiKey, AuthCache
from ..tasks import Supervisor
from ..webhooks.client import WebhookClient
from ..webhooks.outbox import TestInbox

if TYPE_CHECKING:
    from ..access import AccessLog
    from ..jobs import JobService
    from ..pipeline import Downloader
    from ..processes import ProcessService
    from ..queue.gate import Gate
    from ..queue.table import Queue
    from ..queue.workers import WorkerPool
    from ..storage import Storage
    from ..upstream.client import PdpjClient
    from ..upstream.tokens import TokenProvider
    from ..watches import Refresher, WatchService
    from ..webhooks.sender import Sender
    from ..webhooks.ssrf import UrlGuard
    from .middleware import RateLimits

CONFIG = web.AppKey("config", Config)
POOL = web.AppKey("pool", asyncpg.Pool)
AUTH_CACHE = web.AppKey("auth_cache", AuthCache)
DSN = web.AppKey("dsn", str)
PUBLIC_URL = web.AppKey("public_url", str)
INSTANCE_ID = web.AppKey("instance_id", str)
SUPERVISOR = web.AppKey("supervisor", Supervisor)
TOKENS: web.AppKey[TokenProvider] = web.AppKey("tokens")
UPSTREAM: web.AppKey[PdpjClient] = web.AppKey("upstream")
STORAGE: web.AppKey[Storage] = web.AppKey("storage")
QUEUE: web.AppKey[Queue] = web.AppKey("queue")
GATE: web.AppKey[Gate] = web.AppKey("upstream_gate")
WORKERS: web.AppKey[WorkerPool] = web.AppKey("workers")
DOWNLOADER: web.AppKey[Downloader] = web.AppKey("downloader")
SENDER: web.AppKey[Sender] = web.AppKey("sender")
URL_GUARD: web.AppKey[UrlGuard] = web.AppKey("url_guard")
PROCESSES: web.AppKey[ProcessService] = web.AppKey("processes")
JOBS: web.AppKey[JobService] = web.AppKey("jobs")
RATE_LIMITS: web.AppKey[RateLimits] = web.AppKey("rate_limits")
ACCESS_LOG: web.AppKey[AccessLog] = web.AppKey("access_log")
WATCHES: web.AppKey[WatchService] = web.AppKey("watches")
REFRESHER: web.AppKey[Refresher] = web.AppKey("refresher")

# Per-request state.
REQUEST_ID = web.RequestKey("request_id", str)
API_KEY = web.RequestKey("api_key", ApiKey)

# Webhooks: the SSRF-guarded client that sends pings, and the built-in test receiver's inbox.
WEBHOOK_CLIENT = web.AppKey("webhook_client", WebhookClient)
WEBHOOK_TEST_INBOX = web.AppKey("webhook_test_inbox", TestInbox)
