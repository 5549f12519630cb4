"""Search over the documents' text, and text extraction, on this machine.

    .venv/bin/python bench/search.py [--documents 100000] [--queries 300] [--seconds 15]
    .venv/bin/python bench/search.py --data-dir /work/scratch/search100k   # load once, reuse
    .venv/bin/python bench/search.py --data-dir DIR --no-save --no-extraction  # a quick try

With `--data-dir DIR` (outside the repository) the embedded PostgreSQL and its corpus are kept
there: the first run loads it (DIR/corpus.json records the keys and the load's figures), later
runs with the same `--documents` start the server on it, apply the migrations added since and
only measure (the results then say `corpus_reused`, with the first load's `load_s`).

One embedded PostgreSQL with the daemon's migrations. A generated corpus of `--documents`
Portuguese legal texts (about 20 KB each, words drawn from a Zipf-like vocabulary: a few
hundred legal words, common ones first, then a long tail of rarer ones) in processes of 20
documents; keys that see 1%, 10% and 50% of the processes (the last up to ~50,000 documents at
100,000) and an admin. Loading: 400,000 sentences are drawn once (each with its normalised
form); a document is ~200 of them picked at random, so Python's share is small. Two loaders COPY
batches of 1,000 into a staging table and write documents and texts in one INSERT … SELECT
each, PostgreSQL computing the tsvectors (`to_tsvector('pdpj.pt', …)` on the normalised text, as
the worker's `save`) on both cores; the GIN index is built once afterwards, then VACUUM ANALYZE
(the steady state of a running service). `load_split_s` says where the load time went.

- p50_ms / p99_ms: pdpj_async.search.search (the API's query: candidates, phrase check, ranking,
  snippets) one at a time, over 1-3 word queries and quoted phrases of common to rare words,
  by every key in turn.
- c8_qps / c8_p99_ms: 8 clients at once for `--seconds`.
- extract_vs_library: pages/s of pdpj_async.text.extract.pdf over generated PDFs, divided by
  pypdfium2's own page loop on the same files (the median of five back-to-back ratios). The
  extractor comparison (pypdfium2, pypdf, pdfminer.six; pages/s on the same files) is in
  `extractors_pages_per_s`.

Goals (issue 20): p50 <= 20 ms, p99 <= 100 ms; 8 clients >= 100 q/s with p99 <= 250 ms;
extraction >= 90% of the library alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import harness

RESULT = harness.RESULTS / "search.json"
_LEGAL_WORDS = """
processo autor réu juiz decisão sentença recurso apelação agravo embargos prazo citação
intimação audiência petição inicial contestação réplica perícia laudo testemunha prova dano
moral material indenização pagamento valor multa honorários custas justiça gratuita tutela
urgência liminar despacho acórdão tribunal turma relator voto ementa jurisprudência artigo lei
código civil processo penal trabalhista consumidor contrato cláusula rescisão obrigação dívida
cobrança execução penhora bloqueio conta bancária imóvel veículo alimentos guarda divórcio
partilha herança inventário testamento usucapião posse propriedade locação despejo aluguel
fiança condomínio vizinhança servidão ações decisões certidão publicação diário oficial
trânsito julgado arquivamento baixa distribuição competência foro comarca vara cartório
serventia escrivão oficial mandado cumprimento sentença impugnação exceção preliminar mérito
procedência improcedência parcial extinção resolução homologação acordo conciliação mediação
transação
"""
LEGAL = _LEGAL_WORDS.split()
_FILLER_WORDS = "o a os as de do da dos das em no na para por com que se não ao à pelo pela"
FILLER = _FILLER_WORDS.split()


def vocabulary(rng: random.Random, size: int = 30_000) -> tuple[list[str], list[float]]:
    """Words and cumulative Zipf weights (s = 1.1): legal words first, then a generated tail."""
    syllables = ["ca", "de", "mi", "to", "ra", "so", "li", "nu", "pe", "ção", "ões", "ar", "ir"]
    words = FILLER + LEGAL
    seen = set(words)
    while len(words) < size:
        word = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 5)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    cumulative: list[float] = []
    total = 0.0
    for rank in range(1, len(words) + 1):
        total += 1.0 / rank**1.1
        cumulative.append(total)
    return words, cumulative


class Tape:
    """Sentences drawn once from the vocabulary, each with its indexed form; a document is
    sentences picked at random from it. Drawing every word of 100,000 documents one by one
    costs ~7 ms a document in Python (~12 min); picking ~200 sentences costs ~0.1 ms, and a
    word's share of documents is the same (each sentence is a Zipf draw)."""

    def __init__(self, rng: random.Random, words: list[str], cum: list[float], n: int) -> None:
        from pdpj_async.text.normalize import for_index

        self.text: list[str] = []
        self.indexed: list[str] = []
        for _ in range(n):
            words_of = rng.choices(words, cum_weights=cum, k=rng.randint(8, 24))
            sentence = " ".join(words_of).capitalize() + "."
            self.text.append(sentence)
            # for_index works word by word, so the indexed form of a document is the join
            # of its sentences' indexed forms (checked in `document`'s first call).
            self.indexed.append(for_index(sentence))
        self._checked = False

    def document(self, rng: random.Random, size: int) -> tuple[str, str]:
        """About `size` characters of sentences, and its indexed form (for_index of it)."""
        picked: list[int] = []
        length = 0
        n = len(self.text)
        while length < size:
            i = rng.randrange(n)
            picked.append(i)
            length += len(self.text[i]) + 1
        body = " ".join([self.text[i] for i in picked])
        indexed = " ".join([self.indexed[i] for i in picked])
        if not self._checked:
            from pdpj_async.text.normalize import for_index

            assert for_index(body) == indexed, "for_index is not sentence by sentence"
            self._checked = True
        return body, indexed


