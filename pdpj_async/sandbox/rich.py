"""The sandbox's richer process data: several parties and lawyers, hundreds of movements,
related processes; and the movements and documents a test adds to a process at run time.

Drawn from a random generator of its own (seeded by number and instance), so that the documents
and instance fields of data.py come out exactly as before. The contract shows
`processosRelacionados` empty: the sandbox fills it with objects naming `numeroProcesso` only
(the field name PDPJ uses for a process number everywhere), and the service passes them through.
"""

from __future__ import annotations

import random
import uuid as uuidlib
from datetime import datetime, timedelta
from typing import Any

import msgspec

from .. import cnj

_FIRST = ["ANA", "BRUNO", "CARLA", "DIEGO", "ELAINE", "FÁBIO", "GISELE", "HÉLIO", "ÍRIS", "JOÃO"]
_LAST = ["ALMEIDA", "BARBOSA", "CARVALHO", "DIAS", "ESTEVES", "FERREIRA", "GONÇALVES", "LIMA"]
_COMPANIES = ["BANCO EXEMPLO S.A.", "SEGURADORA MODELO S.A.", "TELEFONIA FICTÍCIA LTDA"]
_MOVES = [
    "Juntada de petição",
    "Conclusos para despacho",
    "Publicado o despacho",
    "Expedição de intimação",
    "Decorrido prazo",
    "Audiência de conciliação realizada",
    "Juntada de documento",
    "Recebidos os autos",
    "Certidão expedida",
    "Mero expediente",
]
_ADDED_NAMESPACE = uuidlib.UUID("2b9e6f0c-4a7d-4f1e-8c3b-9d2a1e5f7c60")


def stamp(moment: datetime) -> str:
    """A PDPJ timestamp: local time, no offset, milliseconds ("2024-08-02T17:22:09.301")."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _digits(rng: random.Random, count: int) -> str:
    return "".join(str(rng.randint(0, 9)) for _ in range(count))


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)} {rng.choice(_LAST)}"


def _lawyer(rng: random.Random) -> dict[str, Any]:
    return {
        "tipoRepresentacao": "ADVOGADO",
        "nome": _person(rng),
        "cadastroReceitaFederal": [{"numero": _digits(rng, 11), "tipo": "CPF"}],
    }


def _party(rng: random.Random, polo: str, sealed: bool) -> dict[str, Any]:
    company = rng.random() < 0.4
    return {
        "polo": polo,
        "nome": rng.choice(_COMPANIES) if company else _person(rng),
        "outrosNomes": [_person(rng)] if rng.random() < 0.2 else [],
        "documentosPrincipais": [
            {"numero": _digits(rng, 14), "tipo": "CNPJ"}
            if company
            else {"numero": _digits(rng, 11), "tipo": "CPF"}
        ],
        "representantes": [_lawyer(rng) for _ in range(rng.randint(1, 3))],
        "sigilosa": sealed,
    }


def parties(rng: random.Random) -> list[dict[str, Any]]:
    """Two to six parties by pole, each with one to three lawyers; about one process in five
    has a sealed party."""
    sealed_at = rng.randint(0, 4) if rng.random() < 0.2 else -1
    found = [_party(rng, "ATIVO", sealed_at == 0)]
    found += [_party(rng, "ATIVO", sealed_at == i) for i in range(1, rng.randint(1, 3))]
    found += [_party(rng, "PASSIVO", sealed_at == 3 + i) for i in range(rng.randint(1, 3))]
    return found


def movements(rng: random.Random, start: datetime, count: int) -> list[tuple[datetime, str]]:
    """`count` movements after `start`, a few hours to a few days apart (oldest first)."""
    moment = start
    found = []
    for _ in range(count):
        moment += timedelta(seconds=rng.randint(3600, 5 * 86400))
        found.append((moment, rng.choice(_MOVES)))
    return found


def related(rng: random.Random, number: cnj.ProcessNumber) -> list[dict[str, Any]]:
    """Zero to two related processes of the same court (valid CNJ numbers)."""
    found = []
    for _ in range(rng.choice([0, 0, 1, 2])):
        parts = (number.year, number.segment, number.court, number.origin)
        digits = cnj.compose(_digits(rng, 7), *parts)
        found.append({"numeroProcesso": cnj.parse(digits).masked})
    return found


def enrich(
    instance: dict[str, Any],
    number: cnj.ProcessNumber,
    grade: int,
    start: datetime,
    movement_count: int,
) -> None:
    """Give a generated instance its parties, lawyers, movements and related processes."""
    # The same parties in every instance, as PDPJ lists them; the rest differs per instance.
    instance["partes"] = parties(random.Random(f"pdpj-sandbox-parties:{number.digits}"))
    rng = random.Random(f"pdpj-sandbox-rich:{number.digits}:{grade}")
    extra = [
        {"dataHora": stamp(m), "descricao": d} for m, d in movements(rng, start, movement_count)
    ]
    merged = instance["movimentos"] + extra
    instance["movimentos"] = sorted(merged, key=lambda m: m["dataHora"], reverse=True)
    instance["processosRelacionados"] = related(rng, number)
    instance["distribuicao"] = [
        {
            "dataHora": stamp(start),
            "orgaoJulgador": [{"id": rng.randint(1000, 9999), "nome": f"{grade}ª Vara Cível"}],
        }
    ]


class AddedMovement(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A movement a test adds; the date defaults to an hour after the newest one."""

    descricao: str = "Juntada de petição"
    dataHora: str | None = None


