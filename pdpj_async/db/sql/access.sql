-- name: grant
-- A key that requests (or watches) a process may see it from then on.
INSERT INTO pdpj.process_access (api_key_id, process_id)
VALUES ($1, $2)
ON CONFLICT DO NOTHING;

-- name: visible_process
-- The process $1 (20 digits) when key $2 may see it: $3 (an admin) sees every process.
SELECT p.id, p.number, p.sigilo_level
FROM pdpj.processes p
WHERE p.number = $1
  AND ($3 OR EXISTS (SELECT 1 FROM pdpj.process_access a
                     WHERE a.process_id = p.id AND a.api_key_id = $2));

-- name: visible_document
-- An available document by PDPJ uuid, with its process, when key $2 may see that process ($3: an
-- admin sees all).
SELECT d.storage_key, pdpj.is_sealed(d.sigilo) AS sealed, p.id AS process_id
FROM pdpj.documents d
JOIN pdpj.processes p ON p.id = d.process_id
WHERE d.uuid = $1 AND d.status = 'available' AND d.storage_key IS NOT NULL
  AND ($3 OR EXISTS (SELECT 1 FROM pdpj.process_access a
                     WHERE a.process_id = p.id AND a.api_key_id = $2))
ORDER BY d.id
LIMIT 1;

-- name: append_log
-- A batch of access-log lines, one statement however many.
INSERT INTO pdpj.access_log (at, api_key_id, action, process_id, document_uuid)
SELECT * FROM unnest($1::timestamptz[], $2::bigint[], $3::text[], $4::bigint[], $5::text[]);

-- name: read_log
-- Newest first, filtered; ($5, $6) is the cursor: the (at, id) of the last line already seen.
SELECT l.id, l.at, l.api_key_id, l.action, p.number AS process_number, l.document_uuid
FROM pdpj.access_log l
LEFT JOIN pdpj.processes p ON p.id = l.process_id
WHERE ($1::text IS NULL OR p.number = $1)
  AND ($2::bigint IS NULL OR l.api_key_id = $2)
  AND ($3::timestamptz IS NULL OR l.at >= $3)
  AND ($5::timestamptz IS NULL OR (l.at, l.id) < ($5, $6))
ORDER BY l.at DESC, l.id DESC
LIMIT $4;
