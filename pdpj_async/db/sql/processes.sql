-- name: get_process
SELECT id, number, court, class, subject, last_movement, last_movement_at, instances,
       sigilo_level, fetched_at,
       (SELECT count(*) FROM pdpj.documents d WHERE d.process_id = p.id) AS document_count
FROM pdpj.processes p
WHERE number = $1;

-- name: upsert_process
INSERT INTO pdpj.processes AS p (number, court, class, subject, last_movement, last_movement_at,
                                 instances, sigilo_level, raw, fetched_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
ON CONFLICT (number) DO UPDATE
SET court = EXCLUDED.court, class = EXCLUDED.class, subject = EXCLUDED.subject,
    last_movement = EXCLUDED.last_movement, last_movement_at = EXCLUDED.last_movement_at,
    instances = EXCLUDED.instances, sigilo_level = EXCLUDED.sigilo_level, raw = EXCLUDED.raw,
    fetched_at = now()
-- inserted: the row is new (a row an ON CONFLICT update wrote has its xmax set), so nothing of
-- the process is stored yet and its recording need not look.
RETURNING id, (xmax = 0) AS inserted;

-- name: upsert_documents
-- Metadata follows PDPJ; download state (status, size, sha256, ...) is ours and kept. An entry
-- without a usable hrefBinario ($12: why) is kept as a failed document with that reason; one
-- whose link became usable again (and was failed for that reason) is pending again.
INSERT INTO pdpj.documents AS d (process_id, uuid, name, type_name, mime_type, declared_size,
                                 sequence, juntada_at, sigilo, href, raw, status, error_message)
SELECT $1, u.uuid, u.name, u.type_name, u.mime_type, u.declared_size, u.sequence, u.juntada_at,
       u.sigilo, u.href, u.raw,
       CASE WHEN u.unusable IS NULL THEN 'pending' ELSE 'failed' END, u.unusable
FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::int[],
            $8::timestamptz[], $9::text[], $10::text[], $11::jsonb[], $12::text[])
     AS u(uuid, name, type_name, mime_type, declared_size, sequence, juntada_at, sigilo, href, raw,
          unusable)
ON CONFLICT (process_id, uuid) DO UPDATE
SET name = EXCLUDED.name, type_name = EXCLUDED.type_name, mime_type = EXCLUDED.mime_type,
    declared_size = EXCLUDED.declared_size, sequence = EXCLUDED.sequence,
    juntada_at = EXCLUDED.juntada_at, sigilo = EXCLUDED.sigilo, href = EXCLUDED.href,
    raw = EXCLUDED.raw, updated_at = now(),
    -- Only a document not yet stored changes state with its link.
    status = CASE WHEN d.status = 'available' THEN d.status
                  WHEN EXCLUDED.href IS NULL THEN 'failed'
                  WHEN d.href IS NULL AND d.status = 'failed' THEN 'pending'
                  ELSE d.status END,
    error_message = CASE WHEN d.status = 'available' THEN d.error_message
                         WHEN EXCLUDED.href IS NULL THEN EXCLUDED.error_message
                         WHEN d.href IS NULL AND d.status = 'failed' THEN NULL
                         ELSE d.error_message END
WHERE (d.name, d.type_name, d.mime_type, d.declared_size, d.sequence, d.juntada_at, d.sigilo, d.href)
      IS DISTINCT FROM
      (EXCLUDED.name, EXCLUDED.type_name, EXCLUDED.mime_type, EXCLUDED.declared_size,
       EXCLUDED.sequence, EXCLUDED.juntada_at, EXCLUDED.sigilo, EXCLUDED.href)

-- name: lock_documents_of_process
-- Lock order everywhere: process, then its documents (by id), then jobs (by id), then queue rows.
-- A worker finishing one of these waits for our commit, then sees our job.
SELECT id, status, href IS NOT NULL AS downloadable, pdpj.is_sealed(sigilo) AS sealed
FROM pdpj.documents
WHERE process_id = $1
ORDER BY id
FOR NO KEY UPDATE;

-- name: available_document_by_uuid
SELECT name, storage_key
FROM pdpj.documents
WHERE uuid = $1 AND status = 'available' AND storage_key IS NOT NULL
ORDER BY id
LIMIT 1;
