"""The process itself, typed: parties, lawyers, movements, classes, subjects, court, value, and
the change each refresh brings (parse: PDPJ JSON into Structs; diff: two states; store: SQL)."""

from .diff import instance_key, parties_of
from .model import (
    Change,
    Diff,
    Documento,
    FieldChange,
    Movimento,
    Parte,
    PartyView,
    ProcessData,
    Tramitacao,
)
from .parse import movement_id, parse
from .store import (
    ChangePage,
    DataView,
    MovementPage,
    changes_page,
    counts,
    ensure_recorded,
    movements_page,
    raw_answer,
    read_data,
    record,
)

__all__ = [
    "Change",
    "ChangePage",
    "DataView",
    "Diff",
    "Documento",
    "FieldChange",
    "MovementPage",
    "Movimento",
    "Parte",
    "PartyView",
    "ProcessData",
    "Tramitacao",
    "changes_page",
    "counts",
    "ensure_recorded",
    "instance_key",
    "movement_id",
    "movements_page",
    "parse",
    "parties_of",
    "raw_answer",
    "read_data",
    "record",
]
