"""The status machines of documents and jobs, against Postgres."""

from __future__ import annotations

import asyncio
from uuid import UUID

import asyncpg
import pytest

from pdpj_async import keys, states
from pdpj_async.config import QueueConfig
from pdpj_async.db import Connection, transaction
from pdpj_async.errors import InvalidTransition, LeaseLost
from pdpj_async.pipeline import Finisher
from pdpj_async.queue.table import Queue

DIGITS = "10117457720258110041"


async def seed_documents(pool: asyncpg.Pool, count: int) -> tuple[int, list[int]]:
    """A process with `count` pending documents; returns (process id, document ids)."""
    process_id: int = await pool.fetchval(
        "INSERT INTO pdpj.processes (number, raw) VALUES ($1, '{}') RETURNING id", DIGITS
    )
    ids = [
        await pool.fetchval(
            "INSERT INTO pdpj.documents (process_id, uuid, name, href, raw)"
            " VALUES ($1, $2, $3, $4, '{}') RETURNING id",
            process_id,
            f"uuid-{n}",
            f"doc {n}.pdf",
            f"/processos/x/documentos/uuid-{n}/binario",
        )
        for n in range(count)
    ]
    return process_id, ids


async def make_job(pool: asyncpg.Pool, process_id: int, documents: list[int], name: str) -> UUID:
    """An active job of a new client key over `documents`."""
    key = await keys.create_key(pool, name, "user")
    job_id: UUID = await pool.fetchval(
        "INSERT INTO pdpj.jobs (process_id, api_key_id) VALUES ($1, $2) RETURNING id",
        process_id,
        key.info.id,
    )
    await pool.execute(
        "INSERT INTO pdpj.job_documents (job_id, document_id) SELECT $1, unnest($2::bigint[])",
        job_id,
        documents,
    )
    return job_id


async def status_of(pool: asyncpg.Pool, document_id: int) -> str:
    status: str = await pool.fetchval(
        "SELECT status FROM pdpj.documents WHERE id = $1", document_id
    )
    return status


async def document(pool: asyncpg.Pool, document_id: int) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM pdpj.documents WHERE id = $1", document_id)
    assert row is not None
    return row


async def job(pool: asyncpg.Pool, job_id: UUID) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM pdpj.jobs WHERE id = $1", job_id)
    assert row is not None
    return row


class FinalHook:
    """Records the jobs made final, as the outbox insert would see them."""

    def __init__(self) -> None:
        self.calls: list[tuple[UUID, str]] = []

    async def __call__(self, conn: Connection, row: asyncpg.Record) -> None:
        self.calls.append((row["id"], row["status"]))


async def start(pool: asyncpg.Pool, document_id: int) -> bool:
    async with transaction(pool) as conn:
        return await states.document_started(conn, document_id)


async def finish(
    pool: asyncpg.Pool, document_id: int, hook: FinalHook | None = None, error: str | None = None
) -> bool:
    async with transaction(pool) as conn:
        return await states.document_finished(
            conn, document_id, hook, error=error, size=10, sha256="ab" * 32, storage_key="k"
        )


@pytest.mark.parametrize("target", ["pending", "processing", "failed", "available"])
async def test_an_available_document_never_changes_again(pool: asyncpg.Pool, target: str) -> None:
    _, (doc,) = await seed_documents(pool, 1)
    assert await start(pool, doc) and await finish(pool, doc)
    async with transaction(pool) as conn:
        assert not await states.transition_document(conn, doc, target)  # type: ignore[arg-type]
    assert await status_of(pool, doc) == "available"
    assert not await start(pool, doc)


async def test_a_pending_document_cannot_become_available_without_a_download(
    pool: asyncpg.Pool,
) -> None:
    _, (doc,) = await seed_documents(pool, 1)
    assert not await finish(pool, doc)
    assert await status_of(pool, doc) == "pending"
    async with transaction(pool) as conn:
        assert not await states.document_released(conn, doc)  # pending → pending is no release
    assert await status_of(pool, doc) == "pending"


