"""SharedReads: concurrent identical status reads share one, never one older than the request."""

from __future__ import annotations

import asyncio

import pytest

from pdpj_async.api import SharedReads


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


async def test_a_request_never_gets_a_read_that_started_before_it_arrived() -> None:
    reads, source = SharedReads(), SlowSource()
    first = asyncio.create_task(reads.read("p", source.produce))
    await source.started.wait()
    # A write commits while the first read runs; requests sent after it must see it.
    source.value = 1
    second = asyncio.create_task(reads.read("p", source.produce))
    third = asyncio.create_task(reads.read("p", source.produce))
    await asyncio.sleep(0)
    source.go.set()
    assert await first == b"0"
    assert await second == b"1"
    assert await third == b"1"
    # The two later requests shared one read; the first was not reused for them.
    assert source.reads == 2


async def test_different_keys_are_never_shared() -> None:
    reads, source = SharedReads(), SlowSource()
    source.go.set()
    answers = await asyncio.gather(
        reads.read(("p", 1), source.produce), reads.read(("p", 2), source.produce)
    )
    assert answers == [b"0", b"0"] and source.reads == 2


async def test_a_failed_read_fails_its_waiters_and_the_next_read_starts_afresh() -> None:
    reads = SharedReads()
    calls = 0

    async def failing() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise RuntimeError("database gone")

    results = await asyncio.gather(
        reads.read("p", failing), reads.read("p", failing), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results) and calls == 1
    with pytest.raises(RuntimeError):
        await reads.read("p", failing)
    assert calls == 2


async def test_a_waiter_that_goes_away_does_not_cancel_the_others_read() -> None:
    reads, source = SharedReads(), SlowSource()
    leaving = asyncio.create_task(reads.read("p", source.produce))
    staying = asyncio.create_task(reads.read("p", source.produce))
    await source.started.wait()
    leaving.cancel()
    source.go.set()
    assert await staying == b"0"
    assert leaving.cancelled()