def queries(rng: random.Random, n: int) -> list[str]:
    """1-3 word queries and quoted phrases, common to rare legal words."""
    out: list[str] = []
    for i in range(n):
        picked = rng.sample(LEGAL, rng.randint(1, 3))
        out.append(
            f'"{picked[0]} {picked[1]}"' if i % 4 == 3 and len(picked) > 1 else " ".join(picked)
        )
    return out


async def load(dsn: str, n: int, seed: int) -> dict[str, Any]:
    """The corpus, keys and access; returns the keys and load timings."""
    from pdpj_async import db, keys

    rng = random.Random(seed)
    words, cum = vocabulary(rng)
    started = time.perf_counter()
    tape = Tape(rng, words, cum, 400_000)
    tape_s = time.perf_counter() - started
    # A batch's tsvectors, the GIN build and VACUUM take far longer than the daemon's 30 s.
    pool = await db.create_pool(dsn, min_size=2, max_size=10, command_timeout=3600)
    pids = await _processes(pool, max(1, n // 20))
    async with pool.acquire() as conn:
        gin = await conn.fetchval("SELECT pg_get_indexdef('pdpj.document_texts_tsv'::regclass)")
        await conn.execute("DROP INDEX pdpj.document_texts_tsv")
    batches = [range(start, min(n, start + _BATCH)) for start in range(0, n, _BATCH)]
    # Two loaders: PostgreSQL computes the tsvectors (most of the time) on both cores.
    await asyncio.gather(*(_loader(pool, tape, pids, batches[w::2], seed + w) for w in (0, 1)))
    loaded = time.perf_counter() - started
    async with pool.acquire() as conn:
        t0 = time.perf_counter()
        # Built once after the load, as an operator's REINDEX would (a bigger sort memory).
        await conn.execute("SET maintenance_work_mem = '512MB'")
        await conn.execute(gin)
        gin_s = time.perf_counter() - t0
        # Steady state, as a running service reaches it: visibility map, statistics.
        for table in ("document_texts", "documents", "process_access", "processes"):
            await conn.execute(f"VACUUM ANALYZE pdpj.{table}")
    clients = []
    for share in (0.01, 0.10, 0.50):
        new = await keys.create_key(pool, f"k{share}", "user")
        visible = rng.sample(pids, max(1, int(len(pids) * share)))
        await pool.executemany(
            "INSERT INTO pdpj.process_access (api_key_id, process_id) VALUES ($1, $2)",
            [(new.info.id, pid) for pid in visible],
        )
        clients.append(keys.ApiKey(id=new.info.id, name=new.info.name, role="user"))
    admin = await keys.create_key(pool, "admin", "admin")
    clients.append(keys.ApiKey(id=admin.info.id, name="admin", role="admin"))
    await pool.execute("ANALYZE pdpj.process_access")
    size = await pool.fetchval("SELECT pg_database_size(current_database())")
    await pool.close()
    return {
        "clients": clients,
        "load_s": round(time.perf_counter() - started, 1),
        "load_split_s": {
            "sentences": round(tape_s, 1),
            "documents_and_tsvectors": round(loaded - tape_s, 1),
            "gin": round(gin_s, 1),
        },
        "db_bytes": size,
    }


_BATCH = 1000


async def _processes(pool: Any, count: int) -> list[int]:
    """`count` processes with valid numbers; their ids in order."""
    from pdpj_async import cnj

    numbers = [cnj.compose(i, "2024", "8", "26", "0100") for i in range(count)]
    async with pool.acquire() as conn:
        await conn.copy_records_to_table(
            "processes",
            schema_name="pdpj",
            columns=["number", "raw"],
            records=[(num, "{}") for num in numbers],
        )
        return [r["id"] for r in await conn.fetch("SELECT id FROM pdpj.processes ORDER BY id")]


async def _loader(pool: Any, tape: Tape, pids: list[int], batches: list[range], seed: int) -> None:
    """COPY each batch into a staging table, then documents and texts in one statement."""
    from datetime import UTC, datetime, timedelta

    rng = random.Random(seed)
    base = datetime(2023, 11, 14, tzinfo=UTC)
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TEMP TABLE staging (process_id bigint, uuid text, juntada_at timestamptz, "
            "body text, indexed text)"
        )
        for batch in batches:
            records = []
            for i in batch:
                body, indexed = tape.document(rng, 20_000)
                when = base + timedelta(minutes=10 * i)
                records.append((pids[i % len(pids)], f"doc-{i}", when, body, indexed))
            await conn.copy_records_to_table("staging", records=records)
            await conn.execute(_FLUSH)


# Documents and their texts from one staged batch, as the text worker writes them (the same
# columns and the same tsvector as pdpj/db/sql/text.sql's `save`).
_FLUSH = """
WITH docs AS (
    INSERT INTO pdpj.documents (process_id, uuid, name, href, raw, status, storage_key,
                                juntada_at, type_name)
    SELECT process_id, uuid, 'doc.pdf', '/x', '{}', 'available', 'k/' || uuid, juntada_at,
           'Petição'
    FROM staging
    RETURNING id, uuid
)
INSERT INTO pdpj.document_texts (document_id, process_id, status, source, storage_key, chars,
                                 juntada_at, type_name, body, tsv)
SELECT d.id, s.process_id, 'available', 'pdf', 'k/' || s.uuid || '/text.txt',
       length(s.body), s.juntada_at, 'Petição', s.body, to_tsvector('pdpj.pt', s.indexed)
FROM staging s JOIN docs d ON d.uuid = s.uuid;
TRUNCATE staging;
"""


async def measure(dsn: str, clients: list[Any], n_queries: int, seconds: float) -> dict[str, Any]:
    """One client at a time, then 8 at once."""
    from pdpj_async import db, search
    from pdpj_async.config import TextConfig

    candidates = TextConfig().search_candidates
    pool = await db.create_pool(dsn, min_size=1, max_size=10)
    qs = queries(random.Random(7), n_queries)

    async def one(key: Any, q: str) -> float:
        t0 = time.perf_counter()
        await search.search(pool, key, q, search.Filters(), limit=20, candidates=candidates)
        return (time.perf_counter() - t0) * 1000

    for q in qs[:20]:  # warm the caches
        await one(clients[-1], q)
    single = [await one(clients[i % len(clients)], q) for i, q in enumerate(qs)]
    times: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        i = w
        while time.perf_counter() < deadline:
            times.append(await one(clients[i % len(clients)], qs[i % len(qs)]))
            i += 8

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(8)))
    elapsed = time.perf_counter() - t0
    await pool.close()
    return {
        "p50_ms": round(harness.percentile(single, 50), 1),
        "p99_ms": round(harness.percentile(single, 99), 1),
        "c8_qps": round(len(times) / elapsed, 1),
        "c8_p99_ms": round(harness.percentile(times, 99), 1),
    }


