"""Loaded databases kept between benchmark runs (bench/scale.py --data-dir).

A 5-million-document history takes 400-870 s to load; timing its hot paths takes a minute. A
kept database is reused while what made it is unchanged: the statements that loaded it, and
the migrations it was loaded with (each one's text without its `-- depends:` line, which
changes when branches are chained, not what the migration does). Migrations added since are
applied to it, then VACUUM ANALYZE. DIR/loaded.json records, per database, what loaded it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import harness

MARKS = "loaded.json"

Load = Callable[[str, int], Awaitable[float]]


def fingerprint(text: str) -> str:
    """A short digest of `text`."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def migration_prints() -> dict[str, str]:
    """Each migration file's digest, its `-- depends:` line left out."""
    from pdpj_async.db import MIGRATIONS_DIR

    prints: dict[str, str] = {}
    for path in sorted(Path(MIGRATIONS_DIR).glob("*.sql")):
        lines = path.read_text().splitlines()
        body = "\n".join(line for line in lines if not line.startswith("-- depends:"))
        prints[path.name] = fingerprint(body)
    return prints


def still_valid(mark: dict[str, Any] | None, load_print: str, now: dict[str, str]) -> str | None:
    """Why a kept database cannot be reused (None when it can)."""
    if mark is None:
        return "not loaded yet"
    if mark.get("load") != load_print:
        return "the history's statements changed"
    changed = [
        name for name, digest in mark.get("migrations", {}).items() if now.get(name) != digest
    ]
    if changed:
        return f"migrations changed or gone since the load: {', '.join(changed)}"
    return None


async def database(
    pg: harness.Postgres, root: Path, name: str, load_sql: str, load: Load, documents: int
) -> tuple[str, float, bool]:
    """The DSN of database `name` under `pg`, loaded by `load(dsn, documents)` unless kept.

    Returns (dsn, seconds its load took, whether it was reused)."""
    import asyncpg

    from pdpj_async import db

    marks_path = root / MARKS
    marks: dict[str, Any] = json.loads(marks_path.read_text()) if marks_path.exists() else {}
    dsn = pg.server.dsn_for(name)
    load_print = fingerprint(load_sql)
    conn = await asyncpg.connect(pg.dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    finally:
        await conn.close()
    why = still_valid(marks.get(name), load_print, migration_prints()) if exists else "missing"
    if why is None:
        started = time.perf_counter()
        applied = db.apply_migrations(dsn)
        await _vacuum(dsn)
        marks[name]["migrations"] = migration_prints()
        marks_path.write_text(json.dumps(marks, indent=2) + "\n")
        print(
            f"{name}: kept data reused ({applied} migrations applied, vacuumed in"
            f" {time.perf_counter() - started:.1f} s)",
            flush=True,
        )
        return dsn, float(marks[name]["load_s"]), True
    print(f"{name}: loading {documents:,} documents ({why})", flush=True)
    # Forgotten first: a load that fails half-way must not be taken for a kept one.
    marks.pop(name, None)
    marks_path.write_text(json.dumps(marks, indent=2) + "\n")
    await _recreate(pg.dsn, name)
    db.apply_migrations(dsn)
    seconds = await load(dsn, documents)
    marks[name] = {
        "documents": documents,
        "load": load_print,
        "load_s": round(seconds, 1),
        "migrations": migration_prints(),
    }
    marks_path.write_text(json.dumps(marks, indent=2) + "\n")
    print(f"{name}: loaded {documents:,} documents in {seconds:.1f} s", flush=True)
    return dsn, seconds, False


async def _recreate(server_dsn: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _vacuum(dsn: str) -> None:
    # Rolled-back timing runs leave dead row versions, new migrations new indexes: what
    # autovacuum would have settled between two runs of a real deployment.
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