async def test_transitions_outside_the_machine_are_refused_before_sql(pool: asyncpg.Pool) -> None:
    _, (doc,) = await seed_documents(pool, 1)
    async with transaction(pool) as conn:
        with pytest.raises(InvalidTransition):
            await states.transition_document(conn, doc, "pending", only_from=["available"])
        with pytest.raises(InvalidTransition):
            await states.transition_document(conn, doc, "available", only_from=["pending"])
        with pytest.raises(InvalidTransition):
            await states.transition_document(conn, doc, "failed", new_attempt=True)
    assert await status_of(pool, doc) == "pending"


async def test_every_attempt_is_counted_and_a_failed_document_may_be_retried(
    pool: asyncpg.Pool,
) -> None:
    _, (doc,) = await seed_documents(pool, 1)
    assert await start(pool, doc)
    assert await start(pool, doc)  # a retry, or a rescue after a lost lease
    assert await finish(pool, doc, error="PDPJ answered 503")
    row = await document(pool, doc)
    assert (row["status"], row["attempts"], row["error_message"]) == (
        "failed",
        2,
        "PDPJ answered 503",
    )
    assert await start(pool, doc) and await finish(pool, doc)
    row = await document(pool, doc)
    assert (row["status"], row["attempts"], row["error_message"]) == ("available", 3, None)


async def test_concurrent_finishers_never_both_complete(pool: asyncpg.Pool) -> None:
    process_id, (doc,) = await seed_documents(pool, 1)
    job_id = await make_job(pool, process_id, [doc], "alice")
    assert await start(pool, doc)
    hook = FinalHook()
    results = await asyncio.gather(
        *(finish(pool, doc, hook, error=None if n % 2 else "late failure") for n in range(6))
    )
    assert results.count(True) == 1
    final = await job(pool, job_id)
    assert final["completed_documents"] + final["failed_documents"] == 1
    assert hook.calls == [(job_id, final["status"])]


async def test_a_job_completes_when_all_its_documents_are_available(pool: asyncpg.Pool) -> None:
    process_id, docs = await seed_documents(pool, 2)
    job_id = await make_job(pool, process_id, docs, "alice")
    hook = FinalHook()
    assert await start(pool, docs[0])
    assert (await job(pool, job_id))["status"] == "processing"
    await finish(pool, docs[0], hook)
    row = await job(pool, job_id)
    assert (row["status"], row["completed_documents"], row["progress_percentage"]) == (
        "processing",
        1,
        50.0,
    )
    assert hook.calls == []
    await start(pool, docs[1])
    await finish(pool, docs[1], hook)
    row = await job(pool, job_id)
    assert (row["status"], row["completed_documents"], row["failed_documents"]) == (
        "completed",
        2,
        0,
    )
    assert row["progress_percentage"] == 100.0 and row["completed_at"] is not None
    assert hook.calls == [(job_id, "completed")]


async def test_a_job_fails_when_all_are_final_and_one_failed(pool: asyncpg.Pool) -> None:
    process_id, docs = await seed_documents(pool, 3)
    job_id = await make_job(pool, process_id, docs, "alice")
    hook = FinalHook()
    for doc in docs:
        await start(pool, doc)
    await finish(pool, docs[0], hook, error="PDPJ refused the document (403): sigiloso")
    assert (await job(pool, job_id))["status"] == "processing"
    await finish(pool, docs[1], hook)
    assert hook.calls == []
    await finish(pool, docs[2], hook)
    row = await job(pool, job_id)
    assert (row["status"], row["completed_documents"], row["failed_documents"]) == ("failed", 2, 1)
    assert row["progress_percentage"] == 100.0
    assert hook.calls == [(job_id, "failed")]


