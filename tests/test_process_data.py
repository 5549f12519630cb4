"""The process itself, typed: parsed from the contract, served by route, diffed per refresh,
and shown only to the keys that requested it (sealed parties masked)."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from pdpj_async import cnj, keys
from pdpj_async.process_data import parse
from pdpj_async.process_data.diff import diff
from pdpj_async.sandbox.data import generate_process
from tests.fixtures.app import Stack
from tests.fixtures.sandbox import FIXTURE_MASKED, FIXTURE_NUMBER, Sandbox, fixture_uuid
from tests.test_openapi import check

CONTRACT = Path(__file__).resolve().parents[2] / "shared" / "pdpj-contract"
GENERATED = "1011745-77.2025.8.11.0041"
NO_DOWNLOAD = {"auto_download": "false"}


def contract_details() -> dict[str, Any]:
    path = CONTRACT / "process_details.json"
    if not path.exists():  # an installed copy ships the same file with the sandbox
        from pdpj_async.sandbox.data import fixture_details

        return copy.deepcopy(fixture_details())
    data: list[dict[str, Any]] = json.loads(path.read_text("utf-8"))
    return data[0]


async def spec_of(stack: Stack) -> dict[str, Any]:
    resp = await stack.client.get("/api/v1/openapi.json")
    body: dict[str, Any] = await resp.json()
    return body


async def get_json(stack: Stack, path: str, key: keys.NewKey, status: int = 200) -> Any:
    resp = await stack.get(path, key)
    body = await resp.json()
    assert resp.status == status, body
    return body


async def request(stack: Stack, number: str, key: keys.NewKey, refresh: bool = False) -> None:
    params = {**NO_DOWNLOAD, "force_refresh": "true" if refresh else "false"}
    resp = await stack.get(f"/api/v1/processes/{number}", key, params=params)
    assert resp.status == 200, await resp.text()


def test_the_contract_fixture_parses_into_every_field_with_its_type() -> None:
    data = parse(contract_details()).data
    current = data.tramitacaoAtual
    assert current is not None and data.nivelSigilo == 0 and data.siglaTribunal == "TJSP"
    assert current.instancia == "SEGUNDO_GRAU" and current.grau is not None
    assert (current.grau.sigla, current.grau.numero) == ("G2", 2)
    filed = current.dataHoraAjuizamento
    assert isinstance(filed, datetime) and filed.utcoffset() is not None
    assert (filed.year, filed.month, filed.day, filed.microsecond) == (2024, 3, 4, 900000)
    assert isinstance(current.valorAcao, float) and current.valorAcao == 15000.0
    assert [(c.codigo, c.descricao) for c in current.classe] == [(198, "Apelação Cível")]
    assert current.assunto[0].codigo == 7779
    assert current.assunto[0].hierarquia is not None
    assert "(899) DIREITO CIVIL" in current.assunto[0].hierarquia
    body = current.distribuicao[0].orgaoJulgador[0]
    assert (body.id, body.nome) == (1003, "5ª Câmara de Direito Privado")
    assert current.tribunal is not None
    assert (current.tribunal.sigla, current.tribunal.segmento, current.tribunal.jtr) == (
        "TJSP",
        "ESTADUAL",
        "826",
    )
    assert current.ativo is True and current.processosRelacionados == []
    active, passive = current.partes
    assert (active.polo, active.nome, active.sigilosa) == ("ATIVO", "MARIA EXEMPLO DE SOUZA", False)
    assert [(d.tipo, d.numero) for d in active.documentosPrincipais] == [("CPF", "00000000191")]
    lawyer = active.representantes[0]
    assert (lawyer.tipoRepresentacao, lawyer.nome) == ("ADVOGADO", "JOAO MODELO FICTICIO")
    assert lawyer.cadastroReceitaFederal[0].numero == "00000000272"
    assert passive.documentosPrincipais[0].tipo == "CNPJ" and passive.representantes == []
    [first] = data.tramitacoes
    assert first.grau is not None and first.grau.sigla == "G1" and first.ativo is False
    assert first.distribuicao[0].orgaoJulgador[0].nome == "3ª Vara Cível do Foro Central"


def test_documents_of_every_instance_are_listed_once_with_their_instances() -> None:
    docs = {d.uuid: d for d in parse(contract_details()).data.documentos}
    assert sorted(docs) == [fixture_uuid(i) for i in range(1, 8)]
    shared = docs[fixture_uuid(5)]
    # Listed by both instances; the entry with `arquivo` (the appeal's) gives its file data.
    assert shared.instances == ["G2", "G1"] and shared.arquivo is not None
    assert shared.arquivo.tamanhoTexto == 20127 and shared.arquivo.quantidadePaginas == 0
    assert shared.tipo is not None and shared.tipo.codigo == 8
    sealed = docs[fixture_uuid(4)]
    assert sealed.nivelSigilo == "SIGILOSO" and sealed.instances == ["G1"]
    assert sealed.tipo is not None and sealed.tipo.codigo is None
    assert isinstance(sealed.dataHoraJuntada, datetime) and sealed.sequencia == 4


def test_movements_repeated_by_two_instances_are_one_movement_each() -> None:
    moves = parse(contract_details()).movements
    assert [m.descricao for m in moves] == [
        "Remetidos os Autos para o Tribunal",
        "Julgado procedente o pedido",
        "Distribuído por sorteio",
    ]
    assert all(m.instances == ["G2", "G1"] for m in moves)
    assert len({m.id for m in moves}) == 3


def test_a_movement_id_is_the_documented_fingerprint() -> None:
    import hashlib

    first = parse(contract_details()).movements[0]
    # "2024-09-12T08:03:55.6" in Brasília (UTC-3), as the instant in UTC.
    text = "2024-09-12T11:03:55.600000+00:00|Remetidos os Autos para o Tribunal|0"
    assert first.id == "m" + hashlib.sha256(text.encode()).hexdigest()[:24]
    offset = copy.deepcopy(contract_details())
    for instance in [offset["tramitacaoAtual"], *offset["tramitacoes"]]:
        instance["movimentos"][0]["dataHora"] = "2024-09-12T11:03:55.6Z"  # the same instant
    assert parse(offset).movements[0].id == first.id


def test_movement_ids_are_stable_and_identical_lines_stay_apart() -> None:
    raw = contract_details()
    before = [m.id for m in parse(raw).movements]
    again = copy.deepcopy(raw)
    current = again["tramitacaoAtual"]
    new_line = {"dataHora": "2024-10-01T09:00:00.0", "descricao": "Juntada de petição"}
    current["movimentos"] = [dict(new_line), dict(new_line), *current["movimentos"]]
    after = parse(again).movements
    assert [m.id for m in after][2:] == before
    assert len({m.id for m in after}) == 5 and after[0].dataHora == after[1].dataHora


def test_diff_names_new_movements_new_documents_and_changed_fields() -> None:
    raw = contract_details()
    old = parse(raw)
    changed = copy.deepcopy(raw)
    current = changed["tramitacaoAtual"]
    current["valorAcao"] = 20000.0
    current["movimentos"].insert(0, {"dataHora": "2024-10-01T09:00:00", "descricao": "Conclusos"})
    extra = copy.deepcopy(current["documentos"][0])
    extra["hrefBinario"] = extra["hrefBinario"].replace("1b05", "1b99")
    current["documentos"].append(extra)
    new = parse(changed)
    found = diff(old.data, new.data, {m.id for m in old.movements}, new.movements)
    assert [m.descricao for m in found.new_movements] == ["Conclusos"]
    assert [d.uuid for d in found.new_documents] == [fixture_uuid(99)]
    assert [(f.field, f.old, f.new) for f in found.changed_fields] == [
        ("G2.valorAcao", 15000.0, 20000.0)
    ]
    same = diff(old.data, parse(raw).data, {m.id for m in old.movements}, old.movements)
    assert same.empty


async def test_the_data_route_serves_the_contract_process_typed(stack: Stack) -> None:
    await request(stack, FIXTURE_NUMBER, stack.keys.user)
    path = f"/api/v1/processes/{FIXTURE_NUMBER}/data"
    body = await get_json(stack, path, stack.keys.user)
    check(await spec_of(stack), "/api/v1/processes/{number}/data", "get", 200, body)
    assert body["number"] == FIXTURE_MASKED and body["movement_count"] == 3
    assert body["change_count"] == 0
    current = body["data"]["tramitacaoAtual"]
    assert current["valorAcao"] == 15000.0 and current["tribunal"]["jtr"] == "826"
    assert current["dataHoraAjuizamento"] == "2024-03-04T10:12:39.900000-03:00"
    assert current["partes"][0]["representantes"][0]["nome"] == "JOAO MODELO FICTICIO"
    docs = {d["uuid"]: d for d in body["data"]["documentos"]}
    assert sorted(docs) == [fixture_uuid(i) for i in range(1, 8)]
    assert all(datetime.fromisoformat(d["first_seen_at"]) for d in docs.values())
    # The sealed document is listed to a key without the permission, without its file data.
    sealed = docs[fixture_uuid(4)]
    assert sealed["restricted"] is True and sealed["arquivo"] is None
    assert sealed["nivelSigilo"] == "SIGILOSO" and sealed["dataHoraJuntada"]
    assert docs[fixture_uuid(5)]["arquivo"]["tamanhoTexto"] == 20127
    admin_view = await get_json(stack, path, stack.keys.admin)
    seen = {d["uuid"]: d for d in admin_view["data"]["documentos"]}[fixture_uuid(4)]
    assert seen["restricted"] is False and seen["arquivo"]["tamanho"] == 1883090
    parties = await get_json(stack, path.replace("/data", "/parties"), stack.keys.user)
    check(await spec_of(stack), "/api/v1/processes/{number}/parties", "get", 200, parties)
    # Both instances list the same two parties: each is served once, naming both.
    assert [(p["polo"], p["nome"], p["instances"]) for p in parties["parties"]] == [
        ("ATIVO", "MARIA EXEMPLO DE SOUZA", ["G2", "G1"]),
        ("PASSIVO", "EMPRESA FICTICIA DE TESTES LTDA", ["G2", "G1"]),
    ]


async def test_the_process_request_adds_the_typed_data_with_view_full_only(stack: Stack) -> None:
    path = f"/api/v1/processes/{FIXTURE_NUMBER}"
    summary = await get_json(stack, path + "?auto_download=false", stack.keys.user)
    assert "data" not in summary and summary["process"]["number"] == FIXTURE_MASKED
    full = await get_json(stack, path + "?auto_download=false&view=full", stack.keys.user)
    check(await spec_of(stack), "/api/v1/processes/{number}", "get", 200, full)
    # The same answer, plus the typed data that GET .../data serves.
    assert {k: v for k, v in full.items() if k != "data"} == summary
    data = await get_json(stack, path + "/data", stack.keys.user)
    assert full["data"]["data"] == data["data"] and full["data"]["movement_count"] == 3
    bad = await stack.get(path, stack.keys.user, params={"view": "everything"})
    assert bad.status == 400 and "view" in (await bad.json())["detail"]


async def test_a_refresh_after_three_movements_and_two_documents_records_one_change(
    stack: Stack, sandbox: Sandbox
) -> None:
    user = stack.keys.user
    await request(stack, GENERATED, user)
    moves = await sandbox.add_movements(GENERATED, count=3)
    docs = await sandbox.add_documents(GENERATED, count=2)
    await request(stack, GENERATED, user, refresh=True)
    body = await get_json(stack, f"/api/v1/processes/{GENERATED}/changes", user)
    check(await spec_of(stack), "/api/v1/processes/{number}/changes", "get", 200, body)
    [change] = body["changes"]
    assert sorted(m["descricao"] for m in change["new_movements"]) == sorted(
        m["descricao"] for m in moves
    )
    assert len(change["new_movements"]) == 3
    added_uuids = {d["hrefBinario"].split("/")[-2] for d in docs}
    assert {d["uuid"] for d in change["new_documents"]} == added_uuids
    assert change["changed_fields"] == []
    page = await get_json(stack, f"/api/v1/processes/{GENERATED}/movements?limit=4", user)
    newest, older = page["movements"][:3], page["movements"][3]
    assert [m["id"] for m in newest] == [m["id"] for m in change["new_movements"]]
    # Movements seen before keep their identity and when they were first seen.
    recorded = datetime.fromisoformat(change["recorded_at"])
    assert all(datetime.fromisoformat(m["first_seen_at"]) == recorded for m in newest)
    assert datetime.fromisoformat(older["first_seen_at"]) < recorded


async def test_a_refresh_with_nothing_new_records_no_change(stack: Stack) -> None:
    user = stack.keys.user
    await request(stack, GENERATED, user)
    await request(stack, GENERATED, user, refresh=True)
    await request(stack, GENERATED, user, refresh=True)
    body = await get_json(stack, f"/api/v1/processes/{GENERATED}/changes", user)
    assert body == {"changes": [], "next_cursor": None}


async def test_movements_come_newest_first_by_cursor_and_since(
    stack: Stack, sandbox: Sandbox
) -> None:
    user = stack.keys.user
    await request(stack, GENERATED, user)
    expected = parse(sandbox.state.process(cnj.parse(GENERATED)).raw).movements
    assert len(expected) > 100  # the sandbox's processes have hundreds
    seen: list[dict[str, Any]] = []
    cursor = ""
    spec = await spec_of(stack)
    while True:
        path = f"/api/v1/processes/{GENERATED}/movements?limit=40&cursor={cursor}"
        page = await get_json(stack, path, user)
        check(spec, "/api/v1/processes/{number}/movements", "get", 200, page)
        seen.extend(page["movements"])
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert [m["id"] for m in seen] == [m.id for m in expected]
    middle = expected[len(expected) // 2].dataHora
    assert middle is not None
    since = middle.isoformat().replace("+", "%2B")
    page = await get_json(
        stack, f"/api/v1/processes/{GENERATED}/movements?limit=500&since={since}", user
    )
    assert [m["id"] for m in page["movements"]] == [
        m.id for m in expected if m.dataHora is not None and m.dataHora >= middle
    ]


async def test_bad_paging_parameters_are_400_naming_the_parameter(stack: Stack) -> None:
    user = stack.keys.user
    await request(stack, GENERATED, user)
    base = f"/api/v1/processes/{GENERATED}"
    for query, name in [
        ("/movements?since=yesterday", "since"),
        ("/movements?limit=0", "limit"),
        ("/movements?limit=" + "9" * 5000, "limit"),
        ("/movements?cursor=%%%", "cursor"),
        ("/changes?cursor=abc", "cursor"),
        ("/changes?limit=201", "limit"),
    ]:
        resp = await stack.get(base + query, user)
        problem = await resp.json()
        assert resp.status == 400 and name in problem["detail"], (query, problem)


async def test_a_second_key_sees_nothing_of_a_process_it_did_not_request(stack: Stack) -> None:
    await request(stack, GENERATED, stack.keys.user)
    never = "5001122-68.2023.4.03.6100"
    for route in ("data", "parties", "movements", "changes"):
        other = await stack.get(f"/api/v1/processes/{GENERATED}/{route}", stack.keys.other)
        unknown = await stack.get(f"/api/v1/processes/{never}/{route}", stack.keys.other)
        assert other.status == unknown.status == 404
        hidden, absent = await other.json(), await unknown.json()
        assert hidden["title"] == absent["title"]
        assert hidden["detail"].replace(cnj.parse(GENERATED).masked, "N") == absent[
            "detail"
        ].replace(cnj.parse(never).masked, "N")


def sealed_party_number() -> str:
    """A generated process (deterministic) with a sealed party."""
    for sequence in range(1000, 1200):
        digits = f"{sequence:07d}" + "{}" + "20258110041"
        parts = ("2025", "8", "11", "0041")
        number = cnj.parse(digits.format(cnj.expected_check_digits(f"{sequence:07d}", *parts)))
        raw = generate_process(number).raw
        if any(p["sigilosa"] for p in raw["tramitacaoAtual"]["partes"]):
            return number.masked
    raise AssertionError("no generated process with a sealed party")


async def test_sealed_parties_are_masked_for_keys_without_the_permission(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    number = sealed_party_number()
    sealed_reader = await keys.create_key(pool, "carol", "user", can_read_sigiloso=True)
    for key in (stack.keys.user, sealed_reader):
        await request(stack, number, key)
    masked = await get_json(stack, f"/api/v1/processes/{number}/parties", stack.keys.user)
    check(await spec_of(stack), "/api/v1/processes/{number}/parties", "get", 200, masked)
    clear = await get_json(stack, f"/api/v1/processes/{number}/parties", sealed_reader)
    hidden = [p for p in masked["parties"] if p["sigilosa"]]
    shown = [p for p in clear["parties"] if p["sigilosa"]]
    assert hidden and len(hidden) == len(shown)
    for party in hidden:
        assert party["nome"] is None and party["outrosNomes"] == [] and party["masked"] is True
        assert all(d["numero"] is None for d in party["documentosPrincipais"])
    for party in shown:
        assert party["nome"] and party["masked"] is False
        assert all(d["numero"] for d in party["documentosPrincipais"])
    data = (await get_json(stack, f"/api/v1/processes/{number}/data", stack.keys.user))["data"]
    partes = [p for t in [data["tramitacaoAtual"], *data["tramitacoes"]] for p in t["partes"]]
    secret = {p["nome"] for p in shown} | {
        d["numero"] for p in shown for d in p["documentosPrincipais"]
    }
    assert all(p["nome"] is None and p["masked"] for p in partes if p["sigilosa"])
    assert not secret & {p["nome"] for p in partes}
    assert not secret & {d["numero"] for p in partes for d in p["documentosPrincipais"]}
    assert all(p["nome"] for p in masked["parties"] if not p["sigilosa"])


async def test_the_raw_answer_is_for_admins_only(stack: Stack, sandbox: Sandbox) -> None:
    await request(stack, GENERATED, stack.keys.user)
    path = f"/api/v1/processes/{GENERATED}/raw"
    denied = await stack.get(path, stack.keys.user)
    assert denied.status == 403
    raw = await get_json(stack, path, stack.keys.admin)
    assert raw == sandbox.state.process(cnj.parse(GENERATED)).raw


async def test_a_process_stored_before_its_data_was_typed_is_recorded_when_read(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    user = stack.keys.user
    await request(stack, GENERATED, user)
    digits = cnj.parse(GENERATED).digits
    process_id = await pool.fetchval("SELECT id FROM pdpj.processes WHERE number = $1", digits)
    stored = await pool.fetchval(
        "SELECT count(*) FROM pdpj.process_movements WHERE process_id = $1", process_id
    )
    # As a process fetched before migration 0008 stands: no snapshot, no movements.
    await pool.execute("DELETE FROM pdpj.process_snapshots WHERE process_id = $1", process_id)
    await pool.execute("DELETE FROM pdpj.process_movements WHERE process_id = $1", process_id)
    page = await get_json(stack, f"/api/v1/processes/{GENERATED}/movements?limit=500", user)
    assert len(page["movements"]) == stored > 100
    body = await get_json(stack, f"/api/v1/processes/{GENERATED}/data", user)
    assert body["movement_count"] == stored and body["change_count"] == 0


def test_changed_values_of_sealed_parties_are_masked_at_any_depth() -> None:
    from pdpj_async.process_data.mask import mask_builtins

    sealed = {
        "polo": "PASSIVO",
        "nome": "FULANO SIGILOSO",
        "outrosNomes": ["CICRANO"],
        "documentosPrincipais": [{"numero": "12345678901", "tipo": "CPF"}],
        "representantes": [{"nome": "ADVOGADA PÚBLICA"}],
        "sigilosa": True,
    }
    public = {**sealed, "nome": "EMPRESA PÚBLICA", "sigilosa": False}
    masked = mask_builtins({"partes": [sealed, public], "valorAcao": 1.0})
    hidden, shown = masked["partes"]
    assert hidden["nome"] is None and hidden["outrosNomes"] == [] and hidden["masked"] is True
    assert hidden["documentosPrincipais"] == [{"numero": None, "tipo": "CPF"}]
    assert hidden["representantes"] == sealed["representantes"]
    assert shown == public and masked["valorAcao"] == 1.0


async def test_a_process_sealed_after_it_was_requested_is_403_without_the_permission(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    await request(stack, GENERATED, stack.keys.user)
    digits = cnj.parse(GENERATED).digits
    await pool.execute("UPDATE pdpj.processes SET sigilo_level = 1 WHERE number = $1", digits)
    for route in ("data", "parties", "movements", "changes"):
        resp = await stack.get(f"/api/v1/processes/{GENERATED}/{route}", stack.keys.user)
        problem = await resp.json()
        assert resp.status == 403 and "under seal" in problem["detail"]
        assert (await stack.get(f"/api/v1/processes/{GENERATED}/{route}", stack.keys.admin)).ok


async def test_a_sealed_new_document_is_listed_restricted_in_a_change_without_the_permission(
    stack: Stack, sandbox: Sandbox
) -> None:
    for key in (stack.keys.user, stack.keys.admin):
        await request(stack, GENERATED, key)
    await sandbox.add_documents(GENERATED, documents=[{"size": 5000, "sigilo": "SIGILOSO"}])
    await request(stack, GENERATED, stack.keys.admin, refresh=True)
    path = f"/api/v1/processes/{GENERATED}/changes"
    [hidden] = (await get_json(stack, path, stack.keys.user))["changes"][0]["new_documents"]
    [shown] = (await get_json(stack, path, stack.keys.admin))["changes"][0]["new_documents"]
    assert hidden["uuid"] == shown["uuid"] and hidden["nivelSigilo"] == "SIGILOSO"
    assert (hidden["restricted"], hidden["arquivo"]) == (True, None)
    assert (shown["restricted"], shown["arquivo"]["tamanho"]) == (False, 5000)


async def stored_baseline(pool: asyncpg.Pool, raw: dict[str, Any]) -> int:
    """A process row for the fixture's number, its first answer recorded (no change); its id."""
    from pdpj_async import db, process_data

    process_id: int = await pool.fetchval(
        "INSERT INTO pdpj.processes (number, raw) VALUES ($1, $2) RETURNING id",
        FIXTURE_NUMBER,
        raw,
    )
    async with db.transaction(pool) as conn:
        assert await process_data.record(conn, process_id, raw) is None  # the baseline
    return process_id


