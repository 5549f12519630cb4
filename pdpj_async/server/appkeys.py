"""Typed application state: every web.AppKey of the daemon, declared in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

from .config import Config
from .keys import ApiKey, AuthCache

if TYPE_CHECKING:
    from .jobs import JobService
    from .middleware import RateLimits
    from .pipeline import Downloader
    from .processes import ProcessService
    from .queue import Queue
    from .sender import Sender
    from .ssrf import UrlGuard
    from .storage import Storage
    from .tokens import TokenProvider
    from .upstream import PdpjClient
    from .workers import Gate, WorkerPool

CONFIG = web.AppKey("config", Config)
POOL = web.AppKey("pool", asyncpg.Pool)
AUTH_CACHE = web.AppKey("auth_cache", AuthCache)
DSN = web.AppKey("dsn", str)
PUBLIC_URL = web.AppKey("public_url", str)
INSTANCE_ID = web.AppKey("instance_id", str)
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

# Per-request state.
REQUEST_ID = web.RequestKey("request_id", str)
API_KEY = web.RequestKey("api_key", ApiKey)

# Webhooks: the SSRF-guarded client that sends pings, and the built-in test receiver's inbox.
from .sender import WebhookClient  # noqa: E402 - appended section, no import cycle
from .webhooks import TestInbox  # noqa: E402

WEBHOOK_CLIENT = web.AppKey("webhook_client", WebhookClient)
WEBHOOK_TEST_INBOX = web.AppKey("webhook_test_inbox", TestInbox)