def extraction(root: Path, files: int = 24, pages: int = 8) -> dict[str, Any]:
    """Pages/s of our extractor against the library alone, and of the three libraries."""
    import pypdfium2 as pdfium
    from fpdf import FPDF

    from pdpj_async.text import extract

    rng = random.Random(3)
    words, cum = vocabulary(rng, 5000)
    tape = Tape(rng, words, cum, 5000)
    paths = []
    for f in range(files):
        pdf = FPDF()
        pdf.set_font("helvetica", size=10)
        for _ in range(pages):
            pdf.add_page()
            pdf.multi_cell(0, 5, tape.document(rng, 3000)[0])
        path = root / f"doc{f}.pdf"
        pdf.output(str(path))
        paths.append(path)
    total = files * pages

    def pdfium_alone(path: Path) -> None:
        doc = pdfium.PdfDocument(str(path))
        for i in range(len(doc)):
            page = doc[i]
            page.get_textpage().get_text_range()
        doc.close()

    def pypdf_alone(path: Path) -> None:
        from pypdf import PdfReader

        for page in PdfReader(path).pages:
            page.extract_text()

    def pdfminer_alone(path: Path) -> None:
        from pdfminer.high_level import extract_text

        extract_text(str(path))

    def rate(fn: Any) -> float:
        # Pages per CPU second of this process (the extractors run in it, one thread): on a
        # machine shared with other work, wall time says more about the others than about them.
        fn(paths[0])
        t0 = time.process_time()
        for path in paths:
            fn(path)
        return total / (time.process_time() - t0)

    # Other work on the machine comes and goes: the two are timed back to back, five times, and
    # the median of the five ratios is the figure (the rates: the best of each).
    ours_runs, library_runs = [], []
    for _ in range(5):
        ours_runs.append(rate(lambda p: extract.pdf(p, False)))
        library_runs.append(rate(pdfium_alone))
    ratio = harness.median([o / lib for o, lib in zip(ours_runs, library_runs, strict=True)])
    ours, library = max(ours_runs), max(library_runs)
    return {
        "extract_vs_library": round(ratio, 3),
        "extractors_pages_per_s": {
            "pdpj_async.text.extract": round(ours),
            "pypdfium2": round(library),
            "pypdf": round(rate(pypdf_alone)),
            "pdfminer.six": round(rate(pdfminer_alone)),
        },
    }


