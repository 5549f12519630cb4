"""API keys: generated once, stored as a hash, found by prefix, compared in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from datetime import datetime
from typing import Literal

import asyncpg
import msgspec

from .db import Executor, queries
from .errors import AuthError, Conflict, NotFound

KEY_PREFIX = "pdpj_"
SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
# Characters of the key stored in clear to find its row.
LOOKUP_CHARS = 12

Role = Literal["admin", "user"]

_SQL = queries.load("keys")


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated caller."""

    id: int
    name: str
    role: Role
    rate_limit_per_s: float | None = None
    rate_limit_burst: int | None = None
    # May see sealed (sigiloso) material: set by an admin when the key is created.
    can_read_sigiloso: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def sees_sealed(self) -> bool:
        """Sealed processes and documents are shown to admins and to keys with the permission."""
        return self.is_admin or self.can_read_sigiloso


class KeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What may be shown of a key after its creation: never the key itself."""

    id: int
    name: str
    role: Role
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None
    rate_limit_per_s: float | None = None
    rate_limit_burst: int | None = None
    can_read_sigiloso: bool = False


class NewKey(msgspec.Struct, frozen=True, kw_only=True):
    """A key just created: the only time the key and its secret are shown."""

    info: KeyInfo
    key: str
    webhook_secret: str


def generate_key() -> str:
    """A new random API key (`pdpj_` + 43 url-safe characters)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def generate_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def hash_key(key: str) -> bytes:
    """The stored form of a key (the key has 256 random bits: a plain hash suffices)."""
    return hashlib.sha256(key.encode()).digest()


def lookup_prefix(key: str) -> str:
    """The stored clear prefix of a key."""
    return key[:LOOKUP_CHARS]


async def create_key(
    conn: Executor,
    name: str,
    role: Role,
    *,
    rate_limit_per_s: float | None = None,
    rate_limit_burst: int | None = None,
    can_read_sigiloso: bool = False,
) -> NewKey:
    """Create and store a key; the returned NewKey is the only copy of the key."""
    key = generate_key()
    secret = generate_webhook_secret()
    row = await conn.fetchrow(
        _SQL["insert_key"],
        name,
        role,
        lookup_prefix(key),
        hash_key(key),
        secret,
        rate_limit_per_s,
        rate_limit_burst,
        can_read_sigiloso,
    )
    assert row is not None
    return NewKey(info=KeyInfo(**dict(row)), key=key, webhook_secret=secret)


async def authenticate(conn: Executor, key: str) -> ApiKey:
    """The caller behind `key`; raises AuthError for an unknown, malformed or revoked key."""
    if not key.startswith(KEY_PREFIX) or not 20 <= len(key) <= 128:
        raise AuthError("the API key is malformed")
    row = await conn.fetchrow(_SQL["find_by_prefix"], lookup_prefix(key))
    # Compare even when no row matched, so that timing says nothing about prefixes.
    stored = row["key_hash"] if row is not None else b"\0" * 32
    if not hmac.compare_digest(stored, hash_key(key)) or row is None:
        raise AuthError("the API key is not known")
    if row["revoked_at"] is not None:
        raise AuthError("the API key has been revoked")
    return ApiKey(
        id=row["id"],
        name=row["name"],
        role=row["role"],
        rate_limit_per_s=row["rate_limit_per_s"],
        rate_limit_burst=row["rate_limit_burst"],
        can_read_sigiloso=row["can_read_sigiloso"],
    )


async def list_keys(conn: Executor) -> list[KeyInfo]:
    """Every key, revoked ones included."""
    return [KeyInfo(**dict(r)) for r in await conn.fetch(_SQL["list_keys"])]


async def revoke_key(pool: asyncpg.Pool, key_id: int, *, allow_last_admin: bool = False) -> KeyInfo:
    """Revoke a key (idempotent); raises NotFound for an unknown id, and Conflict for the last
    active admin key unless `allow_last_admin` (the operator's CLI, which can always create a
    new one: through the API nobody could administer the service any more)."""
    async with pool.acquire() as conn, conn.transaction():
        admins = [r["id"] for r in await conn.fetch(_SQL["lock_active_admins"])]
        if admins == [key_id] and not allow_last_admin:
            raise Conflict(
                f"API key {key_id} is the last active admin key: create another admin key first"
            )
        await conn.execute(_SQL["revoke_key"], key_id)
        row = await conn.fetchrow(_SQL["get_key"], key_id)
    if row is None:
        raise NotFound(f"no API key with id {key_id}")
    return KeyInfo(**dict(row))


async def rotate_secret(conn: Executor, key_id: int) -> str:
    """Give a key a new webhook secret; the old one stays valid for the overlap window."""
    secret = generate_webhook_secret()
    if await conn.fetchval(_SQL["rotate_secret"], key_id, secret) is None:
        raise NotFound(f"no active API key with id {key_id}")
    return secret


class AuthCache:
    """Recently verified keys, kept briefly so that a hot client costs no query per request;
    and recently refused ones, kept longer, so that repeating a bad key costs none either."""

    def __init__(
        self, ttl_s: float = 2.0, max_entries: int = 10_000, refused_ttl_s: float = 30.0
    ) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._refused_ttl = refused_ttl_s
        self._entries: dict[bytes, tuple[float, ApiKey]] = {}
        self._refused: dict[bytes, tuple[float, str]] = {}

    def refused(self, key: str) -> str | None:
        """Why `key` was refused recently (unknown, revoked), or None."""
        entry = self._refused.get(hash_key(key))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put_refused(self, key: str, reason: str) -> None:
        if len(self._refused) >= self._max:
            self._refused.clear()
        self._refused[hash_key(key)] = (time.monotonic() + self._refused_ttl, reason)

    def get(self, key: str) -> ApiKey | None:
        entry = self._entries.get(hash_key(key))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key: str, api_key: ApiKey) -> None:
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[hash_key(key)] = (time.monotonic() + self._ttl, api_key)

    def clear(self) -> None:
        """Forget every key (after a revocation in this process)."""
        self._entries.clear()
        self._refused.clear()
