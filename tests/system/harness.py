"""Shared pieces of the system tests: numbers, daemon fleets on S3, and the end-state audit."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec

from pdpj_async import cnj
from pdpj_async.config import Config, PdpjConfig, StorageConfig
from pdpj_async.storage import Storage
from tests.fixtures.app import stack_config
from tests.fixtures.receiver import Receiver
from tests.fixtures.s3 import S3Bucket
from tests.fixtures.sandbox import Sandbox
from tests.system.daemon import Daemon

FINAL_JOB = {"completed", "failed", "cancelled"}


@dataclass(frozen=True, slots=True)
class World:
    """What a fleet of daemons on S3 runs against, and what its end state is audited with: the
    database, the sandbox PDPJ, the bucket, the webhook receiver, a scratch directory and free
    ports (the `world` fixture)."""

    db_dsn: str
    tmp_path: Path
    sandbox: Sandbox
    pdpj_config: PdpjConfig
    s3_config: StorageConfig
    s3_bucket: S3Bucket
    s3_storage: Storage
    pool: asyncpg.Pool
    receiver: Receiver
    free_port: Callable[[], int]


def make_number(sequence: int, court: str = "26", origin: str = "0100") -> str:
    """A valid masked CNJ number (state court `court`, year 2025) for a sequence."""
    return cnj.parse(cnj.compose(sequence, "2025", "8", court, origin)).masked


def daemon_config(
    db_dsn: str,
    tmp_path: Path,
    pdpj: PdpjConfig,
    port: int,
    storage: StorageConfig | None,
    name: str,
    **sections: Any,
) -> Config:
    """A daemon with short leases (quick rescue after a kill) and a fixed instance name."""
    merged: dict[str, Any] = {
        "daemon": {"instance_id": name, "shutdown_grace_s": 3.0},
        "queue": {
            "workers": 4,
            "poll_interval_s": 0.5,
            "lease_s": 2.0,
            "heartbeat_s": 0.5,
            "backoff_base_s": 0.05,
            "backoff_cap_s": 0.5,
            "max_attempts": 8,
        },
        "webhooks": {
            # Receivers are on 127.0.0.1 at random ports: loopback listed explicitly.
            "allowed_networks": ["127.0.0.0/8"],
            "allowed_ports": [],
            "schedule_s": [0, 0.2, 0.5, 1, 1, 1, 1, 1, 1, 1],
            "timeout_s": 2.0,
            "lease_s": 3.0,
            "poll_interval_s": 0.5,
        },
        "logging": {"format": "json", "level": "info"},
    }
    if storage is not None:
        merged["storage"] = msgspec.to_builtins(storage)
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    return stack_config(db_dsn, tmp_path, pdpj, port, **merged)


class Fleet:
    """Daemons started and killed by name; each restart gets a fresh instance id and log."""

    def __init__(self, tmp_path: Path, make_config: Any) -> None:
        self.tmp_path = tmp_path
        self.make_config = make_config  # (name) -> Config
        self.daemons: dict[str, Daemon] = {}
        self.generations: Counter[str] = Counter()
        self.kills = 0

    def start(self, slot: str) -> Daemon:
        """Start (or restart) the daemon of a slot."""
        self.generations[slot] += 1
        name = f"{slot}-g{self.generations[slot]}"
        daemon = Daemon(self.make_config(name), self.tmp_path / f"{name}.log")
        daemon.instance = name  # type: ignore[attr-defined]
        daemon.start()
        self.daemons[slot] = daemon
        return daemon

    def sigkill(self, slot: str) -> str:
        """SIGKILL a slot's daemon; returns the instance name it had."""
        daemon = self.daemons[slot]
        daemon.kill()
        self.kills += 1
        return str(daemon.instance)  # type: ignore[attr-defined]

    def stop_all(self) -> None:
        for daemon in self.daemons.values():
            daemon.kill()

    async def terminate_all(self) -> list[int]:
        """SIGTERM every live daemon and wait; returns the exit codes."""
        live = [d for d in self.daemons.values() if d.proc is not None and d.proc.poll() is None]
        for daemon in live:
            daemon.signal()
        return [await daemon.wait_exit(timeout=30) for daemon in live]

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in self.tmp_path.glob("*.log"))


async def request_process(
    http: aiohttp.ClientSession, base: str, key: str, number: str, webhook_url: str | None
) -> dict[str, Any]:
    """GET /processes/{number}, retried while no daemon answers (they are being killed)."""
    params = {"webhook_url": webhook_url} if webhook_url else {}
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(200):
        try:
            async with http.get(
                f"{base}/api/v1/processes/{number}", params=params, headers=headers
            ) as resp:
                if resp.status in (200, 202):
                    body: dict[str, Any] = await resp.json()
                    return body
                assert resp.status >= 500, (resp.status, await resp.text())
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"no daemon accepted {number}")


