"""Status reads in rounds over real HTTP and Postgres: one read serves every caller of a process,
each still sees only its own job, and nothing committed before a request is missed."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pdpj_async.app import create_app
from pdpj_async.cnj import parse
from pdpj_async.jobs import Viewer
from pdpj_async.schemas import StatusView
from pdpj_async.server import appkeys
from pdpj_async.server.api import STATUS_ROUNDS, SignedUrls
from pdpj_async.storage import content_disposition
from tests.fixtures.app import Keys, Stack, stack_config
from tests.fixtures.sandbox import Sandbox
from tests.test_api import NUMBER, request_process, three_docs


class PausedReads:
    """Wraps the status read: each read, once done, waits to be let go (a round in flight)."""

    def __init__(self, stack: Stack) -> None:
        self.jobs = stack.app[appkeys.JOBS]
        self.real = self.jobs.status_snapshot
        self.scopes: list[list[int | None]] = []
        self.done = asyncio.Event()
        self.go = asyncio.Event()
        self.jobs.status_snapshot = self.read

    async def read(self, number: Any, scopes: Any, *args: Any) -> Any:
        snapshot = await self.real(number, scopes, *args)
        self.scopes.append([viewer.scope for viewer in scopes])
        self.done.set()
        await self.go.wait()
        return snapshot


async def status(stack: Stack, key: Any) -> dict[str, Any]:
    resp = await stack.get(f"/api/v1/processes/{NUMBER}/status", key)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_callers_in_one_round_each_see_their_own_job(stack: Stack, sandbox: Sandbox) -> None:
    await three_docs(sandbox)
    mine = (await request_process(stack, stack.keys.user))["job"]
    theirs = (await request_process(stack, stack.keys.other))["job"]
    await stack.wait_job(mine["job_id"], stack.keys.user)
    await stack.wait_job(theirs["job_id"], stack.keys.other)
    paused = PausedReads(stack)
    # A first read holds the process's round open, so the next requests gather for one round.
    first = asyncio.create_task(status(stack, stack.keys.user))
    await paused.done.wait()
    paused.done.clear()
    keys = [stack.keys.user, stack.keys.other, stack.keys.admin, stack.keys.user]
    later = [asyncio.create_task(status(stack, key)) for key in keys]
    await asyncio.sleep(0.3)  # the requests reach the server and wait for the round
    paused.go.set()
    answers = [await t for t in later]
    earlier = await first
    # Two reads served the five requests; the second read was for all three callers.
    assert len(paused.scopes) == 2
    assert sorted(paused.scopes[1], key=str) == sorted(
        [stack.keys.user.info.id, stack.keys.other.info.id, None, stack.keys.user.info.id],
        key=str,
    )
    # Each user sees its own job; the admin sees the latest of anyone's (the other's).
    user, other = mine["job_id"], theirs["job_id"]
    assert [a["job"]["job_id"] for a in [earlier, *answers]] == [user, user, other, other, user]
    for answer in [earlier, *answers]:
        msgspec.convert(answer, StatusView)  # the documented type
        assert answer["status"] == "completed" and answer["completed_documents"] == 3
    # One round, one set of documents for all its callers (the very same signed URLs).
    assert all(a["documents"] == answers[0]["documents"] for a in answers)


async def test_a_caller_without_a_job_shares_the_round_and_sees_none(
    stack: Stack, sandbox: Sandbox
) -> None:
    await three_docs(sandbox)
    mine = (await request_process(stack, stack.keys.user))["job"]
    await stack.wait_job(mine["job_id"], stack.keys.user)
    # The other key asked for the process without downloading: it may see it, has no job.
    await request_process(stack, stack.keys.other, auto_download="false")
    rounds = stack.app[STATUS_ROUNDS]
    key = (parse(NUMBER), stack.config.http.public_url)
    user = Viewer(stack.keys.user.info.id, False)
    other = Viewer(stack.keys.other.info.id, False)
    # Joined in one step: one round for both.
    snap_user, snap_other = await asyncio.gather(rounds.join(key, user), rounds.join(key, other))
    assert snap_user is snap_other
    assert msgspec.json.decode(snap_user.body(user))["job"]["job_id"] == mine["job_id"]
    assert msgspec.json.decode(snap_other.body(other))["job"] is None


async def test_a_commit_during_a_round_is_seen_by_requests_that_came_after_it(
    stack: Stack, sandbox: Sandbox
) -> None:
    docs = await three_docs(sandbox)
    mine = (await request_process(stack, stack.keys.user))["job"]
    await stack.wait_job(mine["job_id"], stack.keys.user)
    await request_process(stack, stack.keys.other, auto_download="false")
    paused = PausedReads(stack)
    before = asyncio.create_task(status(stack, stack.keys.other))
    await paused.done.wait()
    # Committed while that round is in flight (it has read already): a document and a job change.
    pool = stack.app[appkeys.POOL]
    await pool.execute(
        "UPDATE pdpj.documents SET status = 'failed', error_message = 'gone' WHERE uuid = $1",
        docs[0]["uuid"],
    )
    await pool.execute(
        "UPDATE pdpj.jobs SET webhook_url = 'https://example.com/new' WHERE id = $1",
        mine["job_id"],
    )
    after = asyncio.create_task(status(stack, stack.keys.user))
    await asyncio.sleep(0.2)  # it reaches the server while the first round is in flight
    assert not after.done() and len(paused.scopes) == 1
    paused.go.set()
    old, new = await before, await after
    assert old["failed_documents"] == 0 and old["status"] == "completed"
    assert new["failed_documents"] == 1 and new["status"] == "failed"
    failed = next(d for d in new["documents"] if d["uuid"] == docs[0]["uuid"])
    assert failed["error_message"] == "gone" and failed["download_url"] is None
    assert new["job"]["webhook_url"] == "https://example.com/new"
    assert len(paused.scopes) == 2


async def test_download_urls_are_signed_when_the_round_starts(
    stack: Stack, sandbox: Sandbox
) -> None:
    await three_docs(sandbox)
    mine = (await request_process(stack, stack.keys.user))["job"]
    await stack.wait_job(mine["job_id"], stack.keys.user)
    first = await status(stack, stack.keys.user)
    await asyncio.sleep(1.1)
    second = await status(stack, stack.keys.user)
    # A later round signs afresh: its URLs expire later, so each lasts the configured lifetime
    # from its request.
    for a, b in zip(first["documents"], second["documents"], strict=True):
        assert a["download_url"] and b["download_url"] and a["download_url"] != b["download_url"]
        async with stack.client.session.get(b["download_url"]) as got:
            assert got.status == 200


class CountingStorage:
    """Signs like a store whose URLs carry the signing second."""

    def __init__(self) -> None:
        self.signed = 0

    def download_url(self, key: str) -> str:
        self.signed += 1
        return f"https://store/{key}?date={int(time.time())}"


async def test_urls_are_signed_once_a_second_and_are_what_signing_now_gives() -> None:
    storage, urls = CountingStorage(), SignedUrls()
    # Start just after a second begins, so that the two rounds fall in the same second.
    await asyncio.sleep(1.0 - time.time() % 1.0 + 0.01)
    first = urls.signer(storage)("a/b.pdf")  # type: ignore[arg-type]
    again = urls.signer(storage)("a/b.pdf")  # type: ignore[arg-type]
    assert first == again == storage.download_url("a/b.pdf")
    assert storage.signed == 2  # once by the rounds, once just now to compare
    await asyncio.sleep(1.0 - time.time() % 1.0 + 0.01)
    later = urls.signer(storage)("a/b.pdf")  # type: ignore[arg-type]
    assert later != first and storage.signed == 3


@pytest.mark.parametrize("backend", ["fs", "s3"])
async def test_status_links_download_each_document_under_its_original_name(
    backend: str,
    request: pytest.FixtureRequest,
    db_dsn: str,
    tmp_path: Path,
    pdpj_config: Any,
    api_keys: Keys,
    unused_tcp_port_factory: Any,
    aiohttp_client: Any,
    sandbox: Sandbox,
) -> None:
    """The signed links carry no file name: the object has its own Content-Disposition since
    its upload, and the bytes, type and name are the document's."""
    docs = await three_docs(sandbox)
    port = unused_tcp_port_factory()
    sections: dict[str, Any] = {}
    if backend == "s3":
        sections["storage"] = msgspec.to_builtins(request.getfixturevalue("s3_config"))
    config = stack_config(db_dsn, tmp_path, pdpj_config, port, **sections)
    app = create_app(config)
    client = await aiohttp_client(app, server_kwargs={"port": port})
    stack = Stack(client=client, config=config, keys=api_keys, app=app)
    job = (await request_process(stack, api_keys.user))["job"]
    await stack.wait_job(job["job_id"], api_keys.user)

    listed = (await status(stack, api_keys.user))["documents"]
    assert len(listed) == len(docs)
    for doc in listed:
        assert "content-disposition" not in doc["download_url"].lower()
        async with client.session.get(doc["download_url"]) as got:
            assert got.status == 200
            data = await got.read()
            assert got.headers["Content-Disposition"] == content_disposition(doc["name"])
            assert got.headers["Content-Type"].startswith(doc["mime_type"])
        assert hashlib.sha256(data).hexdigest() == doc["sha256"]
        redirect = await stack.get(
            f"/api/v1/documents/{doc['uuid']}/download", api_keys.user, allow_redirects=False
        )
        assert redirect.status == 302
        async with client.session.get(redirect.headers["Location"]) as got:
            assert got.headers["Content-Disposition"] == content_disposition(doc["name"])
            assert await got.read() == data
