"""Rounds: concurrent reads of one key share a round, never one older than the request."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pdpj_async.server.api import Rounds


class SlowSource:
    """A stand-in for the database read: takes its snapshot at start, then waits to be let go."""

    def __init__(self) -> None:
        self.value = 0
        self.reads = 0
        self.started = asyncio.Event()
        self.go = asyncio.Event()

    async def produce(self) -> bytes:
        self.reads += 1
        snapshot = self.value
        self.started.set()
        await self.go.wait()
        return str(snapshot).encode()


def shared(produce: Callable[[], Awaitable[bytes]]) -> Rounds[Any, Any, bytes]:
    """Rounds whose read ignores its members: every request of a round gets the same answer."""

    async def run(_key: Any, _members: list[Any]) -> bytes:
        return await produce()

    return Rounds(run)


async def test_a_request_never_gets_a_read_that_started_before_it_arrived() -> None:
    source = SlowSource()
    reads = shared(source.produce)
    first = asyncio.create_task(reads.join("p", "a"))
    await source.started.wait()
    # A write commits while the first read runs; requests sent after it must see it.
    source.value = 1
    second = asyncio.create_task(reads.join("p", "b"))
    third = asyncio.create_task(reads.join("p", "c"))
    await asyncio.sleep(0)
    source.go.set()
    assert await first == b"0"
    assert await second == b"1"
    assert await third == b"1"
    # The two later requests shared one read; the first was not reused for them.
    assert source.reads == 2


async def test_different_keys_are_never_shared() -> None:
    source = SlowSource()
    reads = shared(source.produce)
    source.go.set()
    answers = await asyncio.gather(reads.join(("p", 1), "a"), reads.join(("p", 2), "a"))
    assert answers == [b"0", b"0"] and source.reads == 2


async def test_a_failed_read_fails_its_waiters_and_the_next_read_starts_afresh() -> None:
    calls = 0

    async def failing() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise RuntimeError("database gone")

    reads = shared(failing)
    results = await asyncio.gather(
        reads.join("p", "a"), reads.join("p", "b"), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results) and calls == 1
    with pytest.raises(RuntimeError):
        await reads.join("p", "a")
    assert calls == 2


async def test_a_waiter_that_goes_away_does_not_cancel_the_others_read() -> None:
    source = SlowSource()
    reads = shared(source.produce)
    leaving = asyncio.create_task(reads.join("p", "a"))
    staying = asyncio.create_task(reads.join("p", "b"))
    await source.started.wait()
    leaving.cancel()
    source.go.set()
    assert await staying == b"0"
    assert leaving.cancelled()


async def test_a_round_reads_for_every_member_that_joined_before_it_started() -> None:
    # Members are the callers; the read is done once for all of those waiting when it starts.
    go = asyncio.Event()
    rounds_seen: list[list[str]] = []

    async def run(_key: str, members: list[str]) -> list[str]:
        rounds_seen.append(list(members))
        await go.wait()
        return members

    reads: Rounds[str, str, list[str]] = Rounds(run)
    first = asyncio.create_task(reads.join("p", "alice"))
    await asyncio.sleep(0)
    later = [asyncio.create_task(reads.join("p", who)) for who in ("bob", "carol", "bob")]
    await asyncio.sleep(0)
    go.set()
    assert await first == ["alice"]
    assert [await t for t in later] == [["bob", "carol", "bob"]] * 3
    assert rounds_seen == [["alice"], ["bob", "carol", "bob"]]
