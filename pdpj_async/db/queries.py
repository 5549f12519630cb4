"""The SQL of pdpj-async: named blocks in `sql/*.sql`, parsed once, looked up by name."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_BLOCK = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def load(concern: str) -> dict[str, str]:
    """The named statements of `sql/{concern}.sql` (blocks start with `-- name: x`)."""
    text = resources.files(__package__).joinpath("sql", f"{concern}.sql").read_text("utf-8")
    parts = _BLOCK.split(text)
    statements: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in statements:
            raise ValueError(f"sql/{concern}.sql: statement {name!r} defined twice")
        statements[name] = body.strip().rstrip(";")
    return statements
