"""What a key without the sealed permission may see: sealed parties masked, sealed documents out."""

from __future__ import annotations

from typing import Any

import msgspec

from .model import Documento, DocumentoIdentificacao, Parte, ProcessData, Tramitacao


def sealed_document(nivel: str | None) -> bool:
    """PDPJ's level is a string; anything but PUBLICO is sealed (as SQL's pdpj.is_sealed)."""
    return nivel is not None and nivel.strip().upper() not in ("", "PUBLICO")


def mask_parte(parte: Parte) -> Parte:
    """A sealed party without its name, other names and CPF/CNPJ numbers (pole, type and
    representatives stay: they are what the public record of a sealed party shows)."""
    if not parte.sigilosa:
        return parte
    return msgspec.structs.replace(
        parte,
        nome=None,
        outrosNomes=[],
        documentosPrincipais=[
            DocumentoIdentificacao(numero=None, tipo=d.tipo) for d in parte.documentosPrincipais
        ],
        masked=True,
    )


def _tramitacao(tramitacao: Tramitacao) -> Tramitacao:
    if not any(p.sigilosa for p in tramitacao.partes):
        return tramitacao
    return msgspec.structs.replace(tramitacao, partes=[mask_parte(p) for p in tramitacao.partes])


def visible_documents(docs: list[Documento], sees_sealed: bool) -> list[Documento]:
    """The documents as a key may see them: sealed ones without their file data, marked
    `restricted` (as the status route lists them), for a key without the sealed permission."""
    if sees_sealed:
        return docs
    return [
        msgspec.structs.replace(d, arquivo=None, restricted=True)
        if sealed_document(d.nivelSigilo)
        else d
        for d in docs
    ]


def mask_data(data: ProcessData, sees_sealed: bool) -> ProcessData:
    """The process's data as the key may see it."""
    if sees_sealed:
        return data
    current = data.tramitacaoAtual
    return msgspec.structs.replace(
        data,
        tramitacaoAtual=_tramitacao(current) if current is not None else None,
        tramitacoes=[_tramitacao(t) for t in data.tramitacoes],
        documentos=visible_documents(data.documentos, False),
    )


def mask_builtins(value: Any) -> Any:
    """Old and new values of a change (plain JSON) with every sealed party masked, at any depth."""
    if isinstance(value, list):
        return [mask_builtins(v) for v in value]
    if not isinstance(value, dict):
        return value
    if value.get("sigilosa") is True and "polo" in value:
        numbers = value.get("documentosPrincipais")
        return {
            **value,
            "nome": None,
            "outrosNomes": [],
            "documentosPrincipais": [
                {**d, "numero": None} if isinstance(d, dict) else d
                for d in (numbers if isinstance(numbers, list) else [])
            ],
            "masked": True,
        }
    return {k: mask_builtins(v) for k, v in value.items()}