class AddMovements(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of POST /_sandbox/processes/{n}/movements: given ones, or `count` generated ones."""

    movements: list[AddedMovement] = []
    count: int = 0


class AddedDocument(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A document a test adds to the current instance."""

    size: int = 10_000
    mime: str = "application/pdf"
    name: str | None = None
    sigilo: str = "PUBLICO"


class AddDocuments(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of POST /_sandbox/processes/{n}/documents: given ones, or `count` default ones."""

    documents: list[AddedDocument] = []
    count: int = 0


class Additions(msgspec.Struct, kw_only=True):
    """What tests added to one process, applied over its generated data on every answer."""

    movements: list[dict[str, Any]] = []
    documents: list[dict[str, Any]] = []


def added_movements(raw: dict[str, Any], body: AddMovements) -> list[dict[str, Any]]:
    """The movement entries for `body`, dated after the newest of `raw` when not given."""
    current = raw.get("tramitacaoAtual") or {}
    newest = max((m["dataHora"] for m in current.get("movimentos") or []), default=None)
    moment = datetime.fromisoformat(newest) if newest else datetime(2025, 1, 1, 9)
    wanted = body.movements or [AddedMovement() for _ in range(body.count)]
    found = []
    for want in wanted:
        moment += timedelta(hours=1)
        found.append({"dataHora": want.dataHora or stamp(moment), "descricao": want.descricao})
    return found


def added_documents(
    raw: dict[str, Any], number: cnj.ProcessNumber, body: AddDocuments
) -> list[dict[str, Any]]:
    """The document entries for `body`: new uuids, the next sequence numbers, dated now-ish."""
    entries = [
        d for t in [raw.get("tramitacaoAtual"), *(raw.get("tramitacoes") or [])]
        for d in (t or {}).get("documentos") or []
    ]  # fmt: skip
    sequence = max((int(d.get("sequencia") or 0) for d in entries), default=0)
    newest = max((d["dataHoraJuntada"] for d in entries if d.get("dataHoraJuntada")), default=None)
    moment = datetime.fromisoformat(newest) if newest else datetime(2025, 1, 1, 9)
    wanted = body.documents or [AddedDocument() for _ in range(body.count)]
    found = []
    for want in wanted:
        sequence += 1
        moment += timedelta(hours=1)
        uuid = str(uuidlib.uuid5(_ADDED_NAMESPACE, f"{number.digits}:{sequence}"))
        ext = ".pdf" if want.mime == "application/pdf" else ".html"
        name = want.name or f"Documento {sequence}{ext}"
        href = f"/processos/{number.masked}/documentos/{uuid}"
        found.append(
            {
                "sequencia": sequence,
                "dataHoraJuntada": stamp(moment),
                "idCodex": 31_000_000_000 + sequence,
                "idOrigem": str(420_000_000 + sequence),
                "nome": name,
                "nivelSigilo": want.sigilo,
                "tipo": {"nome": name.rsplit(".", 1)[0], "idCodex": 130_000, "idOrigem": "0"},
                "hrefBinario": href + "/binario",
                "hrefTexto": href + "/texto",
                "arquivo": {
                    "tipo": want.mime,
                    "quantidadePaginas": max(1, want.size // 40_000),
                    "quantidadeImagens": 0,
                    "tamanho": want.size,
                    "tamanhoTexto": want.size // 20,
                },
            }
        )
    return found


def apply(raw: dict[str, Any], additions: Additions) -> dict[str, Any]:
    """`raw` with the additions in its current instance (a copy: `raw` may be shared)."""
    current = dict(raw.get("tramitacaoAtual") or {})
    # Newest first, as PDPJ lists them.
    current["movimentos"] = [*reversed(additions.movements), *(current.get("movimentos") or [])]
    current["documentos"] = [*(current.get("documentos") or []), *additions.documents]
    return {**raw, "tramitacaoAtual": current}
