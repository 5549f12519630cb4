"""What a refresh found: new movements, new documents, changed fields (old and new values)."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from .model import Diff, Documento, FieldChange, Movimento, PartyView, ProcessData, Tramitacao

_TOP_FIELDS = ("numeroProcesso", "siglaTribunal", "nivelSigilo")
# Where an item was listed and when it was first seen are not facts of the item itself.
_NOT_COMPARED = frozenset({"instances", "first_seen_at", "uuid"})


def instance_key(tramitacao: Tramitacao, index: int) -> str:
    """An instance's name in field paths: grau.sigla, else instancia, else its position."""
    sigla = tramitacao.grau.sigla if tramitacao.grau is not None else None
    return sigla or tramitacao.instancia or f"#{index}"


def parties_of(data: ProcessData) -> list[PartyView]:
    """The parties of every instance, each once (equal in every field), with its instances."""
    found: dict[bytes, PartyView] = {}
    for key, instance in _by_instance(data).items():
        for parte in instance.partes:
            seen = msgspec.json.encode(parte)
            party = found.get(seen)
            if party is None:
                fields = {f: getattr(parte, f) for f in parte.__struct_fields__}
                party = found[seen] = PartyView(**fields, instances=[])
            party.instances.append(key)
    return list(found.values())


def _by_instance(data: ProcessData) -> dict[str, Tramitacao]:
    found = [data.tramitacaoAtual] if data.tramitacaoAtual is not None else []
    found.extend(data.tramitacoes)
    named: dict[str, Tramitacao] = {}
    for index, tramitacao in enumerate(found):
        named.setdefault(instance_key(tramitacao, index), tramitacao)
    return named


def _fields(old: msgspec.Struct, new: msgspec.Struct, prefix: str) -> Iterable[FieldChange]:
    for name in new.__struct_fields__:
        if name in _NOT_COMPARED:
            continue
        before = msgspec.to_builtins(getattr(old, name))
        after = msgspec.to_builtins(getattr(new, name))
        if before != after:
            yield FieldChange(field=f"{prefix}{name}", old=before, new=after)


def _instances(old: ProcessData, new: ProcessData) -> Iterable[FieldChange]:
    before, after = _by_instance(old), _by_instance(new)
    for key, tramitacao in after.items():
        kept = before.get(key)
        if kept is None:
            yield FieldChange(field=key, old=None, new=msgspec.to_builtins(tramitacao))
        else:
            yield from _fields(kept, tramitacao, f"{key}.")
    for key, gone in before.items():
        if key not in after:
            yield FieldChange(field=key, old=msgspec.to_builtins(gone), new=None)


def _documents(
    old: list[Documento], new: list[Documento]
) -> tuple[list[Documento], list[FieldChange]]:
    known = {d.uuid: d for d in old}
    added: list[Documento] = []
    changed: list[FieldChange] = []
    for doc in new:
        kept = known.get(doc.uuid)
        if kept is None:
            added.append(doc)
        else:
            changed.extend(_fields(kept, doc, f"documentos[{doc.uuid}]."))
    return added, changed


def diff(
    old: ProcessData, new: ProcessData, known_movements: set[str], movements: list[Movimento]
) -> Diff:
    """What `new` (with `movements`) adds to or changes in `old` (with `known_movements`)."""
    changed: list[FieldChange] = []
    for name in _TOP_FIELDS:
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            changed.append(FieldChange(field=name, old=before, new=after))
    changed.extend(_instances(old, new))
    added_docs, doc_changes = _documents(old.documentos, new.documentos)
    changed.extend(doc_changes)
    added_moves = [m for m in movements if m.id not in known_movements]
    return Diff(new_movements=added_moves, new_documents=added_docs, changed_fields=changed)
