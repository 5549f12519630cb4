-- name: document
-- An available document and what its text work needs.
SELECT d.id, d.uuid, d.name, d.process_id, p.number AS process_number, d.storage_key,
       coalesce(d.stored_mime_type, d.mime_type) AS mime_type, d.raw->>'hrefTexto' AS href_texto,
       d.juntada_at, d.type_name
FROM pdpj.documents d
JOIN pdpj.processes p ON p.id = d.process_id
WHERE d.id = $1 AND d.status = 'available' AND d.storage_key IS NOT NULL;

-- name: save
-- The outcome of one text work: the row is created or replaced, and the document says so too.
-- $8: the indexed form (capped). Updating the document first locks it: a refresh changing its
-- sigilo at that moment waits, then its trigger (migration 0014) updates this row, so `sealed`
-- is never stale.
WITH d AS (
    UPDATE pdpj.documents SET text_status = $2
    WHERE id = $1
    RETURNING id, process_id, juntada_at, type_name, sigilo
)
INSERT INTO pdpj.document_texts (document_id, process_id, status, source, storage_key, chars,
                                 error_message, juntada_at, type_name, sealed, body, tsv,
                                 updated_at)
SELECT d.id, d.process_id, $2, $3, $4, $5, $6, d.juntada_at, d.type_name,
       pdpj.is_sealed(d.sigilo), $7,
       CASE WHEN $8::text IS NULL THEN NULL ELSE to_tsvector('pdpj.pt', $8::text) END, now()
FROM d
ON CONFLICT (document_id) DO UPDATE
SET status = EXCLUDED.status, source = EXCLUDED.source, storage_key = EXCLUDED.storage_key,
    chars = EXCLUDED.chars, error_message = EXCLUDED.error_message,
    juntada_at = EXCLUDED.juntada_at, type_name = EXCLUDED.type_name, sealed = EXCLUDED.sealed,
    body = EXCLUDED.body, tsv = EXCLUDED.tsv, updated_at = now();

-- name: text_links
-- Each text's state and object, by document id ($1: ids), for the links of a webhook message.
-- Before a text row exists, the document's own state ('off' with text.enabled off).
SELECT d.id AS document_id, coalesce(t.status, d.text_status) AS status, t.storage_key
FROM pdpj.documents d LEFT JOIN pdpj.document_texts t ON t.document_id = d.id
WHERE d.id = ANY($1::bigint[]) AND (t.document_id IS NOT NULL OR d.text_status IS NOT NULL);