async def test_a_shared_document_advances_every_active_job_in_its_own_transaction(
    pool: asyncpg.Pool,
) -> None:
    process_id, docs = await seed_documents(pool, 2)
    alice = await make_job(pool, process_id, docs, "alice")
    bob = await make_job(pool, process_id, docs, "bob")
    cancelled = await make_job(pool, process_id, docs, "carol")
    await pool.execute("UPDATE pdpj.jobs SET status = 'cancelled' WHERE id = $1", cancelled)
    hook = FinalHook()
    for doc in docs:
        await start(pool, doc)

    async with transaction(pool) as conn:
        await states.document_finished(conn, docs[0], hook, size=1, sha256="0" * 64)
        # Inside the transaction both jobs have moved; outside, neither has yet.
        inside = await conn.fetch(
            "SELECT completed_documents FROM pdpj.jobs WHERE id = ANY($1::uuid[])", [alice, bob]
        )
        assert [r[0] for r in inside] == [1, 1]
        outside = await pool.fetch(
            "SELECT completed_documents FROM pdpj.jobs WHERE id = ANY($1::uuid[])", [alice, bob]
        )
        assert [r[0] for r in outside] == [0, 0]
    for job_id in (alice, bob):
        row = await job(pool, job_id)
        assert (row["completed_documents"], row["progress_percentage"]) == (1, 50.0)

    await finish(pool, docs[1], hook)
    assert sorted(hook.calls) == sorted([(alice, "completed"), (bob, "completed")])
    # A cancelled job is final: nothing moves it.
    row = await job(pool, cancelled)
    assert (row["status"], row["completed_documents"]) == ("cancelled", 0)


async def test_a_released_document_waits_again_and_its_job_with_it(pool: asyncpg.Pool) -> None:
    process_id, (doc,) = await seed_documents(pool, 1)
    job_id = await make_job(pool, process_id, [doc], "alice")
    await start(pool, doc)
    async with transaction(pool) as conn:
        assert await states.document_released(conn, doc)
    assert await status_of(pool, doc) == "pending"
    row = await job(pool, job_id)
    assert row["status"] in ("pending", "processing") and row["failed_documents"] == 0


async def test_documents_finished_together_commit_together_and_a_lost_lease_undoes_only_its_own(
    pool: asyncpg.Pool,
) -> None:
    """The download handler's group commit: documents that finish while a commit runs go in
    the next one; a row another worker took over fails alone, with LeaseLost."""
    process_id, docs = await seed_documents(pool, 6)
    job_id = await make_job(pool, process_id, docs, "alice")
    queue = Queue(pool, QueueConfig(), "finisher-test")
    async with transaction(pool) as conn:
        await queue.enqueue_many(conn, "download", [str(d) for d in docs])
    tasks = {int(t.ref): t for t in await queue.claim(10, ["download"])}
    for doc in docs:
        assert await start(pool, doc)
    # Another owner took the last row over (its lease had expired): this worker's commit of
    # that document must not land.
    stolen = tasks[docs[-1]]
    await pool.execute("UPDATE pdpj.queue SET lease_owner = 'other' WHERE id = $1", stolen.id)
    hook = FinalHook()
    finisher = Finisher(pool, queue, hook)

    def finished(doc: int) -> states.Finished:
        return states.Finished(
            document_id=doc, size=doc, sha256=f"{doc:064x}", storage_key=f"k/{doc}", mime_type="x/y"
        )

    results = await asyncio.gather(
        *(finisher.finish(tasks[d], finished(d)) for d in docs), return_exceptions=True
    )
    assert results[:-1] == [None] * 5
    assert isinstance(results[-1], LeaseLost)
    for doc in docs[:-1]:
        row = await document(pool, doc)
        assert (row["status"], row["size"], row["storage_key"]) == ("available", doc, f"k/{doc}")
    assert await status_of(pool, docs[-1]) == "processing"
    left = await pool.fetch("SELECT id FROM pdpj.queue WHERE kind = 'download'")
    assert [r["id"] for r in left] == [stolen.id]
    # The first attempt, with all six, completed the job and was rolled back: nothing of it
    # stays (the outbox insert is made in that same transaction).
    row = await job(pool, job_id)
    assert (row["status"], row["completed_documents"], row["completed_at"]) == (
        "processing",
        5,
        None,
    )
