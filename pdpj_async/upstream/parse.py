"""PDPJ responses as data: a process's details parsed into Structs, first bytes classified."""

from __future__ import annotations

import re
import uuid as uuidlib
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
from yarl import URL

from ..cnj import ProcessNumber

# PDPJ writes local times without an offset; Brasília has had no daylight saving since 2019.
BRASILIA = timezone(timedelta(hours=-3), "BRT")

_UUID_IN_HREF = re.compile(r"/documentos/([^/?#]+)/binario")
_UUID_IN_TEXT_HREF = re.compile(r"/documentos/([^/?#]+)/texto")
_HTML_START = re.compile(rb"^\s*(<!doctype\s+html|<html|<head|<body|<!--|<meta|<title)", re.I)
# Names documents that PDPJ lists without a usable hrefBinario (stable across fetches).
_NO_HREF_NAMESPACE = uuidlib.UUID("5c0d6a4e-8f0b-4a55-9d53-2f4f1c1e7a10")


class UpstreamDocument(msgspec.Struct, kw_only=True):
    """One document of a process, as listed by PDPJ.

    `href` is None when the entry has no usable hrefBinario; `unusable_reason` then says why,
    and the document is to be kept as failed with that reason rather than dropped.
    """

    uuid: str
    name: str
    type_name: str | None
    mime_type: str | None
    declared_size: int | None
    sequence: int | None
    juntada_at: datetime | None
    sigilo: str | None
    href: str | None
    raw: dict[str, Any]
    unusable_reason: str | None = None


class UpstreamProcess(msgspec.Struct, kw_only=True):
    """A process's details: what the service stores, plus the raw payload."""

    number: str
    court: str | None
    class_name: str | None
    subject: str | None
    last_movement: str | None
    last_movement_at: datetime | None
    instances: list[str]
    sigilo_level: int
    documents: list[UpstreamDocument]
    raw: dict[str, Any]


def parse_datetime(value: Any) -> datetime | None:
    """A PDPJ timestamp ("2024-08-02T17:22:09.301", Brasília time) as an aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=BRASILIA)


def _first(items: Any, key: str) -> Any:
    if isinstance(items, list) and items and isinstance(items[0], dict):
        return items[0].get(key)
    return None


def lenient_int(value: Any) -> int | None:
    """An int PDPJ sent as a number or as ASCII digits; None for anything else (bools too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value)
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def uuid_from_href(href: str) -> str | None:
    """The document uuid inside a hrefBinario."""
    match = _UUID_IN_HREF.search(href)
    return match.group(1) if match else None


def href_problem(href: str, base: URL | None) -> str | None:
    """Why `href` must not be fetched with the PDPJ token (another origin), or None."""
    if href.startswith(("//", "\\\\")):
        return "hrefBinario names another host"
    if ":" not in href.split("/", 1)[0]:
        return None  # relative: joined to the API base, so it stays on the PDPJ origin
    try:
        target = URL(href)
    except (ValueError, TypeError):
        return "hrefBinario is not a valid URL"
    if target.scheme not in ("http", "https"):
        return f"hrefBinario uses the {target.scheme[:16]!r} scheme"
    if base is not None and _origin(target) != _origin(base):
        # The bearer token goes only to the configured PDPJ origin.
        return "hrefBinario points outside the configured PDPJ origin"
    return None


def _origin(url: URL) -> tuple[str, str, int | None]:
    return url.scheme.lower(), (url.host or "").rstrip(".").lower(), url.port


def _document_id(entry: dict[str, Any], href: str | None) -> str:
    # The uuid names the document in every later call; without a usable hrefBinario it comes
    # from hrefTexto, else from PDPJ's own ids, so that each fetch names the entry the same way.
    found = uuid_from_href(href) if href else None
    if found:
        return found
    texto = _UUID_IN_TEXT_HREF.search(_str(entry.get("hrefTexto")) or "")
    if texto:
        return texto.group(1)
    ids = [str(entry.get(k)) for k in ("idCodex", "idOrigem") if entry.get(k) not in (None, "")]
    seed = "|".join(ids) if ids else msgspec.json.encode(entry, order="sorted").decode()
    return str(uuidlib.uuid5(_NO_HREF_NAMESPACE, seed))


def _usable_href(entry: dict[str, Any], base: URL | None) -> tuple[str | None, str | None]:
    # (the href, or None and why it cannot be used)
    value = entry.get("hrefBinario")
    if value is None or value == "":
        return None, "PDPJ listed the document without a hrefBinario"
    if not isinstance(value, str):
        return None, "PDPJ listed the document with a hrefBinario that is not a string"
    if uuid_from_href(value) is None:
        return None, "the hrefBinario does not name a document (/documentos/{uuid}/binario)"
    problem = href_problem(value, base)
    return (None, problem) if problem else (value, None)