-- name: text_of
-- The text row of an available document, by id.
-- (Before its text row exists, the document's own state: 'off' with text.enabled off.)
SELECT coalesce(t.status, d.text_status) AS status, t.storage_key, t.error_message, t.source,
       t.chars
FROM pdpj.documents d LEFT JOIN pdpj.document_texts t ON t.document_id = d.id
WHERE d.id = $1 AND (t.document_id IS NOT NULL OR d.text_status IS NOT NULL);

-- name: document_id
-- The id of the available document `uuid` in process $2.
SELECT id FROM pdpj.documents
WHERE uuid = $1 AND process_id = $2 AND status = 'available'
ORDER BY id LIMIT 1;

-- name: rebuild_batch
-- Available documents after id $1 (of process $2 when given), in id order, $3 at most.
SELECT d.id FROM pdpj.documents d
JOIN pdpj.processes p ON p.id = d.process_id
WHERE d.id > $1 AND d.status = 'available' AND ($2::text IS NULL OR p.number = $2)
ORDER BY d.id
LIMIT $3;

-- name: mark_off
-- Documents made available while text.enabled is off ($1: ids): no text work is queued.
UPDATE pdpj.documents SET text_status = 'off'
WHERE id = ANY($1::bigint[]) AND text_status IS NULL;

-- name: mark_pending
-- Texts about to be redone say so ($1: document ids): the documents first (the lock order of
-- `save` and of a refresh's trigger), then their text rows.
WITH d AS (
    UPDATE pdpj.documents SET text_status = 'pending'
    WHERE id = ANY($1::bigint[]) AND text_status IS NOT NULL
    RETURNING id
)
UPDATE pdpj.document_texts t SET status = 'pending', updated_at = now()
FROM d
WHERE t.document_id = d.id;

-- The search runs in two steps: the candidates (the $N most recent visible texts that have
-- every word of the query, phrases relaxed to AND and negated phrases left out), each ranked
-- against the exact query in the same pass (NULL: not an exact match, a phrase); then the
-- snippets of the page's hits. The candidates come one of two ways, chosen by search_estimate:
-- a word most texts have is found by walking the visible texts newest first (testing each
-- text's words only after its scope; the walk stops at $N); a rarer one from the GIN index.
-- Both give the same rows.

-- name: search_estimate
-- The planner's estimate of the texts matching $1 (Plans[0]) and of all texts (Plans[1]).
EXPLAIN (FORMAT JSON)
SELECT 1 FROM pdpj.document_texts t WHERE t.tsv @@ pdpj.websearch_relaxed($1)
UNION ALL
SELECT 1 FROM pdpj.document_texts t;

-- name: search_walk
-- Candidates walking the visible texts newest first: $1 query, $2 the key, $3 admin (all
-- processes), $4 sees sealed, $5 process number, $6 type, $7/$8 juntada range, $9 how many (the
-- parameters of search_indexed). The search plans each query for its own values
-- (db.custom_plans), so `$3 OR ...` folds away: an admin walks all texts, a key its processes
-- (through their own index for a key with few, all texts newest first for a key with many).
SELECT v.document_id, pdpj.exact_rank(v.tsv, $1) AS rank
FROM (SELECT t.document_id, t.tsv
      FROM pdpj.document_texts t
      WHERE t.status = 'available'
        AND ($3 OR t.process_id IN (SELECT a.process_id FROM pdpj.process_access a
                                    WHERE a.api_key_id = $2))
        AND ($4 OR NOT t.sealed)
        AND ($5::text IS NULL OR t.process_id = (SELECT id FROM pdpj.processes WHERE number = $5))
        AND ($6::text IS NULL OR t.type_name = $6)
        AND ($7::timestamptz IS NULL OR t.juntada_at >= $7)
        AND ($8::timestamptz IS NULL OR t.juntada_at < $8)
      ORDER BY t.juntada_at DESC NULLS LAST, t.document_id DESC
      -- A fence: the words are tested after the scope and the order, on the texts walked.
      OFFSET 0) v
WHERE v.tsv @@ pdpj.websearch_relaxed($1)
LIMIT $9;

-- name: search_indexed
-- Candidates from the GIN index: $1 query, $2 the key, $3 admin (all processes), $4 sees
-- sealed, $5 process number, $6 type, $7/$8 juntada range, $9 how many. The matches come from
-- the GIN index behind a fence: with the ORDER BY beside them the planner may walk the texts
-- newest first instead, expecting $9 matches soon, and for a key that sees few of them read
-- every text (500,000 texts: 109 ms). The tsvectors are read after the LIMIT, of the
-- candidates only.
SELECT c.document_id, pdpj.exact_rank(c.tsv, $1) AS rank
FROM (SELECT m.document_id, m.tsv
      FROM (SELECT t.document_id, t.tsv, t.juntada_at
            FROM pdpj.document_texts t
            WHERE t.tsv @@ pdpj.websearch_relaxed($1)
              AND t.status = 'available'
              AND ($3 OR t.process_id IN (SELECT a.process_id FROM pdpj.process_access a
                                          WHERE a.api_key_id = $2))
              AND ($4 OR NOT t.sealed)
              AND ($5::text IS NULL
                   OR t.process_id = (SELECT id FROM pdpj.processes WHERE number = $5))
              AND ($6::text IS NULL OR t.type_name = $6)
              AND ($7::timestamptz IS NULL OR t.juntada_at >= $7)
              AND ($8::timestamptz IS NULL OR t.juntada_at < $8)
            OFFSET 0) m
      ORDER BY m.juntada_at DESC NULLS LAST, m.document_id DESC
      LIMIT $9) c;

-- name: search_page
-- The hits $2 (document ids, a page of ranked candidates) of query $1, each with its process,
-- document and a highlighted snippet.
WITH q AS (
    SELECT pdpj.query_lexemes(pdpj.websearch($1)) AS lexemes,
           pdpj.any_word(pdpj.websearch($1)) AS any_word
)
SELECT t.document_id, p.number AS process_number, d.uuid, d.name, d.type_name, d.juntada_at,
       -- A 512-character window from a little before the first word of the query: a snippet
       -- costs about its window (~0.4 ms a KB), and 20 make a page. Where that word is comes
       -- from the text's positions (word counts), at ~6.25 characters a word. (768 characters
       -- from 250 before: a highlighted word in 99.5% of the bench's snippets; 512 from 200
       -- before: 98.8%, with a third less text to parse.)
       ts_headline('pdpj.pt',
                   substr(t.body, greatest(1, coalesce(first.word, 1) * 25 / 4 - 200), 512),
                   q.any_word,
                   'StartSel=<b>, StopSel=</b>, MaxFragments=1, MaxWords=24, MinWords=8')
           AS snippet
FROM pdpj.document_texts t
JOIN pdpj.documents d ON d.id = t.document_id
JOIN pdpj.processes p ON p.id = t.process_id
CROSS JOIN q
LEFT JOIN LATERAL (SELECT min(position)::int AS word
                   FROM unnest(ts_filter(setweight(t.tsv, 'A', q.lexemes), '{a}')) u,
                        unnest(u.positions) AS position) first ON true
WHERE t.document_id = ANY($2::bigint[]);
