"""Movement identities and the stored movements: the same fingerprint for every form of
timestamp PDPJ may send, and each new movement stored as it was parsed."""

from __future__ import annotations

import copy
import hashlib
from datetime import UTC, datetime
from typing import Any

import asyncpg

from pdpj_async.process_data import parse
from pdpj_async.upstream.parse import BRASILIA
from tests.test_process_data import contract_details, stored_baseline

# Every form a dataHora may take: PDPJ's usual Brasília time with 0 to 6 fraction digits, times
# that roll over the day, the month and the year in UTC, early years, offsets, a date alone and
# texts that are no date (and an offset in seconds, which JSON cannot write).
STAMPS = [
    "2024-08-02T17:22:09.301",
    "2024-09-12T08:03:55.6",
    "2024-10-01T09:00:00",
    "2024-10-01T09:00:00.000",
    "2024-10-01T09:00:00.000001",
    "2024-10-01T09:00:00.123456",
    "2024-10-01T21:00:00",
    "2024-10-31T23:59:59.999",
    "2024-12-31T22:30:00.5",
    "2024-02-28T23:00:00",
    "0999-01-01T00:00:00.25",
    "2024-10-01T12:00:00Z",
    "2024-10-01T12:00:00.123+05:30",
    "2024-10-01T12:00:00-03:00",
    "2024-10-01T12:00:00.5+05:30:15.25",
    "2024-10-01",
    "2024-10-01T09:15",
    "não é data",
]


def expected_instant(stamp: str) -> tuple[str, datetime | None]:
    # The module's documented rule, spelled out the plain way: the instant in UTC as ISO 8601
    # (Brasília time when no offset is given), else the text as sent.
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp, None
    aware = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=BRASILIA)
    return aware.astimezone(UTC).isoformat(), aware


def with_movements(entries: list[Any]) -> dict[str, Any]:
    raw = contract_details()
    raw.pop("tramitacoes")
    raw["tramitacaoAtual"]["movimentos"] = entries
    return raw


def test_movement_ids_and_dates_follow_the_documented_rule_for_every_timestamp_form() -> None:
    entries = [{"dataHora": s, "descricao": f"d{i}"} for i, s in enumerate(STAMPS)]
    found = {m.id: m for m in parse(with_movements(entries)).movements}
    assert len(found) == len(STAMPS)
    for i, stamp in enumerate(STAMPS):
        when, aware = expected_instant(stamp)
        text = f"{when}|d{i}|0"
        move = found["m" + hashlib.sha256(text.encode()).hexdigest()[:24]]
        assert move.dataHora == aware, stamp
        # Brasília time keeps its offset (the change lists it as PDPJ meant it).
        offset = aware.utcoffset() if aware is not None else None
        assert (move.dataHora.utcoffset() if move.dataHora else None) == offset, stamp


def test_movements_come_newest_first_with_the_undated_last() -> None:
    entries = [{"dataHora": s, "descricao": f"m{i}"} for i, s in enumerate(STAMPS)]
    entries.append({"descricao": "sem data"})
    moves = parse(with_movements(entries)).movements
    dated = [m for m in moves if m.dataHora is not None]
    # Newest first; the same instant sent twice (in two forms) is ordered by id.
    assert [(m.dataHora, m.id) for m in dated] == sorted(
        ((m.dataHora, m.id) for m in dated), reverse=True
    )
    undated = sorted(m.id for m in moves[len(dated) :])
    assert [m.id for m in moves[len(dated) :]] == undated[::-1]
    assert {m.descricao for m in moves[len(dated) :]} == {"m17", "sem data"}


def test_a_date_that_leaves_the_calendar_in_utc_is_kept_as_text_not_a_failed_parse() -> None:
    stamp = "9999-12-31T23:00:00"  # Brasília time: past year 9999 in UTC
    [move] = parse(with_movements([{"dataHora": stamp, "descricao": "Fim"}])).movements
    assert move.dataHora is None
    assert move.id == "m" + hashlib.sha256(f"{stamp}|Fim|0".encode()).hexdigest()[:24]


async def test_each_new_movement_is_stored_as_parsed(pool: asyncpg.Pool) -> None:

    tricky = 'Aspas " barra \\ nova\nlinha, acentos ção e emoji 🙂'
    entries: list[Any] = [{"dataHora": s, "descricao": f"d{i}"} for i, s in enumerate(STAMPS)]
    entries += [
        {"dataHora": STAMPS[0], "descricao": tricky, "extra": {"a": [1, None, 2.5]}},
        {"dataHora": STAMPS[0], "descricao": tricky},  # an identical line: a second movement
        {"descricao": 12},
        {"dataHora": None},
        "not an entry",
    ]
    raw = with_movements(entries)
    appeal = copy.deepcopy(raw["tramitacaoAtual"])
    appeal["grau"]["sigla"] = "G1"
    appeal["movimentos"] = entries[:3]  # listed by both instances
    raw["tramitacoes"] = [appeal]
    process_id = await stored_baseline(pool, raw)
    rows = await pool.fetch(
        "SELECT id, data_hora, descricao, instances, raw FROM pdpj.process_movements"
        " WHERE process_id = $1",
        process_id,
    )
    stored = {r["id"]: r for r in rows}
    parsed = parse(raw)
    assert len(stored) == len(parsed.movements) == len(entries) - 1
    for move, entry in zip(parsed.movements, parsed.movement_raw, strict=True):
        row = stored[move.id]
        assert row["data_hora"] == move.dataHora and row["descricao"] == move.descricao
        assert row["instances"] == move.instances and row["raw"] == entry
    assert sum(r["instances"] == ["G2", "G1"] for r in rows) == 3