def loaded_corpus(root: Path, documents: int) -> tuple[str, dict[str, Any], harness.Postgres]:
    """A started PostgreSQL under `root` with the corpus: loaded now, or kept from an earlier
    run with `--data-dir` (then only new migrations are applied); its DSN and load figures."""
    from pdpj_async import db, keys

    kept = root / "corpus.json"
    pg = harness.Postgres(root)
    pg.start()
    if kept.exists():
        loaded = json.loads(kept.read_text())
        if loaded["documents"] != documents:
            pg.stop()
            raise SystemExit(f"{root} holds {loaded['documents']} documents, not {documents}")
        dsn = pg.server.dsn_for(loaded["database"])
        db.apply_migrations(dsn)
        loaded["clients"] = [keys.ApiKey(**c) for c in loaded["clients"]]
        loaded["reused"] = True
        print(f"reusing {documents} documents in {root}", flush=True)
        return dsn, loaded, pg
    dsn = pg.fresh()
    loaded = asyncio.run(load(dsn, documents, seed=1))
    print(f"loaded {documents} documents in {loaded['load_s']} s", flush=True)
    clients = [{"id": c.id, "name": c.name, "role": c.role} for c in loaded["clients"]]
    saved = {**loaded, "clients": clients, "documents": documents, "database": "bench_1"}
    kept.write_text(json.dumps(saved, indent=2) + "\n")
    return dsn, loaded, pg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--extraction-only",
        action="store_true",
        help="measure extraction alone and update its figures in the existing results",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="keep the loaded corpus here (outside the repository) and reuse it on later runs",
    )
    parser.add_argument(
        "--no-save", action="store_true", help="print the figures, do not write the results"
    )
    parser.add_argument(
        "--no-extraction", action="store_true", help="skip the extraction figures (with --no-save)"
    )
    args = parser.parse_args()
    if args.no_extraction and not args.no_save:
        parser.error("--no-extraction needs --no-save: the results need the extraction figures")
    machine = harness.machine()  # the load average before this run adds its own
    with harness.workdir("bench-search-") as root:
        extracted = {} if args.no_extraction else extraction(root)
        print(json.dumps(extracted), flush=True)
        if args.extraction_only:
            result = {**json.loads(RESULT.read_text()), **extracted, "extraction_machine": machine}
            RESULT.write_text(json.dumps(result, indent=2) + "\n")
            return
        if args.data_dir:
            args.data_dir.mkdir(parents=True, exist_ok=True)
        dsn, loaded, pg = loaded_corpus(args.data_dir or root, args.documents)
        try:
            figures = asyncio.run(measure(dsn, loaded["clients"], args.queries, args.seconds))
        finally:
            # A kept corpus stops cleanly (a checkpoint), so that the next start needs no recovery.
            pg.server.stop(mode="fast" if args.data_dir else "immediate")
    result = {
        "documents": args.documents,
        **figures,
        **extracted,
        "load_s": loaded["load_s"],
        # With --data-dir on a later run: the corpus (and load_s) of an earlier run's load.
        "corpus_reused": loaded.get("reused", False),
        "load_split_s": loaded["load_split_s"],
        "db_bytes": loaded["db_bytes"],
        "machine": {**machine, "load_avg_at_end": harness.machine()["load_avg_at_start"]},
    }
    if not args.no_save:
        RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
