"""A process's data as typed Structs, with PDPJ's own field names (see shared/pdpj-contract).

Fields PDPJ sends that the contract does not name are not typed: they stay in the raw JSON
(`GET /processes/{n}/raw`, admins). Fields the service adds (identities, the instances an item
was listed in, first_seen_at, masked) are snake_case, so that the two never mix.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class _Pdpj(msgspec.Struct, kw_only=True):
    pass


class Grau(_Pdpj):
    """`grau`: the degree of an instance (sigla G1, G2, ...)."""

    sigla: str | None = None
    nome: str | None = None
    numero: int | None = None


class Classe(_Pdpj):
    """One of `classe`: a procedural class of the CNJ tables."""

    codigo: int | None = None
    descricao: str | None = None


class Assunto(_Pdpj):
    """One of `assunto`: a subject, with its place in the CNJ table (`hierarquia`)."""

    codigo: int | None = None
    descricao: str | None = None
    # As PDPJ writes it: "(7779) Indenização ... | (7771) Responsabilidade Civil | (899) ...".
    hierarquia: str | None = None


class OrgaoJulgador(_Pdpj):
    """One of `distribuicao[].orgaoJulgador`: the judging body."""

    id: int | None = None
    nome: str | None = None


class Distribuicao(_Pdpj):
    """One of `distribuicao`: when the case was distributed, and to which body."""

    dataHora: datetime | None = None
    orgaoJulgador: list[OrgaoJulgador] = []


class Tribunal(_Pdpj):
    """`tribunal`: the court (acronym, name, justice segment, J.TR code)."""

    sigla: str | None = None
    nome: str | None = None
    segmento: str | None = None
    jtr: str | None = None


class DocumentoIdentificacao(_Pdpj):
    """A CPF or CNPJ (`documentosPrincipais[]`, `cadastroReceitaFederal[]`)."""

    numero: str | None = None
    tipo: str | None = None


class Representante(_Pdpj):
    """One of `partes[].representantes`: a lawyer (or other representative) of a party."""

    tipoRepresentacao: str | None = None
    nome: str | None = None
    cadastroReceitaFederal: list[DocumentoIdentificacao] = []


class Parte(_Pdpj):
    """One of `partes`: a party, by pole (ATIVO, PASSIVO, ...), with its representatives."""

    polo: str | None = None
    nome: str | None = None
    outrosNomes: list[str] = []
    documentosPrincipais: list[DocumentoIdentificacao] = []
    representantes: list[Representante] = []
    sigilosa: bool = False
    # Set by the service: a sealed party's name, other names and CPF/CNPJ were withheld from a
    # key without the sealed permission.
    masked: bool = False


class PartyView(Parte, kw_only=True):
    """A party, listed once, with the instances (grau.sigla) that list it alike."""

    instances: list[str]


class Tramitacao(_Pdpj):
    """`tramitacaoAtual` or one of `tramitacoes`: the process in one instance.

    Its movements and documents are served per process (deduplicated across instances, each
    naming the instances that list it), not here.
    """

    instancia: str | None = None
    grau: Grau | None = None
    dataHoraAjuizamento: datetime | None = None
    valorAcao: float | None = None
    classe: list[Classe] = []
    assunto: list[Assunto] = []
    distribuicao: list[Distribuicao] = []
    tribunal: Tribunal | None = None
    partes: list[Parte] = []
    # The contract names the list but shows it empty: its elements pass through as PDPJ sends them.
    processosRelacionados: list[Any] = []
    ativo: bool | None = None


class TipoDocumento(_Pdpj):
    """A document's `tipo` (`codigo` is not always sent)."""

    codigo: int | None = None
    nome: str | None = None


class Arquivo(_Pdpj):
    """A document's `arquivo` (absent on some entries: then unknown until downloaded)."""

    tipo: str | None = None
    quantidadePaginas: int | None = None
    tamanho: int | None = None
    tamanhoTexto: int | None = None


class Documento(_Pdpj):
    """A document of the process, from every instance that lists it (deduplicated by uuid)."""

    uuid: str
    sequencia: int | None = None
    nome: str | None = None
    dataHoraJuntada: datetime | None = None
    nivelSigilo: str | None = None
    tipo: TipoDocumento | None = None
    arquivo: Arquivo | None = None
    # The `grau.sigla` (else `instancia`) of each instance that lists the document.
    instances: list[str] = []
    first_seen_at: datetime | None = None
    # Sealed (nivelSigilo other than PUBLICO) and the key lacks the sealed permission: listed so
    # that the key knows it exists, without its file data (`arquivo`).
    restricted: bool = False


class Movimento(_Pdpj):
    """A movement, from every instance that lists it (deduplicated by its identity)."""

    id: str
    dataHora: datetime | None = None
    descricao: str | None = None
    instances: list[str] = []
    first_seen_at: datetime | None = None


class ProcessData(_Pdpj):
    """The typed data of one process, movements excluded (they are paged on their own)."""

    numeroProcesso: str | None = None
    siglaTribunal: str | None = None
    nivelSigilo: int | None = None
    tramitacaoAtual: Tramitacao | None = None
    tramitacoes: list[Tramitacao] = []
    documentos: list[Documento] = []


class Parsed(msgspec.Struct, kw_only=True):
    """What one PDPJ answer holds: the data, and its movements newest first (with raw entries)."""

    data: ProcessData
    movements: list[Movimento]
    movement_raw: list[dict[str, Any]]
    # Each movement's instant in UTC as ISO 8601 text (None when undated): what is stored, exact
    # for any offset (JSON writes offsets to the minute).
    movement_at: list[str | None]


class FieldChange(msgspec.Struct, kw_only=True):
    """A field whose value changed: `field` is a path such as `G1.valorAcao` or `nivelSigilo`."""

    field: str
    old: Any
    new: Any


class Change(msgspec.Struct, kw_only=True):
    """What one refresh found: new movements, new documents, changed fields."""

    id: int
    recorded_at: datetime
    new_movements: list[Movimento]
    new_documents: list[Documento]
    changed_fields: list[FieldChange]


class Diff(msgspec.Struct, kw_only=True):
    """The difference between the stored state and a new answer (not yet recorded)."""

    new_movements: list[Movimento]
    new_documents: list[Documento]
    changed_fields: list[FieldChange]

    @property
    def empty(self) -> bool:
        """Nothing new and nothing changed: no change is recorded."""
        return not (self.new_movements or self.new_documents or self.changed_fields)
