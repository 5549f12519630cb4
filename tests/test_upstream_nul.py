"""NUL characters in PDPJ's details: dropped wherever they come, without walking clean answers."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from pdpj_async.cnj import parse
from pdpj_async.config import PdpjConfig
from pdpj_async.upstream.client import PdpjClient
from pdpj_async.upstream.parse import may_hold_nul
from pdpj_async.upstream.tokens import TokenProvider
from tests.fixtures.sandbox import Sandbox

NUMBER = "10117457720258110041"

# Strings drawn with NUL, backslashes, quotes and the letters of the escape, so that texts
# like `\\u0000` (an escaped backslash, then plain text) come up as well as real NULs.
_TEXT = st.text(alphabet=st.sampled_from(["\x00", "\\", "u", "0", '"', "a", "é", "\n"]))
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=20,
)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _encodings(value: Any) -> list[bytes]:
    return [
        msgspec.json.encode(value),
        json.dumps(value, ensure_ascii=True).encode(),
        json.dumps(value, ensure_ascii=False).encode("utf-8"),
    ]


@settings(max_examples=400, deadline=None)
@given(_JSON)
def test_a_json_text_without_the_nul_escape_never_decodes_to_a_nul(value: Any) -> None:
    for body in _encodings(value):
        decoded = msgspec.json.decode(body)
        holds_nul = any("\x00" in s for s in _strings(decoded))
        # The skip is safe: no escape, no NUL. (The converse need not hold: `\\u0000` is an
        # escaped backslash and plain text, and costs only a walk.)
        assert holds_nul <= may_hold_nul(body), body


async def test_a_nul_sent_by_pdpj_is_dropped_from_every_field(
    sandbox: Sandbox, pdpj_config: PdpjConfig
) -> None:
    await sandbox.override(NUMBER, documents=[{"size": 10, "name": "petição\x00final.pdf"}])
    async with PdpjClient(pdpj_config, TokenProvider(pdpj_config.token)) as client:
        process = await client.get_process(parse(NUMBER))
    assert [d.name for d in process.documents] == ["petiçãofinal.pdf"]
    assert not any("\x00" in s for s in _strings(process.raw))
    assert "petiçãofinal.pdf" in json.dumps(process.raw, ensure_ascii=False)


async def test_an_answer_without_nul_is_parsed_as_before(
    sandbox: Sandbox, pdpj_config: PdpjConfig
) -> None:
    await sandbox.override(NUMBER, documents=[{"size": 10, "name": "petição\\u0000.pdf"}])
    async with PdpjClient(pdpj_config, TokenProvider(pdpj_config.token)) as client:
        process = await client.get_process(parse(NUMBER))
    # A backslash and the letters of the escape are text, kept as they are.
    assert [d.name for d in process.documents] == ["petição\\u0000.pdf"]
