"""The sandbox's deterministic data: processes seeded by their number, document bytes by uuid."""

from __future__ import annotations

import hashlib
import json
import random
import re
import uuid as uuidlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

import msgspec

from ..cnj import ProcessNumber
from . import rich

# The sandbox is the server side of the hrefs it serves: it reads its own route, not the client's.
_UUID_IN_HREF = re.compile(r"/documentos/([^/?#]+)/binario")


def uuid_from_href(href: str) -> str | None:
    """The document uuid inside one of the sandbox's hrefBinario links."""
    match = _UUID_IN_HREF.search(href)
    return match.group(1) if match else None


FIXTURE_NUMBER = "08012343820248260100"
PDF = "application/pdf"
HTML = "text/html"

# Generated filler repeats a block per document, stamped so that no two blocks match.
BLOCK = 256 * 1024
# Stamped at the start of each block: the document's tag (9 hex digits) and the block's index
# (6 hex digits, 4 TiB of blocks), then a newline.
_TAG = 9
_INDEXES = 16**6
_STAMP = _TAG + 6 + 1
_NAMESPACE = uuidlib.UUID("6f1d3a4e-9b0c-4c8e-a1f2-5d7e8b9c0a1b")
_PDF_TAIL = b"\ntrailer\n<< /Size 1 >>\nstartxref\n0\n%%EOF\n"
_HTML_TAIL = b"\n</pre></body></html>\n"
_LETTERS = bytes(b"abcdefghijklmnopqrstuvwxyz     \n"[i % 32] for i in range(256))

_DOCUMENT_NAMES = [
    ("Petição inicial", 1),
    ("Procuração", 2),
    ("Decisão interlocutória", 3),
    ("Citação", 4),
    ("Contestação", 5),
    ("Réplica", 6),
    ("Certidão de intimação", 7),
    ("Laudo pericial", 8),
    ("Manifestação", 9),
    ("Sentença", 10),
    ("Apelação", 11),
    ("Contrarrazões", 12),
    ("Acórdão", 13),
    ("Embargos de declaração", 14),
    ("Despacho", 15),
]
_CLASSES = ["Procedimento Comum Cível", "Execução de Título Extrajudicial", "Ação Civil Pública"]
_SUBJECTS = ["Indenização por Dano Moral", "Obrigação de Fazer / Não Fazer", "Cobrança"]
_MOVEMENTS = ["Distribuído por sorteio", "Conclusos para decisão", "Juntada de petição"]
_STATE_COURTS = {"26": "TJSP", "19": "TJRJ", "13": "TJMG", "11": "TJMT", "21": "TJRS", "16": "TJPR"}