async def wait_jobs_final(pool: asyncpg.Pool, within_s: float, on_tick: Any = None) -> None:
    """Wait until every job in the database is final; `on_tick()` runs every ~0.2 s."""
    async with asyncio.timeout(within_s):
        while await pool.fetchval(
            "SELECT count(*) FROM pdpj.jobs WHERE status <> ALL($1::text[])", sorted(FINAL_JOB)
        ):
            if on_tick is not None:
                await on_tick()
            await asyncio.sleep(0.2)


async def wait_deliveries_settled(pool: asyncpg.Pool, within_s: float) -> None:
    """Wait until no webhook delivery is still pending."""
    async with asyncio.timeout(within_s):
        while await pool.fetchval(
            "SELECT count(*) FROM pdpj.webhook_deliveries"
            " WHERE status NOT IN ('delivered', 'failed')"
        ):
            await asyncio.sleep(0.2)


class Audit(msgspec.Struct):
    """What the end-state check counted."""

    documents: int
    objects: int
    jobs: int
    deliveries_received: int


async def audit_end_state(
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    bucket: S3Bucket,
    receiver: Receiver | None,
    expect_failed: set[str] | None = None,
) -> Audit:
    """Assert the promises: documents verified, one object each, no open uploads, jobs final,
    webhooks delivered with one webhook-id per job."""
    expect_failed = expect_failed or set()
    docs = await pool.fetch(
        "SELECT d.uuid, d.status, d.sha256, d.size, d.storage_key, d.error_message, p.number"
        " FROM pdpj.documents d JOIN pdpj.processes p ON p.id = d.process_id"
    )
    assert docs, "no documents were recorded"
    wrong = []
    for doc in docs:
        if doc["uuid"] in expect_failed:
            if doc["status"] != "failed" or not doc["error_message"]:
                wrong.append((doc["uuid"], doc["status"], doc["error_message"]))
            continue
        size, sha256, _ = sandbox.expected(doc["number"], doc["uuid"])
        if (doc["status"], doc["sha256"], doc["size"]) != ("available", sha256, size):
            wrong.append((doc["uuid"], doc["status"], doc["error_message"]))
    assert not wrong, f"{len(wrong)} documents not verified: {wrong[:5]}"

    # Each stored document may have its extracted text beside it (`…/text.txt`): one at most,
    # and only beside a stored document.
    listed = bucket.keys()
    texts = [k for k in listed if k.endswith("/text.txt")]
    keys = [k for k in listed if not k.endswith("/text.txt")]
    stored = {d["storage_key"] for d in docs if d["status"] == "available"}
    folders = {key.rsplit("/", 1)[0] for key in stored}
    assert all(t.rsplit("/", 1)[0] in folders for t in texts), texts[:3]
    assert len(stored) == len([d for d in docs if d["status"] == "available"])
    assert sorted(keys) == sorted(stored), (
        f"bucket has {len(keys)} objects for {len(stored)} documents; "
        f"extra {sorted(set(keys) - stored)[:3]}, missing {sorted(stored - set(keys))[:3]}"
    )
    assert bucket.open_uploads() == [], bucket.open_uploads()

    jobs = await pool.fetch("SELECT id, status, webhook_url FROM pdpj.jobs")
    assert all(j["status"] in FINAL_JOB for j in jobs), Counter(j["status"] for j in jobs)
    received = 0
    if receiver is not None:
        by_job: dict[str, set[str]] = defaultdict(set)
        for message in receiver.received:
            by_job[message.json()["job_id"]].add(message.webhook_id)
        received = len(receiver.received)
        for job in jobs:
            if job["webhook_url"]:
                ids = by_job.get(str(job["id"]), set())
                assert len(ids) == 1, (str(job["id"]), ids)
        undelivered = await pool.fetch(
            "SELECT id, status, last_error FROM pdpj.webhook_deliveries WHERE status <> 'delivered'"
        )
        assert not undelivered, undelivered
    return Audit(
        documents=len(docs), objects=len(keys), jobs=len(jobs), deliveries_received=received
    )


def enable_versioning(bucket: S3Bucket) -> None:
    """Keep every version: each committed upload of a key then shows as one more version."""
    bucket.client.put_bucket_versioning(
        Bucket=bucket.name, VersioningConfiguration={"Status": "Enabled"}
    )


def versions_per_key(bucket: S3Bucket) -> Counter[str]:
    """How many uploads of each key completed (needs versioning)."""
    counts: Counter[str] = Counter()
    paginator = bucket.client.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket.name):
        for version in page.get("Versions", []):
            counts[version["Key"]] += 1
    return counts


def random_moments(count: int, low: float, high: float, seed: int) -> list[float]:
    """Pauses between kills, reproducible from the seed printed on failure."""
    rng = random.Random(seed)
    return [rng.uniform(low, high) for _ in range(count)]
