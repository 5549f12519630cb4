"""Search over the documents' text: Portuguese stemming with accent folding, web-search syntax,
ranked hits with snippets, cursor paging, and strictly scoped to what each key may see."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from pdpj_async import keys
from pdpj_async import search as search_texts
from tests.fixtures.app import Keys
from tests.text_docs import Corpus, open_storage

Client = TestClient[Any, Any]


@pytest.fixture
async def corpus(pool: asyncpg.Pool, tmp_path: Path) -> Any:
    store = await open_storage(tmp_path / "corpus")
    try:
        yield Corpus(pool, store)
    finally:
        await store.close()


async def search(client: Client, key: keys.NewKey, **params: str) -> Any:
    resp = await client.get("/api/v1/search", headers=Keys.header(key), params=params)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def found(client: Client, key: keys.NewKey, q: str) -> set[str]:
    return {hit["document_uuid"] for hit in (await search(client, key, q=q))["hits"]}


async def test_plural_and_unaccented_words_find_their_accented_singular(
    client: Client, api_keys: Keys, corpus: Corpus
) -> None:
    process = await corpus.process(key_ids=(api_keys.user.info.id,))
    decisao = await corpus.add(process, "A decisão do juízo foi mantida em segunda instância.")
    acoes = await corpus.add(process, "As ações de cobrança foram reunidas por conexão.")
    other = await corpus.add(process, "Certidão de publicação no diário oficial.")
    assert await found(client, api_keys.user, "decisões") == {decisao}
    assert await found(client, api_keys.user, "DECISOES") == {decisao}
    assert await found(client, api_keys.user, "acao") == {acoes}
    assert await found(client, api_keys.user, "ação") == {acoes}
    assert await found(client, api_keys.user, "juizo instancia") == {decisao}
    assert await found(client, api_keys.user, "publicacoes") == {other}


async def test_hits_carry_process_document_date_and_a_highlighted_snippet(
    client: Client, api_keys: Keys, corpus: Corpus
) -> None:
    process = await corpus.process(key_ids=(api_keys.user.info.id,))
    when = datetime(2024, 3, 7, 14, 30, tzinfo=UTC)
    uuid = await corpus.add(
        process,
        "Condeno o réu ao pagamento de danos morais.",
        juntada_at=when,
        type_name="Sentença",
    )
    (hit,) = (await search(client, api_keys.user, q="danos morais"))["hits"]
    assert hit["process_number"] == process[1]
    assert hit["document_uuid"] == uuid and hit["document_name"] == "doc.txt"
    assert hit["type_name"] == "Sentença"
    assert datetime.fromisoformat(hit["juntada_at"]) == when
    assert "<b>danos</b> <b>morais</b>" in hit["snippet"]
    assert hit["text_url"] == f"/api/v1/documents/{uuid}/text"


async def test_a_second_key_cannot_find_the_first_keys_documents_and_an_admin_finds_all(
    client: Client, api_keys: Keys, corpus: Corpus
) -> None:
    mine = await corpus.process(key_ids=(api_keys.user.info.id,))
    theirs = await corpus.process(key_ids=(api_keys.other.info.id,))
    a = await corpus.add(mine, "Embargos de declaração opostos pela autora.")
    b = await corpus.add(theirs, "Embargos de declaração rejeitados.")
    assert await found(client, api_keys.user, "embargos") == {a}
    assert await found(client, api_keys.other, "embargos") == {b}
    assert await found(client, api_keys.admin, "embargos") == {a, b}
    # Naming the other key's process answers as if it had no match.
    body = await search(client, api_keys.user, q="embargos", process=theirs[1])
    assert body["hits"] == []


async def test_sealed_text_is_found_only_with_the_sealed_permission(
    client: Client, api_keys: Keys, corpus: Corpus, pool: asyncpg.Pool
) -> None:
    sealed_reader = await keys.create_key(pool, "carol", "user", can_read_sigiloso=True)
    process = await corpus.process(key_ids=(api_keys.user.info.id, sealed_reader.info.id))
    public = await corpus.add(process, "Laudo pericial público.")
    sealed = await corpus.add(process, "Laudo pericial sigiloso.", sigilo="SIGILOSO")
    assert await found(client, api_keys.user, "laudo") == {public}
    assert await found(client, sealed_reader, "laudo") == {public, sealed}


async def test_phrases_or_and_exclusion_follow_web_search_syntax(
    client: Client, api_keys: Keys, corpus: Corpus
) -> None:
    process = await corpus.process(key_ids=(api_keys.user.info.id,))
    phrase = await corpus.add(process, "Houve dano moral grave ao autor.")
    apart = await corpus.add(process, "O dano foi material; o abalo moral não se provou.")
    recurso = await corpus.add(process, "Recurso de apelação interposto.")
    user = api_keys.user
    assert await found(client, user, '"dano moral"') == {phrase}
    assert await found(client, user, "dano moral") == {phrase, apart}
    assert await found(client, user, "dano -material") == {phrase}
    assert await found(client, user, "apelação or grave") == {phrase, recurso}


async def test_a_negated_phrase_excludes_the_phrase_but_not_its_words_apart(
    client: Client, api_keys: Keys, corpus: Corpus, pool: asyncpg.Pool
) -> None:
    process = await corpus.process(key_ids=(api_keys.user.info.id,))
    await corpus.add(process, "Na apelação, o dano moral foi provado.")
    apart = await corpus.add(process, "Na apelação, o dano foi material e o abalo moral leve.")
    one_word = await corpus.add(process, "Na apelação, nenhum dano se provou.")
    key = keys.ApiKey(id=api_keys.user.info.id, name="u", role="user")
    for plan in ("walk", "index"):
        hits = await hits_of(pool, key, 'apelação -"dano moral"', plan)
        assert set(hits) == {apart, one_word}, plan
    assert await found(client, api_keys.user, '-"dano moral" apelação') == {apart, one_word}
    assert await found(client, api_keys.user, '-"dano moral"') == {apart, one_word}


async def test_filters_narrow_by_process_type_and_date(
    client: Client, api_keys: Keys, corpus: Corpus
) -> None:
    key = api_keys.user.info.id
    first, second = await corpus.process(key_ids=(key,)), await corpus.process(key_ids=(key,))
    old = await corpus.add(first, "Prazo de defesa.", juntada_at=datetime(2023, 1, 5, tzinfo=UTC))
    new = await corpus.add(
        second, "Prazo recursal.", juntada_at=datetime(2024, 6, 1, tzinfo=UTC), type_name="Ato"
    )
    user = api_keys.user
    assert {h["document_uuid"] for h in (await search(client, user, q="prazo"))["hits"]} == {
        old,
        new,
    }
    by_process = await search(client, user, q="prazo", process=second[1])
    assert [h["document_uuid"] for h in by_process["hits"]] == [new]
    by_type = await search(client, user, q="prazo", type="Ato")
    assert [h["document_uuid"] for h in by_type["hits"]] == [new]
    by_date = await search(client, user, q="prazo", to="2024-01-01")
    assert [h["document_uuid"] for h in by_date["hits"]] == [old]
    assert [
        h["document_uuid"]
        for h in (await search(client, user, q="prazo", **{"from": "2024-01-01"}))["hits"]
    ] == [new]


async def test_cursor_pages_through_every_hit_once_best_first(
    client: Client, api_keys: Keys, corpus: Corpus
) -> None:
    process = await corpus.process(key_ids=(api_keys.user.info.id,))
    uuids = set()
    for n in range(7):
        # More mentions rank higher: n + 1 of them.
        uuids.add(await corpus.add(process, "Citação do réu. " * (n + 1) + f"Folha {n}."))
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(10):
        params = {"q": "citação", "limit": "3", **({"cursor": cursor} if cursor else {})}
        page = await search(client, api_keys.user, **params)
        seen.extend(page["hits"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [h["document_uuid"] for h in seen if h] and len(seen) == 7
    assert {h["document_uuid"] for h in seen} == uuids
    ranks = [h["rank"] for h in seen]
    assert ranks == sorted(ranks, reverse=True) and ranks[0] > ranks[-1]


async def test_hits_of_equal_rank_page_through_once_each_newest_id_first(
    client: Client, api_keys: Keys, corpus: Corpus
) -> None:
    process = await corpus.process(key_ids=(api_keys.user.info.id,))
    uuids = [await corpus.add(process, "Penhora de conta bancária.") for _ in range(5)]
    pages: list[list[str]] = []
    params = {"q": "penhora", "limit": "2"}
    while True:
        page = await search(client, api_keys.user, **params)
        pages.append([h["document_uuid"] for h in page["hits"]])
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    # The same rank for all: the document id breaks the tie, highest first.
    assert pages == [uuids[4:2:-1], uuids[2:0:-1], uuids[:1]]


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({}, "q: a search query is required"),
        ({"q": "x" * 501}, "q: at most 500 characters"),
        ({"q": "prazo", "cursor": "not-a-cursor"}, "cursor: not a cursor this API returned"),
        ({"q": "prazo", "from": "yesterday"}, "from: expected an ISO 8601 date or date-time"),
        ({"q": "prazo", "limit": "1000"}, "limit: expected an integer from 1 to 100"),
    ],
)
async def test_a_bad_search_request_is_a_400_problem_naming_what_was_wrong(
    client: Client, api_keys: Keys, params: dict[str, str], detail: str
) -> None:
    resp = await client.get("/api/v1/search", headers=Keys.header(api_keys.user), params=params)
    assert resp.status == 400
    assert (await resp.json())["detail"] == detail


async def test_a_query_of_stopwords_only_finds_nothing_without_error(
    client: Client, api_keys: Keys, corpus: Corpus
) -> None:
    process = await corpus.process(key_ids=(api_keys.user.info.id,))
    await corpus.add(process, "O autor e a ré.")
    assert (await search(client, api_keys.user, q="o e a"))["hits"] == []


async def hits_of(
    pool: asyncpg.Pool, key: keys.ApiKey, q: str, plan: Any, candidates: int = 300, **kw: Any
) -> list[str]:
    filters = search_texts.Filters(**kw)
    page = await search_texts.search(pool, key, q, filters, plan=plan, candidates=candidates)
    return [h.document_uuid for h in page.hits]


async def test_walking_the_newest_texts_and_the_index_find_the_same_hits_in_the_same_order(
    pool: asyncpg.Pool, api_keys: Keys, corpus: Corpus
) -> None:
    user = keys.ApiKey(id=api_keys.user.info.id, name="u", role="user")
    admin = keys.ApiKey(id=api_keys.admin.info.id, name="a", role="admin")
    mine = await corpus.process(key_ids=(user.id,))
    theirs = await corpus.process()
    for n in range(12):
        when = datetime(2024, 1, 1 + n, tzinfo=UTC)
        text = "Recurso de apelação. " * (1 + n % 4) + ("Dano moral." if n % 3 else "Dano.")
        process = mine if n % 2 else theirs
        await corpus.add(process, text, juntada_at=when, sigilo="SIGILOSO" if n == 5 else None)
    queries = [
        "recurso",
        '"dano moral"',
        "apelação -moral",
        "dano or inexistente",
        'recurso -"dano moral"',
    ]
    for key in (user, admin):
        for q in queries:
            walked = await hits_of(pool, key, q, "walk")
            indexed = await hits_of(pool, key, q, "index")
            assert walked == indexed and walked, (key.role, q)
            # The same bounded set too: the 3 newest candidates, whichever way they are found.
            since = datetime(2024, 1, 3, tzinfo=UTC)
            bounded = [await hits_of(pool, key, q, p, 3, since=since) for p in ("walk", "index")]
            assert bounded[0] == bounded[1] and 0 < len(bounded[0]) <= 3, (key.role, q)


async def test_a_document_sealed_after_its_text_was_indexed_is_no_longer_found(
    client: Client, api_keys: Keys, corpus: Corpus, pool: asyncpg.Pool
) -> None:
    process = await corpus.process(key_ids=(api_keys.user.info.id,))
    uuid = await corpus.add(process, "Laudo pericial complementar.")
    assert await found(client, api_keys.user, "laudo") == {uuid}
    # A refresh from PDPJ marks it sealed: the text follows the document at once.
    await pool.execute("UPDATE pdpj.documents SET sigilo = 'SIGILOSO' WHERE uuid = $1", uuid)
    assert await found(client, api_keys.user, "laudo") == set()
    assert await found(client, api_keys.admin, "laudo") == {uuid}