def _document(entry: dict[str, Any], base: URL | None) -> UpstreamDocument:
    href, reason = _usable_href(entry, base)
    uuid = _document_id(entry, href or _str(entry.get("hrefBinario")))
    arquivo = _dict(entry.get("arquivo"))
    tipo = _dict(entry.get("tipo"))
    return UpstreamDocument(
        uuid=uuid,
        name=_str(entry.get("nome")) or uuid,
        type_name=_str(tipo.get("nome")),
        mime_type=_str(arquivo.get("tipo")),
        declared_size=lenient_int(arquivo.get("tamanho")),
        sequence=lenient_int(entry.get("sequencia")),
        juntada_at=parse_datetime(entry.get("dataHoraJuntada")),
        sigilo=_str(entry.get("nivelSigilo")),
        href=href,
        raw=entry,
        unusable_reason=reason,
    )


def _instances(raw: dict[str, Any]) -> list[dict[str, Any]]:
    # tramitacoes is absent for a single-instance process and may repeat the current one.
    current = raw.get("tramitacaoAtual")
    others = raw.get("tramitacoes")
    found = [current] if isinstance(current, dict) else []
    if isinstance(others, list):
        found.extend(t for t in others if isinstance(t, dict))
    return found


def _better(kept: UpstreamDocument, new: UpstreamDocument) -> bool:
    # A usable href beats none; then an entry with `arquivo` beats one without.
    if (kept.href is None) != (new.href is None):
        return kept.href is None
    return kept.mime_type is None and new.mime_type is not None


def list_documents(raw: dict[str, Any], base: URL | None = None) -> list[UpstreamDocument]:
    """Documents of every instance, deduplicated by uuid, preferring an entry with `arquivo`.

    Entries without a usable hrefBinario are kept with `href=None` and `unusable_reason`;
    given the API `base`, an absolute hrefBinario to another origin is one of them.
    """
    by_uuid: dict[str, UpstreamDocument] = {}
    for instance in _instances(raw):
        entries = instance.get("documentos")
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            doc = _document(entry, base)
            kept = by_uuid.get(doc.uuid)
            if kept is None or _better(kept, doc):
                by_uuid[doc.uuid] = doc
    return sorted(by_uuid.values(), key=lambda d: (d.sequence is None, d.sequence or 0, d.uuid))


def scrub(value: Any) -> Any:
    """The payload without NUL characters, which PostgreSQL refuses in text and jsonb."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def may_hold_nul(body: bytes) -> bool:
    """Whether a JSON text can decode to a string with a NUL character: only through the
    escape `\\u0000` (a raw NUL byte is not valid JSON and the decoder refuses it)."""
    return b"\\u0000" in body


def parse_process(
    raw: dict[str, Any],
    number: ProcessNumber | None = None,
    base: URL | None = None,
    *,
    nul_free: bool = False,
) -> UpstreamProcess:
    """Build an UpstreamProcess from one details object (NUL characters dropped).

    `nul_free`: the caller knows no string in `raw` holds a NUL (its JSON text has no
    `\\u0000`), and the walk over every value is skipped."""
    if not nul_free:
        raw = scrub(raw)
    instances = _instances(raw)
    current = instances[0] if instances else {}
    movement_source = next((t for t in instances if t.get("movimentos")), current)
    digits = re.sub(r"[^0-9]", "", str(raw.get("numeroProcesso") or ""))
    if len(digits) != 20:
        digits = number.digits if number is not None else digits
    tribunal = _dict(current.get("tribunal"))
    grades = [t.get("grau") for t in instances]
    names = {g["sigla"] for g in grades if isinstance(g, dict) and _str(g.get("sigla"))}
    return UpstreamProcess(
        number=digits,
        court=_str(raw.get("siglaTribunal")) or _str(tribunal.get("sigla")),
        class_name=_str(_first(current.get("classe"), "descricao")),
        subject=_str(_first(current.get("assunto"), "descricao")),
        last_movement=_str(_first(movement_source.get("movimentos"), "descricao")),
        last_movement_at=parse_datetime(_first(movement_source.get("movimentos"), "dataHora")),
        instances=sorted(names),
        sigilo_level=lenient_int(raw.get("nivelSigilo")) or 0,
        documents=list_documents(raw, base),
        raw=raw,
    )


def looks_like_html(first_bytes: bytes) -> bool:
    """True when the bytes start like an HTML page (the PDPJ web shell, an error page)."""
    return bool(_HTML_START.match(first_bytes.lstrip(b"\xef\xbb\xbf")[:512]))


def check_content(declared_mime: str | None, first_bytes: bytes) -> str | None:
    """Why the first bytes cannot be the declared document, or None when they can."""
    if declared_mime == "text/html" or not first_bytes:
        return None
    if looks_like_html(first_bytes):
        return f"PDPJ sent an HTML page where {declared_mime or 'a file'} was expected"
    if declared_mime == "application/pdf" and not first_bytes.startswith(b"%PDF-"):
        return "PDPJ sent bytes that do not start with %PDF- for a document declared as PDF"
    return None
