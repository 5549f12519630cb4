"""Idempotency-Key records: a POST's successful answer, kept 24 h and replayed to its repeats."""

from __future__ import annotations

from typing import Literal

import msgspec

from .db import Executor, queries

_SQL = queries.load("idempotency")

# A stored answer is replayed this long after the request that made it.
TTL_S = 86400.0
# A request in flight holds its key this long; past it (its daemon died) the same request may
# run again. Longer than any POST takes (a bulk of 10,000 numbers: a few seconds).
LEASE_S = 120.0
# Reservation attempts: a record released between our insert and our read is reserved again.
_TRIES = 3

Outcome = Literal["reserved", "replay", "mismatch", "in_flight"]


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """A stored response."""

    status: int
    content_type: str
    body: bytes


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """What a request with an Idempotency-Key may do: run (reserved), replay, or be refused."""

    outcome: Outcome
    answer: Answer | None = None
    retry_after_s: float | None = None


async def reserve(conn: Executor, api_key_id: int, key: str, fingerprint: bytes) -> Claim:
    """Take the key for this request, or say why not (its answer exists, or it is in use)."""
    for _ in range(_TRIES):
        if await conn.fetchval(_SQL["reserve"], api_key_id, key, fingerprint, LEASE_S, TTL_S):
            return Claim(outcome="reserved")
        row = await conn.fetchrow(_SQL["find"], api_key_id, key)
        if row is None:
            continue  # released (its request failed) or expired since the insert: try again
        if bytes(row["fingerprint"]) != fingerprint:
            return Claim(outcome="mismatch")
        if row["status"] is None:
            return Claim(outcome="in_flight", retry_after_s=max(row["lease_left_s"], 1.0))
        answer = Answer(status=row["status"], content_type=row["content_type"], body=row["body"])
        return Claim(outcome="replay", answer=answer)
    return Claim(outcome="in_flight", retry_after_s=1.0)


async def store(
    conn: Executor, api_key_id: int, key: str, fingerprint: bytes, answer: Answer
) -> None:
    """Keep the answer of the request that holds the key."""
    await conn.execute(
        _SQL["store"], api_key_id, key, fingerprint, answer.status, answer.content_type, answer.body
    )


async def release(conn: Executor, api_key_id: int, key: str, fingerprint: bytes) -> None:
    """Free the key of a request that did not succeed, so that it may be retried."""
    await conn.execute(_SQL["release"], api_key_id, key, fingerprint)
