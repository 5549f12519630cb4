-- name: insert_job
-- The partial unique index makes this a no-op when the caller already has an active job.
INSERT INTO pdpj.jobs (process_id, api_key_id, webhook_url, metadata)
VALUES ($1, $2, $3, $4)
ON CONFLICT (process_id, api_key_id) WHERE status IN ('pending', 'processing') DO NOTHING
RETURNING id;

-- name: active_job_for_update
SELECT id, webhook_url
FROM pdpj.jobs
WHERE process_id = $1 AND api_key_id = $2 AND status IN ('pending', 'processing')
FOR UPDATE;

-- name: set_job_webhook
UPDATE pdpj.jobs SET webhook_url = $2, updated_at = now() WHERE id = $1;

-- name: add_job_documents
INSERT INTO pdpj.job_documents (job_id, document_id)
SELECT $1, unnest($2::bigint[])
ON CONFLICT DO NOTHING;

-- name: lock_active_jobs_of_document
-- In id order, so that concurrent finishers never deadlock.
SELECT j.id
FROM pdpj.jobs j
JOIN pdpj.job_documents jd ON jd.job_id = j.id
WHERE jd.document_id = $1 AND j.status IN ('pending', 'processing')
ORDER BY j.id
FOR UPDATE OF j;

-- name: lock_documents_of_job
-- Documents before jobs: the lock order of every transaction that touches both.
SELECT d.id
FROM pdpj.job_documents jd
JOIN pdpj.documents d ON d.id = jd.document_id
WHERE jd.job_id = $1
ORDER BY d.id
FOR NO KEY UPDATE OF d;

-- name: lock_job
SELECT id, status, api_key_id, webhook_url, process_id
FROM pdpj.jobs
WHERE id = $1
FOR UPDATE;

-- name: refresh_jobs
-- Counters derived from the documents (a fresh snapshot: the jobs are locked already);
-- a job whose documents are all final becomes completed (none failed) or failed.
-- A job with no documents (a webhook asked for a process that has none) is completed at once.
WITH counts AS (
    SELECT j.id AS job_id,
           count(d.id) AS total,
           count(d.id) FILTER (WHERE d.status = 'available') AS completed,
           count(d.id) FILTER (WHERE d.status = 'failed') AS failed,
           count(d.id) FILTER (WHERE d.status = 'processing') AS processing,
           (array_agg(d.error_message ORDER BY d.sequence NULLS LAST, d.id)
                FILTER (WHERE d.status = 'failed'))[1] AS first_error
    FROM unnest($1::uuid[]) AS j (id)
    LEFT JOIN pdpj.job_documents jd ON jd.job_id = j.id
    LEFT JOIN pdpj.documents d ON d.id = jd.document_id
    GROUP BY j.id
), next AS (
    SELECT c.*,
           CASE WHEN c.completed + c.failed = c.total
                THEN CASE WHEN c.failed = 0 THEN 'completed' ELSE 'failed' END
                WHEN c.completed + c.failed + c.processing > 0 THEN 'processing'
                ELSE 'pending' END AS status
    FROM counts c
)
UPDATE pdpj.jobs j
SET total_documents = n.total,
    completed_documents = n.completed,
    failed_documents = n.failed,
    progress_percentage = round(100.0 * (n.completed + n.failed) / greatest(n.total, 1), 2),
    status = n.status,
    started_at = CASE WHEN n.status <> 'pending' THEN coalesce(j.started_at, now()) END,
    completed_at = CASE WHEN n.status IN ('completed', 'failed') THEN now() END,
    -- A failed job says in one line how many failed and why the first did.
    error = CASE WHEN n.status = 'failed'
                 THEN left(format('%s of %s documents failed; the first: %s', n.failed, n.total,
                                  coalesce(n.first_error, 'no reason recorded')), 500)
                 ELSE j.error END,
    updated_at = now()
FROM next n
WHERE j.id = n.job_id AND j.status IN ('pending', 'processing')
RETURNING j.id, j.status, j.api_key_id, j.webhook_url, j.process_id;

-- name: cancel_job
UPDATE pdpj.jobs
SET status = 'cancelled', completed_at = now(), updated_at = now(), error = $2
WHERE id = $1 AND status IN ('pending', 'processing')
RETURNING id, status, api_key_id, webhook_url, process_id;

-- name: orphaned_documents_of_job
-- Documents of a job that no other active job waits on and that are not yet final.
SELECT d.id
FROM pdpj.job_documents jd
JOIN pdpj.documents d ON d.id = jd.document_id
WHERE jd.job_id = $1 AND d.status IN ('pending', 'processing')
  AND NOT EXISTS (
      SELECT 1 FROM pdpj.job_documents o
      JOIN pdpj.jobs oj ON oj.id = o.job_id
      WHERE o.document_id = d.id AND o.job_id <> $1 AND oj.status IN ('pending', 'processing'));

