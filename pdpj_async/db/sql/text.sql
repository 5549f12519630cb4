-- name: document
-- An available document and what its text work needs.
SELECT d.id, d.uuid, d.name, d.process_id, p.number AS process_number, d.storage_key,
       coalesce(d.stored_mime_type, d.mime_type) AS mime_type, d.raw->>'hrefTexto' AS href_texto,
       d.juntada_at, d.type_name
FROM pdpj.documents d
JOIN pdpj.processes p ON p.id = d.process_id
WHERE d.id = $1 AND d.status = 'available' AND d.storage_key IS NOT NULL;

-- name: save
-- The outcome of one text work: the row is created or replaced. $8: the indexed form (capped).
INSERT INTO pdpj.document_texts (document_id, process_id, status, source, storage_key, chars,
                                 error_message, juntada_at, type_name, body, tsv, updated_at)
SELECT d.id, d.process_id, $2, $3, $4, $5, $6, d.juntada_at, d.type_name, $7,
       CASE WHEN $8::text IS NULL THEN NULL ELSE to_tsvector('pdpj.pt', $8::text) END, now()
FROM pdpj.documents d WHERE d.id = $1
ON CONFLICT (document_id) DO UPDATE
SET status = EXCLUDED.status, source = EXCLUDED.source, storage_key = EXCLUDED.storage_key,
    chars = EXCLUDED.chars, error_message = EXCLUDED.error_message,
    juntada_at = EXCLUDED.juntada_at, type_name = EXCLUDED.type_name, body = EXCLUDED.body,
    tsv = EXCLUDED.tsv, updated_at = now();

-- name: statuses
-- Text status per document id, for the status views ($1: ids).
SELECT document_id, status FROM pdpj.document_texts WHERE document_id = ANY($1::bigint[]);

-- name: text_of
-- The text row of an available document, by id.
SELECT status, storage_key, error_message, source, chars
FROM pdpj.document_texts WHERE document_id = $1;

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

-- name: mark_pending
-- Texts about to be redone say so ($1: document ids).
UPDATE pdpj.document_texts SET status = 'pending', updated_at = now()
WHERE document_id = ANY($1::bigint[]);

-- name: search
-- Ranked hits for a tsquery ($1, from websearch_to_tsquery over the normalised query), scoped:
-- $2 the key, $3 admin (all processes), $4 sees sealed. Filters: $5 process number, $6 type,
-- $7/$8 juntada range. The candidates are the $9 most recent visible matches, from the GIN
-- index alone (phrases relaxed to AND: GIN keeps no positions); the phrase check and ranking
-- then run on them only. $10/$11: the cursor (rank, document id) of the previous page's last
-- hit; $12: page size.
WITH query AS (
    SELECT websearch_to_tsquery('pdpj.pt', $1) AS exact,
           -- the same words with phrases relaxed to AND: what the index alone can answer
           regexp_replace(websearch_to_tsquery('pdpj.pt', $1)::text, '<[0-9-]+>', '&',
                          'g')::tsquery AS relaxed
), candidates AS (
    SELECT t.document_id, t.process_id, t.juntada_at, t.tsv, t.body
    FROM pdpj.document_texts t, query q
    WHERE t.tsv @@ q.relaxed
      AND t.status = 'available'
      AND ($3 OR t.process_id IN (SELECT a.process_id FROM pdpj.process_access a
                                  WHERE a.api_key_id = $2))
      AND ($5::text IS NULL OR t.process_id = (SELECT id FROM pdpj.processes WHERE number = $5))
      AND ($4 OR NOT EXISTS (SELECT 1 FROM pdpj.documents s
                             WHERE s.id = t.document_id AND pdpj.is_sealed(s.sigilo)))
      AND ($6::text IS NULL OR t.type_name = $6)
      AND ($7::timestamptz IS NULL OR t.juntada_at >= $7)
      AND ($8::timestamptz IS NULL OR t.juntada_at < $8)
    ORDER BY t.juntada_at DESC NULLS LAST, t.document_id DESC
    LIMIT $9
), ranked AS (
    SELECT c.*, ts_rank_cd(c.tsv, q.exact)::float8 AS rank
    FROM candidates c, query q
    WHERE c.tsv @@ q.exact
)
SELECT r.document_id, r.rank, p.number AS process_number, d.uuid, d.name, d.type_name,
       d.juntada_at,
       -- On the first 2 KB only: a whole document costs ~2.5 ms per hit, 2 KB a fraction.
       ts_headline('pdpj.pt', left(r.body, 2048), q.exact,
                   'StartSel=<b>, StopSel=</b>, MaxFragments=1, MaxWords=24, MinWords=8')
           AS snippet
FROM ranked r
JOIN pdpj.documents d ON d.id = r.document_id
JOIN pdpj.processes p ON p.id = r.process_id
CROSS JOIN query q
WHERE ($10::float8 IS NULL OR (r.rank, r.document_id) < ($10, $11))
ORDER BY r.rank DESC, r.document_id DESC
LIMIT $12;