class DocumentOverride(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A document a test wants in a process, with its exact size."""

    size: int
    mime: str = PDF
    name: str | None = None
    sigilo: str = "PUBLICO"
    # False: the entry has no `arquivo` (size and type unknown until downloaded).
    declared: bool = True
    # A declared size different from the real one (to test the size check); None: the real one.
    declared_size: int | None = None


class ProcessOverride(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How the sandbox answers for one number; unset fields keep the generated values."""

    number: str
    # array: [obj]; object: obj; empty: []; missing: 404.
    form: Literal["array", "object", "empty", "missing"] | None = None
    documents: list[DocumentOverride] | None = None
    instances: int | None = None
    # Movements generated per instance besides the first three (None: per the settings).
    movements: int | None = None


class DocSpec(msgspec.Struct, frozen=True):
    """What the sandbox serves for one uuid."""

    uuid: str
    size: int
    mime: str
    sigilo: str = "PUBLICO"


class SandboxProcess(msgspec.Struct):
    """A process's details object and the documents it lists."""

    raw: dict[str, Any]
    documents: dict[str, DocSpec]


# ---- document bytes ----


def _frame(uuid: str, mime: str) -> tuple[bytes, bytes]:
    if mime == PDF:
        return b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n% pdpj-sandbox " + uuid.encode() + b"\n", _PDF_TAIL
    if mime == HTML:
        head = (
            b'<!DOCTYPE html>\n<html lang="pt-BR"><head><meta charset="utf-8">'
            b"<title>Documento " + uuid.encode() + b"</title></head><body><pre>\n"
        )
        return head, _HTML_TAIL
    return b"", b""


@lru_cache(maxsize=2)
def _pool(mime: str) -> bytes:
    """One pseudo-random block shared by every document (letters for HTML), made once."""
    block = hashlib.shake_256(b"pdpj-sandbox:filler").digest(BLOCK)
    return block.translate(_LETTERS) if mime == HTML else block


@lru_cache(maxsize=64)
def _base_block(uuid: str, mime: str) -> tuple[bytes, bytes]:
    """The document's filler block (the shared block turned by an offset of its own) and its
    tag. Hashing a block per document was most of the sandbox's CPU (SHAKE-256 at ~400 MB/s:
    ~2.7 s of a 4,000-document bench run, on the cores of the client it serves)."""
    seed = hashlib.sha256(b"pdpj-sandbox:" + uuid.encode()).digest()
    offset = int.from_bytes(seed[:4], "big") % BLOCK
    pool = _pool(HTML if mime == HTML else "")
    return pool[offset:] + pool[:offset], seed[4:].hex()[:_TAG].encode()


def document_chunks(uuid: str, size: int, mime: str, limit: int | None = None) -> Iterator[bytes]:
    """The document's bytes in pieces, generated on the fly; stops after `limit` bytes if set."""
    head, tail = _frame(uuid, mime)
    budget = size if limit is None else min(size, limit)
    if size < len(head) + len(tail):
        yield (head + tail)[:budget]
        return
    base, tag = _base_block(uuid, mime)
    pieces = _filler(base, tag, size - len(head) - len(tail))
    for piece in _chain(head, pieces, tail):
        if budget <= 0:
            return
        if len(piece) > budget:
            yield piece[:budget]
            return
        budget -= len(piece)
        yield piece


def _filler(base: bytes, tag: bytes, length: int) -> Iterator[bytes]:
    # Each block stamped with the document's tag and its index (so no two blocks of any two
    # documents match), in one copy of the block.
    rest = memoryview(base)[_STAMP:]
    index = 0
    while length > 0:
        stamp = b"%s%06x\n" % (tag, index % _INDEXES)
        if length <= _STAMP:
            yield stamp[:length]
            return
        block = b"".join((stamp, rest[: length - _STAMP]))
        yield block
        length -= len(block)
        index += 1


def _chain(head: bytes, middle: Iterator[bytes], tail: bytes) -> Iterator[bytes]:
    if head:
        yield head
    yield from middle
    if tail:
        yield tail


def document_sha256(uuid: str, size: int, mime: str) -> str:
    """The sha256 of what the sandbox serves for this document."""
    digest = hashlib.sha256()
    for chunk in document_chunks(uuid, size, mime):
        digest.update(chunk)
    return digest.hexdigest()


# ---- processes ----


@lru_cache(maxsize=1)
def fixture_details() -> dict[str, Any]:
    """The contract's captured details object (process_details.json, unwrapped)."""
    text = resources.files(__package__).joinpath("fixtures/process_details.json")
    data: list[dict[str, Any]] = json.loads(text.read_text(encoding="utf-8"))
    return data[0]


def fixture_search(name: str = "process_search.json") -> dict[str, Any]:
    """A search answer from the contract fixtures."""
    text = resources.files(__package__).joinpath(f"fixtures/{name}")
    data: dict[str, Any] = json.loads(text.read_text(encoding="utf-8"))
    return data


def catalog(raw: dict[str, Any]) -> dict[str, DocSpec]:
    """Documents listed in a details object, by uuid, sized per `arquivo` where any entry has it."""
    found: dict[str, DocSpec] = {}
    for instance in [raw.get("tramitacaoAtual"), *(raw.get("tramitacoes") or [])]:
        for entry in (instance or {}).get("documentos") or []:
            uuid = uuid_from_href(entry.get("hrefBinario") or "")
            if uuid is None:
                continue
            arquivo = entry.get("arquivo")
            if isinstance(arquivo, dict) and arquivo.get("tamanho") is not None:
                found[uuid] = DocSpec(
                    uuid, int(arquivo["tamanho"]), arquivo.get("tipo") or PDF, entry["nivelSigilo"]
                )
            elif uuid not in found:
                found[uuid] = DocSpec(uuid, 10_000, PDF, entry.get("nivelSigilo") or "PUBLICO")
    return found


def _court(number: ProcessNumber) -> str:
    tr = int(number.court)
    if number.segment == "8":
        return _STATE_COURTS.get(number.court, f"TJ{number.court}")
    return {"4": f"TRF{tr}", "5": f"TRT{tr}", "6": f"TRE{number.court}"}.get(number.segment, "CNJ")


class _Doc(msgspec.Struct):
    spec: DocSpec
    entry: dict[str, Any]


def _documents(
    number: ProcessNumber,
    rng: random.Random,
    overrides: list[DocumentOverride] | None,
    size_range: tuple[int, int],
    count_range: tuple[int, int],
    sigiloso_ratio: float,
    start: datetime,
) -> list[_Doc]:
    if overrides is None:
        wanted = []
        for _ in range(rng.randint(*count_range)):
            mime = PDF if rng.random() < 0.67 else HTML
            sigilo = "SIGILOSO" if rng.random() < sigiloso_ratio else "PUBLICO"
            name = rng.choice(_DOCUMENT_NAMES)[0]
            wanted.append(
                DocumentOverride(size=rng.randint(*size_range), mime=mime, sigilo=sigilo, name=name)
            )
    else:
        wanted = overrides
    docs = []
    moment = start
    for seq, want in enumerate(wanted, start=1):
        moment += timedelta(days=rng.randint(1, 40), seconds=rng.randint(0, 86399))
        uuid = str(uuidlib.uuid5(_NAMESPACE, f"{number.digits}:{seq}"))
        ext = ".pdf" if want.mime == PDF else ".html"
        name = want.name or _DOCUMENT_NAMES[(seq - 1) % len(_DOCUMENT_NAMES)][0]
        name = name if "." in name else name + ext
        href = f"/processos/{number.masked}/documentos/{uuid}"
        entry: dict[str, Any] = {
            "sequencia": seq,
            "dataHoraJuntada": rich.stamp(moment),
            "idCodex": 30_000_000_000 + seq,
            "idOrigem": str(410_000_000 + seq),
            "nome": name,
            "nivelSigilo": want.sigilo,
            "tipo": {
                "nome": name.rsplit(".", 1)[0],
                "idCodex": 120_000 + seq,
                "idOrigem": str(seq),
            },
            "hrefBinario": href + "/binario",
            "hrefTexto": href + "/texto",
        }
        if want.declared:
            entry["arquivo"] = {
                "tipo": want.mime,
                "quantidadePaginas": 0,
                "quantidadeImagens": 0,
                "tamanho": want.size if want.declared_size is None else want.declared_size,
                "tamanhoTexto": want.size // 20,
            }
        docs.append(_Doc(DocSpec(uuid, want.size, want.mime, want.sigilo), entry))
    return docs


def _instance(
    number: ProcessNumber, rng: random.Random, grade: int, court: str, start: datetime
) -> dict[str, Any]:
    moves = sorted(
        (
            (start + timedelta(days=rng.randint(0, 300), seconds=rng.randint(0, 86399)), move)
            for move in rng.sample(_MOVEMENTS, 3)
        ),
        reverse=True,
    )
    return {
        "idOrigem": str(rng.randint(10_000_000, 99_999_999)),
        "dataHoraAjuizamento": rich.stamp(start),
        "instancia": "PRIMEIRO_GRAU" if grade == 1 else "SEGUNDO_GRAU",
        "grau": {"sigla": f"G{grade}", "nome": f"{grade}° Grau", "numero": grade},
        "valorAcao": float(rng.randint(1, 500) * 1000),
        "classe": [{"codigo": 7, "descricao": rng.choice(_CLASSES)}],
        "movimentos": [{"dataHora": rich.stamp(m), "descricao": d} for m, d in moves],
        "assunto": [{"codigo": 7779, "descricao": rng.choice(_SUBJECTS), "hierarquia": ""}],
        "partes": [
            {"polo": "ATIVO", "nome": "JOSÉ DA CONCEIÇÃO ARAÚJO", "sigilosa": False},
            {"polo": "PASSIVO", "nome": "COMÉRCIO DE PEÇAS SÃO JOÃO LTDA", "sigilosa": False},
        ],
        "tribunal": {"sigla": court, "nome": court, "segmento": number.segment_name, "jtr": ""},
        "documentos": [],
        "ativo": True,
    }


def generate_process(
    number: ProcessNumber,
    override: ProcessOverride | None = None,
    *,
    size_range: tuple[int, int] = (1024, 256 * 1024),
    count_range: tuple[int, int] = (0, 8),
    sigiloso_ratio: float = 0.0,
    movement_range: tuple[int, int] = (100, 300),
) -> SandboxProcess:
    """The process for `number`: the contract fixture for its number, else generated (seeded)."""
    if number.digits == FIXTURE_NUMBER and (override is None or override.documents is None):
        fixture = fixture_details()
        return SandboxProcess(fixture, catalog(fixture))
    rng = random.Random(f"pdpj-sandbox:{number.digits}")
    court = _court(number)
    start = datetime(int(number.year), 1, 1) + timedelta(
        days=rng.randint(0, 300), seconds=rng.randint(28800, 64800)
    )
    grades = override.instances if override and override.instances else rng.choice([1, 2])
    overrides = override.documents if override else None
    docs = _documents(number, rng, overrides, size_range, count_range, sigiloso_ratio, start)
    first = _instance(number, rng, 1, court, start)
    extra = random.Random(f"pdpj-sandbox-moves:{number.digits}").randint(*movement_range)
    if override is not None and override.movements is not None:
        extra = override.movements
    rich.enrich(first, number, 1, start, extra)
    raw: dict[str, Any] = {
        "nivelSigilo": 0,
        "siglaTribunal": court,
        "numeroProcesso": number.masked,
    }
    if grades == 1:
        first["documentos"] = [d.entry for d in docs]
        raw["tramitacaoAtual"] = first
    else:
        # The appeal instance lists its own documents plus the last of the first instance again,
        # which the first instance lists without `arquivo` (as in the contract fixture).
        second = _instance(number, rng, 2, court, start + timedelta(days=400))
        rich.enrich(second, number, 2, start + timedelta(days=400), extra)
        split = (len(docs) + 1) // 2
        lower, upper = docs[:split], docs[split:]
        first["documentos"] = [d.entry for d in lower]
        second["documentos"] = [d.entry for d in upper]
        if lower:
            shared = lower[-1].entry
            second["documentos"].insert(0, shared)
            first["documentos"][-1] = {k: v for k, v in shared.items() if k != "arquivo"}
        raw["tramitacaoAtual"] = second
        raw["tramitacoes"] = [first]
    return SandboxProcess(raw, {d.spec.uuid: d.spec for d in docs})


def search_answer(raw: dict[str, Any]) -> dict[str, Any]:
    """The search endpoint's answer for one process (documents are not listed there)."""
    instances = [raw["tramitacaoAtual"], *(raw.get("tramitacoes") or [])]
    summary = {
        "numeroProcesso": "".join(c for c in raw["numeroProcesso"] if c.isdigit()),
        "nivelSigilo": raw.get("nivelSigilo", 0),
        "siglaTribunal": raw.get("siglaTribunal"),
        "tramitacoes": [{k: v for k, v in t.items() if k != "documentos"} for t in instances],
    }
    return {"total": 1, "numberOfElements": 1, "maxElementsSize": 100, "content": [summary]}