-- name: failed_documents_of_job
SELECT d.id
FROM pdpj.job_documents jd
JOIN pdpj.documents d ON d.id = jd.document_id
WHERE jd.job_id = $1 AND d.status = 'failed'
ORDER BY d.id;

-- name: job_view
SELECT v.*, p.number AS process_number
FROM pdpj.job_views v
JOIN pdpj.processes p ON p.id = v.process_id
WHERE v.id = $1;

-- name: list_jobs
-- Keyset pagination on (created_at, id), newest first.
SELECT v.*, p.number AS process_number
FROM pdpj.job_views v
JOIN pdpj.processes p ON p.id = v.process_id
WHERE ($1::bigint IS NULL OR v.api_key_id = $1)
  AND ($2::text IS NULL OR v.status = $2)
  AND ($3::text IS NULL OR p.number = $3)
  AND ($4::timestamptz IS NULL OR (v.created_at, v.id) < ($4, $5::uuid))
ORDER BY v.created_at DESC, v.id DESC
LIMIT $6;

-- name: status_documents
-- The status of a process: its id and its documents, each with its text's state; one row with
-- NULL document columns when it has none, no row when the process is unknown.
SELECT p.id AS process_id, d.id, d.uuid, d.name, d.type_name, d.mime_type, d.stored_mime_type,
       d.declared_size, d.sequence, d.status, d.size, d.sha256, d.storage_key, d.error_message,
       d.download_started_at, d.download_completed_at, pdpj.is_sealed(d.sigilo) AS sealed,
       d.text_status
FROM pdpj.processes p
LEFT JOIN pdpj.documents d ON d.process_id = p.id
WHERE p.number = $1
ORDER BY d.sequence NULLS LAST, d.id;

-- name: status_latest_jobs
-- For one round of status reads of process $1: a row for each API key in $2 that may see the
-- process (scope: the key's id), with that key's latest job (NULL columns when it has none);
-- and when $3 (an admin is among the readers) the latest job of anyone's (scope NULL). Keys
-- without access have no row: their answer is the one for a process never requested.
(SELECT a.api_key_id AS scope, v.*
 FROM pdpj.process_access a
 LEFT JOIN LATERAL (SELECT *
                    FROM pdpj.job_views v
                    WHERE v.process_id = $1 AND v.api_key_id = a.api_key_id
                    ORDER BY v.created_at DESC, v.id DESC
                    LIMIT 1) v ON true
 WHERE a.process_id = $1 AND a.api_key_id = ANY($2::bigint[]))
UNION ALL
(SELECT NULL, v.*
 FROM pdpj.job_views v
 WHERE $3 AND v.process_id = $1
 ORDER BY v.created_at DESC, v.id DESC
 LIMIT 1);

-- name: latest_completed_job
-- The caller's ($2) newest completed job for process $1, with the documents it covered.
SELECT j.id, j.webhook_url,
       array(SELECT jd.document_id FROM pdpj.job_documents jd WHERE jd.job_id = j.id
             ORDER BY jd.document_id) AS document_ids
FROM pdpj.jobs j
WHERE j.process_id = $1 AND j.api_key_id = $2 AND j.status = 'completed'
ORDER BY j.created_at DESC, j.id DESC
LIMIT 1;

-- name: covering_active_job
-- The caller's ($2) active job for the process ($1) when a repeated request would change
-- nothing: the job already waits on every document that is not available, and none has failed
-- (a request retries failed ones). A pending document of an active job always has its queue
-- row (only a final failure or a cancel of every job waiting on it removes it). One snapshot,
-- no locks: the answer is what the locking path would have answered at that instant.
SELECT j.id, j.status, j.webhook_url, j.total_documents, j.completed_documents,
       j.failed_documents, j.progress_percentage
FROM pdpj.jobs j
WHERE j.process_id = $1 AND j.api_key_id = $2 AND j.status IN ('pending', 'processing')
  AND NOT EXISTS (
      SELECT 1
      FROM pdpj.documents d
      WHERE d.process_id = $1
        AND ($3 OR NOT pdpj.is_sealed(d.sigilo))
        AND ((d.status = 'failed' AND d.href IS NOT NULL)
             OR (d.status <> 'available'
                 AND NOT EXISTS (SELECT 1 FROM pdpj.job_documents jd
                                 WHERE jd.job_id = j.id AND jd.document_id = d.id))));
