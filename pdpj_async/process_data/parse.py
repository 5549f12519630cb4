"""A PDPJ details object into typed data, leniently: a field of an unexpected type is None,
never a failed refresh (the raw JSON keeps what was sent).

Identity of a movement: PDPJ gives movements no id, so the id is a fingerprint,
`m` + the first 24 hex digits of sha256("{dataHora}|{descricao}|{n}"), where dataHora is the
instant in UTC (ISO 8601; the text as sent when it does not parse), descricao the text as sent,
and n counts earlier movements of the same instance with the same dataHora and descricao (0 for
the first), so that two identical lines stay two movements. The same movement listed by two
instances (PDPJ repeats the first instance's movements in the appeal) is one movement naming
both. Documents are identified by the uuid in their hrefBinario (upstream.parse.list_documents).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import msgspec

from ..upstream.parse import BRASILIA, lenient_int, list_documents, parse_datetime
from .model import (
    Arquivo,
    Assunto,
    Classe,
    Distribuicao,
    Documento,
    DocumentoIdentificacao,
    Grau,
    Movimento,
    OrgaoJulgador,
    Parsed,
    Parte,
    ProcessData,
    Representante,
    TipoDocumento,
    Tramitacao,
    Tribunal,
)

_FROM_BRASILIA = -BRASILIA.utcoffset(None)
_sha256 = hashlib.sha256
_combine = datetime.combine
_encode_text = msgspec.json.Encoder().encode


def _str(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # e.g. a jtr sent as a number
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    return None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _ids(value: Any) -> list[DocumentoIdentificacao]:
    return [
        DocumentoIdentificacao(numero=_str(d.get("numero")), tipo=_str(d.get("tipo")))
        for d in _dicts(value)
    ]


def _parte(raw: dict[str, Any]) -> Parte:
    others = raw.get("outrosNomes")
    return Parte(
        polo=_str(raw.get("polo")),
        nome=_str(raw.get("nome")),
        outrosNomes=[n for n in others if isinstance(n, str)] if isinstance(others, list) else [],
        documentosPrincipais=_ids(raw.get("documentosPrincipais")),
        representantes=[
            Representante(
                tipoRepresentacao=_str(r.get("tipoRepresentacao")),
                nome=_str(r.get("nome")),
                cadastroReceitaFederal=_ids(r.get("cadastroReceitaFederal")),
            )
            for r in _dicts(raw.get("representantes"))
        ],
        sigilosa=raw.get("sigilosa") is True,
    )


def _grau(raw: Any) -> Grau | None:
    found = _dict(raw)
    if found is None:
        return None
    return Grau(
        sigla=_str(found.get("sigla")),
        nome=_str(found.get("nome")),
        numero=lenient_int(found.get("numero")),
    )


def _tribunal(raw: Any) -> Tribunal | None:
    found = _dict(raw)
    if found is None:
        return None
    return Tribunal(
        sigla=_str(found.get("sigla")),
        nome=_str(found.get("nome")),
        segmento=_str(found.get("segmento")),
        jtr=_str(found.get("jtr")),
    )


def _distribuicao(raw: dict[str, Any]) -> Distribuicao:
    bodies = [
        OrgaoJulgador(id=lenient_int(o.get("id")), nome=_str(o.get("nome")))
        for o in _dicts(raw.get("orgaoJulgador"))
    ]
    return Distribuicao(dataHora=parse_datetime(raw.get("dataHora")), orgaoJulgador=bodies)


def tramitacao(raw: dict[str, Any]) -> Tramitacao:
    """One instance's data (its movements and documents are parsed per process)."""
    related = raw.get("processosRelacionados")
    return Tramitacao(
        instancia=_str(raw.get("instancia")),
        grau=_grau(raw.get("grau")),
        dataHoraAjuizamento=parse_datetime(raw.get("dataHoraAjuizamento")),
        valorAcao=_float(raw.get("valorAcao")),
        classe=[
            Classe(codigo=lenient_int(c.get("codigo")), descricao=_str(c.get("descricao")))
            for c in _dicts(raw.get("classe"))
        ],
        assunto=[
            Assunto(
                codigo=lenient_int(a.get("codigo")),
                descricao=_str(a.get("descricao")),
                hierarquia=_str(a.get("hierarquia")),
            )
            for a in _dicts(raw.get("assunto"))
        ],
        distribuicao=[_distribuicao(d) for d in _dicts(raw.get("distribuicao"))],
        tribunal=_tribunal(raw.get("tribunal")),
        partes=[_parte(p) for p in _dicts(raw.get("partes"))],
        processosRelacionados=list(related) if isinstance(related, list) else [],
        ativo=_bool(raw.get("ativo")),
    )


def instance_name(raw: dict[str, Any], index: int) -> str:
    """How an instance is named in `instances` and field paths: grau.sigla, else instancia."""
    grau = _dict(raw.get("grau")) or {}
    return _str(grau.get("sigla")) or _str(raw.get("instancia")) or f"#{index}"