async def test_deleting_processes_deletes_their_movements_and_no_others(
    pool: asyncpg.Pool,
) -> None:
    """Movements have no foreign key (migration 0018): the delete trigger keeps the cascade."""
    from pdpj_async import db
    from pdpj_async.processes import store_fetched
    from pdpj_async.upstream.parse import parse_process

    ids = []
    for sequence in (1, 2, 3):
        number = cnj.parse(cnj.compose(sequence, "2024", "8", "26", "0100"))
        raw = generate_process(number).raw
        async with db.transaction(pool) as conn:
            process_id, _ = await store_fetched(conn, parse_process(raw, number))
        ids.append(process_id)
    count = "SELECT count(*) FROM pdpj.process_movements WHERE process_id = ANY($1::bigint[])"
    kept_before = await pool.fetchval(count, ids[2:])
    assert await pool.fetchval(count, ids[:2]) > 100 and kept_before > 50
    await pool.execute("DELETE FROM pdpj.processes WHERE id = ANY($1::bigint[])", ids[:2])
    assert await pool.fetchval(count, ids[:2]) == 0
    assert await pool.fetchval(count, ids[2:]) == kept_before


async def test_undated_movements_come_last_and_page_by_cursor(pool: asyncpg.Pool) -> None:
    from pdpj_async import process_data

    raw = contract_details()
    moves = raw["tramitacaoAtual"]["movimentos"]
    moves += [{"descricao": "Sem data"}, {"dataHora": "não é data", "descricao": "Data ruim"}]
    raw.pop("tramitacoes")
    process_id = await stored_baseline(pool, raw)
    seen: list[Any] = []
    cursor = None
    while True:
        page = await process_data.movements_page(
            pool, process_id, since=None, cursor=cursor, limit=1
        )
        seen += [json.loads(bytes(m)) for m in page.movements]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [m["descricao"] for m in seen[:3]] == [m["descricao"] for m in moves[:3]]
    assert sorted(m["descricao"] for m in seen[3:]) == ["Data ruim", "Sem data"]
    assert all(m["dataHora"] is None for m in seen[3:])


