-- name: transition
-- The one guarded status change: refused (no row) unless the status is one of $2.
-- $9: a download attempt begins (a retry or a rescue starts from processing, and counts;
-- re-asserting processing before the final write does not).
UPDATE pdpj.documents
SET status = $3,
    attempts = attempts + CASE WHEN $9 THEN 1 ELSE 0 END,
    download_started_at = CASE WHEN $9 THEN now() ELSE download_started_at END,
    download_completed_at = CASE WHEN $3 IN ('available', 'failed') THEN now()
                                 WHEN $3 = 'pending' THEN NULL
                                 ELSE download_completed_at END,
    -- pending keeps (or takes) the last error, so a document waiting for a retry says why.
    error_message = CASE WHEN $3 = 'failed' THEN $4 WHEN $3 = 'available' THEN NULL
                         WHEN $3 = 'pending' THEN coalesce($4, error_message)
                         ELSE error_message END,
    size = coalesce($5, size),
    sha256 = coalesce($6, sha256),
    storage_key = coalesce($7, storage_key),
    stored_mime_type = coalesce($8, stored_mime_type),
    updated_at = now()
WHERE id = $1 AND status = ANY($2::text[])
RETURNING id, status;

-- name: get_document
SELECT d.id, d.uuid, d.name, d.type_name, d.mime_type, d.declared_size, d.href, d.status,
       d.size, d.sha256, d.storage_key, d.attempts, p.number AS process_number
FROM pdpj.documents d
JOIN pdpj.processes p ON p.id = d.process_id
WHERE d.id = $1;