def instances(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """`tramitacaoAtual` then each of `tramitacoes` (absent for a single-instance process)."""
    current = _dict(raw.get("tramitacaoAtual"))
    return ([current] if current is not None else []) + _dicts(raw.get("tramitacoes"))


def movement_id(when: str, descricao: str, occurrence: int) -> str:
    """The fingerprint of a movement (see the module's docstring)."""
    return "m" + _sha256(f"{when}|{descricao}|{occurrence}".encode()).hexdigest()[:24]


def _when(raw: Any) -> tuple[str, datetime | None]:
    # (the instant in UTC as ISO 8601, the aware datetime); the text itself when it is no date.
    # This runs once per movement (5,000 in a large refresh): the usual form takes the cheapest
    # route to what isoformat() and replace(tzinfo=BRASILIA) would give (a third of their cost).
    if not isinstance(raw, str) or not raw:
        return "", None
    try:
        parsed = datetime.fromisoformat(raw)
        if parsed.tzinfo is not None:
            return parsed.astimezone(UTC).isoformat(), parsed
        # PDPJ's usual form, Brasília time without an offset (msgspec writes a naive datetime
        # exactly as isoformat() does).
        utc = _encode_text(parsed + _FROM_BRASILIA)[1:-1].decode() + "+00:00"
    except (ValueError, OverflowError):  # no date, or one that leaves the calendar in UTC
        return raw, None
    return utc, _combine(parsed, parsed.time(), BRASILIA)


# The sort key of a movement without a date: datetime.min, as the UTC text of a dated one.
_UNDATED = datetime.min.replace(tzinfo=UTC).isoformat()


def movements(
    raw: dict[str, Any],
) -> tuple[list[Movimento], list[dict[str, Any]], list[str | None]]:
    """Movements of every instance, deduplicated, newest first; their raw entries; and the
    instant of each in UTC as ISO 8601 text (None when undated)."""
    # id -> ((sort text, id), movement, raw entry). Sorting by the instant's UTC text orders as
    # the instants do (one fixed format), and compares faster than aware datetimes.
    by_id: dict[str, tuple[tuple[str, str], Movimento, dict[str, Any]]] = {}
    for index, instance in enumerate(instances(raw)):
        name = instance_name(instance, index)
        seen: dict[tuple[str, str], int] = {}
        for entry in _dicts(instance.get("movimentos")):
            when, parsed = _when(entry.get("dataHora"))
            descricao = _str(entry.get("descricao"))
            key = (when, descricao or "")
            occurrence = seen.get(key, 0)
            seen[key] = occurrence + 1
            ident = movement_id(when, key[1], occurrence)
            kept = by_id.get(ident)
            if kept is None:
                move = Movimento(id=ident, dataHora=parsed, descricao=descricao, instances=[name])
                by_id[ident] = ((when if parsed is not None else _UNDATED, ident), move, entry)
            elif name not in kept[1].instances:
                kept[1].instances.append(name)
    # Newest first, undated last (as the movements page sorts them).
    ordered = sorted(by_id.values(), key=_sort_key, reverse=True)
    moves = [m for _, m, _ in ordered]
    return (
        moves,
        [e for _, _, e in ordered],
        [k[0] if m.dataHora is not None else None for k, m, _ in ordered],
    )


_sort_key = itemgetter(0)


def _documento(doc: Any, listed_in: list[str]) -> Documento:
    entry: dict[str, Any] = doc.raw
    tipo = _dict(entry.get("tipo"))
    arquivo = _dict(entry.get("arquivo"))
    return Documento(
        uuid=doc.uuid,
        sequencia=lenient_int(entry.get("sequencia")),
        nome=_str(entry.get("nome")),
        dataHoraJuntada=parse_datetime(entry.get("dataHoraJuntada")),
        nivelSigilo=_str(entry.get("nivelSigilo")),
        tipo=TipoDocumento(codigo=lenient_int(tipo.get("codigo")), nome=_str(tipo.get("nome")))
        if tipo is not None
        else None,
        arquivo=Arquivo(
            tipo=_str(arquivo.get("tipo")),
            quantidadePaginas=lenient_int(arquivo.get("quantidadePaginas")),
            tamanho=lenient_int(arquivo.get("tamanho")),
            tamanhoTexto=lenient_int(arquivo.get("tamanhoTexto")),
        )
        if arquivo is not None
        else None,
        instances=listed_in,
    )


def documents(raw: dict[str, Any]) -> list[Documento]:
    """Documents of every instance, deduplicated by uuid (the entry with `arquivo` preferred)."""
    listed: dict[str, list[str]] = {}
    for index, instance in enumerate(instances(raw)):
        name = instance_name(instance, index)
        # The same parser as the downloads, so that a document has one uuid everywhere.
        for doc in list_documents({"tramitacaoAtual": instance}):
            names = listed.setdefault(doc.uuid, [])
            if name not in names:
                names.append(name)
    return [_documento(d, listed.get(d.uuid, [])) for d in list_documents(raw)]


def parse(raw: dict[str, Any]) -> Parsed:
    """The typed data of one details object as stored (upstream.parse.parse_process has already
    dropped the NUL characters PostgreSQL refuses; `scrub` does it for any other source)."""
    found = instances(raw)
    current = _dict(raw.get("tramitacaoAtual"))
    moves, move_raw, move_at = movements(raw)
    data = ProcessData(
        numeroProcesso=_str(raw.get("numeroProcesso")),
        siglaTribunal=_str(raw.get("siglaTribunal")),
        nivelSigilo=lenient_int(raw.get("nivelSigilo")),
        tramitacaoAtual=tramitacao(current) if current is not None else None,
        tramitacoes=[tramitacao(t) for t in found[1 if current is not None else 0 :]],
        documentos=documents(raw),
    )
    return Parsed(data=data, movements=moves, movement_raw=move_raw, movement_at=move_at)