async def test_a_failure_to_record_the_data_still_stores_the_process_and_its_documents(
    stack: Stack, pool: asyncpg.Pool, sandbox: Sandbox
) -> None:
    await sandbox.override(GENERATED, documents=[{"size": 1000}, {"size": 2000}])
    await pool.execute("ALTER TABLE pdpj.process_movements RENAME TO process_movements_gone")
    await request(stack, GENERATED, stack.keys.user)
    digits = cnj.parse(GENERATED).digits
    stored = await pool.fetchval(
        "SELECT count(*) FROM pdpj.documents d JOIN pdpj.processes p ON p.id = d.process_id"
        " WHERE p.number = $1",
        digits,
    )
    assert stored == 2
    snapshots = await pool.fetchval("SELECT count(*) FROM pdpj.process_snapshots")
    assert snapshots == 0  # nothing half-recorded
    await pool.execute("ALTER TABLE pdpj.process_movements_gone RENAME TO process_movements")
    page = await get_json(
        stack, f"/api/v1/processes/{GENERATED}/movements?limit=500", stack.keys.user
    )
    assert len(page["movements"]) > 100  # recorded once it could be


async def test_changed_fields_are_recorded_with_old_and_new_values_and_paged_by_since(
    stack: Stack, pool: asyncpg.Pool, sandbox: Sandbox
) -> None:
    user = stack.keys.user
    await request(stack, GENERATED, user)
    real = sandbox.state.process(cnj.parse(GENERATED)).raw["tramitacaoAtual"]
    grade = real["grau"]["sigla"]
    # As if PDPJ had said another value at the last refresh.
    await pool.execute(
        "UPDATE pdpj.process_snapshots SET data = jsonb_set(data, '{tramitacaoAtual,valorAcao}',"
        " '1.5')"
    )
    await request(stack, GENERATED, user, refresh=True)
    await sandbox.add_movements(GENERATED, count=1)
    await request(stack, GENERATED, user, refresh=True)
    path = f"/api/v1/processes/{GENERATED}/changes"
    first, second = (await get_json(stack, path, user))["changes"]
    assert first["changed_fields"] == [
        {"field": f"{grade}.valorAcao", "old": 1.5, "new": real["valorAcao"]}
    ]
    assert first["new_movements"] == [] and len(second["new_movements"]) == 1
    page = await get_json(stack, path + "?limit=1", user)
    assert [c["id"] for c in page["changes"]] == [first["id"]]
    after = await get_json(stack, path + f"?limit=1&cursor={page['next_cursor']}", user)
    assert [c["id"] for c in after["changes"]] == [second["id"]]
    assert after["next_cursor"] is None
    since = second["recorded_at"].replace("+", "%2B")
    recent = await get_json(stack, path + f"?since={since}", user)
    assert [c["id"] for c in recent["changes"]] == [second["id"]]
