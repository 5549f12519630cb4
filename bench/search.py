"""Search over the documents' text, and text extraction, on this machine.

    .venv/bin/python bench/search.py [--documents 100000] [--queries 300] [--seconds 15]

One embedded PostgreSQL with the daemon's migrations. A generated corpus of `--documents`
Portuguese legal texts (about 20 KB each, words drawn from a Zipf-like vocabulary: a few
hundred legal words, common ones first, then a long tail of rarer ones) in processes of 20
documents; keys that see 1%, 10% and 50% of the processes (the last up to ~50,000 documents at
100,000) and an admin. Loaded as the text worker writes them (the same SQL: `to_tsvector` on the
normalised text, capped), then VACUUM ANALYZE (the steady state of a running service).

- p50_ms / p99_ms: pdpj_async.search.search (the API's query: candidates, phrase check, ranking,
  snippets) one at a time, over 1-3 word queries and quoted phrases of common to rare words,
  by every key in turn.
- c8_qps / c8_p99_ms: 8 clients at once for `--seconds`.
- extract_vs_library: pages/s of pdpj_async.text.extract.pdf over generated PDFs, divided by
  pypdfium2's own page loop on the same files. The extractor comparison (pypdfium2, pypdf,
  pdfminer.six; pages/s on the same files) is in `extractors_pages_per_s`.

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


def document(rng: random.Random, words: list[str], cum: list[float], size: int) -> str:
    """About `size` characters of sentences."""
    out: list[str] = []
    length = 0
    while length < size:
        sentence = " ".join(rng.choices(words, cum_weights=cum, k=rng.randint(8, 24)))
        sentence = sentence.capitalize() + "."
        out.append(sentence)
        length += len(sentence) + 1
    return " ".join(out)


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
    import asyncpg

    from pdpj_async import cnj, db, keys
    from pdpj_async.text.normalize import for_index

    rng = random.Random(seed)
    words, cum = vocabulary(rng)
    pool = await db.create_pool(dsn, min_size=1, max_size=10)
    started = time.perf_counter()
    processes = max(1, n // 20)
    numbers = []
    for i in range(processes):
        seq = f"{i:07d}"
        numbers.append(
            f"{seq}{cnj.expected_check_digits(seq, '2024', '8', '26', '0100')}20248260100"
        )
    async with pool.acquire() as conn:
        await conn.copy_records_to_table(
            "processes",
            schema_name="pdpj",
            columns=["number", "raw"],
            records=[(num, "{}") for num in numbers],
        )
        pids = [r["id"] for r in await conn.fetch("SELECT id FROM pdpj.processes ORDER BY id")]
        await conn.execute(
            "CREATE TEMP TABLE staging (process_id bigint, uuid text, juntada_at timestamptz, "
            "body text, indexed text)"
        )
        batch: list[tuple[Any, ...]] = []
        base = 1_700_000_000
        for i in range(n):
            body = document(rng, words, cum, 20_000)
            juntada = time.gmtime(base + i * 600)
            from datetime import UTC, datetime

            when = datetime(*juntada[:6], tzinfo=UTC)
            batch.append((pids[i % processes], f"doc-{i}", when, body, for_index(body)))
            if len(batch) == 1000 or i == n - 1:
                await conn.copy_records_to_table("staging", records=batch)
                batch = []
                await conn.execute(_FLUSH)
        await conn.execute("DROP TABLE staging")
        loaded = time.perf_counter() - started
        # Steady state, as a running service reaches it: the GIN index's pending list merged
        # (fresh inserts sit in it, and every query scans it until a vacuum), statistics taken.
        for table in ("document_texts", "documents", "process_access", "processes"):
            await conn.execute(f"VACUUM ANALYZE pdpj.{table}")
    clients = []
    for share in (0.01, 0.10, 0.50):
        new = await keys.create_key(pool, f"k{share}", "user")
        visible = rng.sample(pids, max(1, int(processes * share)))
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
    del asyncpg
    return {"clients": clients, "load_s": round(loaded, 1), "db_bytes": size}


# Documents and their texts from one staged batch, as the text worker writes them.
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
    paths = []
    for f in range(files):
        pdf = FPDF()
        pdf.set_font("helvetica", size=10)
        for _ in range(pages):
            pdf.add_page()
            pdf.multi_cell(0, 5, document(rng, words, cum, 3000))
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
        fn(paths[0])
        t0 = time.perf_counter()
        for path in paths:
            fn(path)
        return total / (time.perf_counter() - t0)

    ours = rate(lambda p: extract.pdf(p, False))
    library = rate(pdfium_alone)
    return {
        "extract_vs_library": round(ours / library, 3),
        "extractors_pages_per_s": {
            "pdpj_async.text.extract": round(ours),
            "pypdfium2": round(library),
            "pypdf": round(rate(pypdf_alone)),
            "pdfminer.six": round(rate(pdfminer_alone)),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    with harness.workdir("bench-search-") as root:
        extracted = extraction(root)
        print(json.dumps(extracted), flush=True)
        with harness.postgres(root) as pg:
            dsn = pg.fresh()
            loaded = asyncio.run(load(dsn, args.documents, seed=1))
            print(f"loaded {args.documents} documents in {loaded['load_s']} s", flush=True)
            figures = asyncio.run(measure(dsn, loaded["clients"], args.queries, args.seconds))
    result = {
        "documents": args.documents,
        **figures,
        "extract_vs_library": extracted["extract_vs_library"],
        "extractors_pages_per_s": extracted["extractors_pages_per_s"],
        "load_s": loaded["load_s"],
        "db_bytes": loaded["db_bytes"],
        "machine": harness.machine(),
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
