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

-- name: start_downloads
-- Download attempts begin, in one statement (one round trip, its own transaction) for every
-- document of a claim: the guarded document updates (refused unless the status is one of $2),
-- the documents locked in id order first and then the jobs waiting on them, in id order (the
-- order of every transaction that locks several rows of either, so that none deadlocks), those
-- jobs moved pending → processing, and the fields each download needs. A start changes no job
-- counter (they count final documents only), so no recount is needed.
--
-- Its commit does not wait for the WAL flush (synchronous_commit off, for this transaction
-- only): a start is idempotent. A PostgreSQL crash can lose only the last few ms of WAL, never
-- a hole in it, so a lost start is one whose later writes (the final 'available' commit, which
-- stays synchronous and flushes every WAL record before its own) are lost too; the queue row's
-- lease then expires and the document is downloaded again. Nothing committed as final is lost.
WITH async_commit AS (
    SELECT set_config('synchronous_commit', 'off', true)
), picked AS (
    SELECT id FROM pdpj.documents
    WHERE id = ANY($1::bigint[]) AND status = ANY($2::text[])
    ORDER BY id
    FOR NO KEY UPDATE
), doc AS (
    UPDATE pdpj.documents d
    SET status = 'processing',
        attempts = d.attempts + 1,
        download_started_at = now(),
        updated_at = now()
    FROM picked
    WHERE d.id = picked.id
    RETURNING d.id, d.uuid, d.name, d.type_name, d.mime_type, d.declared_size, d.href, d.status,
              d.size, d.sha256, d.storage_key, d.attempts, d.process_id
), locked AS (
    SELECT j.id
    FROM pdpj.jobs j
    WHERE j.status = 'pending'
      AND j.id IN (SELECT jd.job_id FROM pdpj.job_documents jd JOIN doc ON jd.document_id = doc.id)
    ORDER BY j.id
    FOR UPDATE OF j
), started AS (
    -- A data-modifying CTE runs whether or not the query reads it.
    UPDATE pdpj.jobs j
    SET status = 'processing', started_at = coalesce(j.started_at, now()), updated_at = now()
    FROM locked
    WHERE j.id = locked.id AND j.status = 'pending'
)
SELECT doc.id, doc.uuid, doc.name, doc.type_name, doc.mime_type, doc.declared_size, doc.href,
       doc.status, doc.size, doc.sha256, doc.storage_key, doc.attempts,
       p.number AS process_number
FROM doc
JOIN pdpj.processes p ON p.id = doc.process_id
CROSS JOIN async_commit;

-- name: make_available_many
-- Several finished downloads at once, in one round trip: the documents are locked in id order
-- first (the lock order of every transaction: whatever plan the update gets, each row it
-- touches is locked by `locked` beforehand, in that order), then each becomes available with
-- what was stored, if its status is one of $6; then the active jobs waiting on those that
-- changed are locked, in id order (sorted before they are locked), for their recount. Answers
-- the ids of both.
WITH locked AS (
    SELECT id FROM pdpj.documents WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE
), changed AS (
    UPDATE pdpj.documents d
    SET status = 'available',
        download_completed_at = now(),
        error_message = NULL,
        size = t.size,
        sha256 = t.sha256,
        storage_key = t.storage_key,
        stored_mime_type = t.mime_type,
        updated_at = now()
    FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[])
         AS t(id, size, sha256, storage_key, mime_type)
    JOIN locked ON locked.id = t.id
    WHERE d.id = t.id AND d.status = ANY($6::text[])
    RETURNING d.id
), jobs AS (
    SELECT j.id
    FROM pdpj.jobs j
    WHERE j.status IN ('pending', 'processing')
      AND j.id IN (
          SELECT jd.job_id FROM pdpj.job_documents jd JOIN changed ON jd.document_id = changed.id
      )
    ORDER BY j.id
    FOR UPDATE
)
SELECT ARRAY(SELECT id FROM changed) AS documents, ARRAY(SELECT id FROM jobs) AS jobs;
