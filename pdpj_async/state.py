"""Typed application state: every web.AppKey of the daemon, declared in one place."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from .config import Config
from .keys import ApiKey, AuthCache

CONFIG = web.AppKey("config", Config)
POOL = web.AppKey("pool", asyncpg.Pool)
AUTH_CACHE = web.AppKey("auth_cache", AuthCache)

# Per-request state.
REQUEST_ID = web.RequestKey("request_id", str)
API_KEY = web.RequestKey("api_key", ApiKey)
