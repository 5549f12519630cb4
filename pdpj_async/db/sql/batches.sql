-- Batches: a bulk request's items, each resolved by the single request's path, and their
-- completion (exactly once: a guarded update in the transaction that closes the last item).

-- name: insert_batch
INSERT INTO pdpj.batches (api_key_id, webhook_url, options, total_items, open_items)
VALUES ($1, $2, $3, $4, $4)
RETURNING id;

-- name: insert_items
INSERT INTO pdpj.batch_items (batch_id, line, number)
SELECT $1, line, number
FROM unnest($2::int[], $3::text[]) AS i (line, number);

-- name: item_for_request
-- What the queue row of an item needs: the number, the batch's options, its key.
SELECT i.number, i.state, b.api_key_id, b.options, k.name AS key_name, k.role,
       k.rate_limit_per_s, k.rate_limit_burst, k.can_read_sigiloso, k.revoked_at
FROM pdpj.batch_items i
JOIN pdpj.batches b ON b.id = i.batch_id
JOIN pdpj.api_keys k ON k.id = b.api_key_id
WHERE i.batch_id = $1 AND i.line = $2;

-- name: lock_job_status
-- The item's job is locked while the item is linked to it: a transaction making the job final
-- either committed before (we see it final) or waits and then sees the link.
SELECT status FROM pdpj.jobs WHERE id = $1 FOR UPDATE;

-- name: resolve_item
UPDATE pdpj.batch_items
SET state = $3, job_id = $4, error = $5, updated_at = now()
WHERE batch_id = $1 AND line = $2 AND state = 'queued'
RETURNING batch_id;

-- name: lock_batches_of_jobs
-- In id order, before any of the jobs' hooks runs: transactions that finish jobs of the same
-- batches then take the batches' locks in one order and never wait on each other crosswise.
SELECT b.id
FROM pdpj.batches b
WHERE b.id IN (SELECT batch_id FROM pdpj.batch_items
               WHERE job_id = ANY($1::uuid[]) AND state = 'waiting')
  AND b.status = 'processing'
ORDER BY b.id
FOR UPDATE OF b;

-- name: close_items_of_job
UPDATE pdpj.batch_items
SET state = 'done', updated_at = now()
WHERE job_id = $1 AND state = 'waiting'
RETURNING batch_id;

-- name: close_items
-- Count closed items off their batches; a batch whose last item closed is completed, once.
UPDATE pdpj.batches b
SET open_items = b.open_items - c.closed,
    status = CASE WHEN b.open_items - c.closed = 0 THEN 'completed' ELSE b.status END,
    completed_at = CASE WHEN b.open_items - c.closed = 0 THEN now() END
FROM unnest($1::uuid[], $2::int[]) AS c (id, closed)
WHERE b.id = c.id AND b.status = 'processing'
RETURNING b.id, b.status;

-- name: complete_empty_batch
UPDATE pdpj.batches
SET status = 'completed', completed_at = now()
WHERE id = $1 AND open_items = 0 AND status = 'processing'
RETURNING id;

-- name: batch_view
-- A batch with its progress: items by state, its jobs by status, their documents.
SELECT b.id, b.api_key_id, b.status, b.webhook_url, b.options, b.total_items, b.open_items,
       b.created_at, b.completed_at,
       count(i.line) FILTER (WHERE i.state = 'queued') AS queued,
       count(i.line) FILTER (WHERE i.state <> 'queued' AND i.job_id IS NULL
                             AND i.error IS NOT NULL) AS failed_requests,
       count(i.line) FILTER (WHERE i.state <> 'queued' AND i.job_id IS NULL
                             AND i.error IS NULL) AS without_job,
       count(j.id) FILTER (WHERE j.status = 'pending') AS jobs_pending,
       count(j.id) FILTER (WHERE j.status = 'processing') AS jobs_processing,
       count(j.id) FILTER (WHERE j.status = 'completed') AS jobs_completed,
       count(j.id) FILTER (WHERE j.status = 'failed') AS jobs_failed,
       count(j.id) FILTER (WHERE j.status = 'cancelled') AS jobs_cancelled,
       coalesce(sum(j.total_documents), 0)::bigint AS documents_total,
       coalesce(sum(j.completed_documents), 0)::bigint AS documents_completed,
       coalesce(sum(j.failed_documents), 0)::bigint AS documents_failed
FROM pdpj.batches b
LEFT JOIN pdpj.batch_items i ON i.batch_id = b.id
LEFT JOIN pdpj.jobs j ON j.id = i.job_id
WHERE b.id = $1 AND ($2::bigint IS NULL OR b.api_key_id = $2)
GROUP BY b.id;

-- name: failed_items
-- The items whose request failed (a process PDPJ does not know, a sealed one), first ones.
SELECT line, number, error
FROM pdpj.batch_items
WHERE batch_id = $1 AND state = 'done' AND job_id IS NULL AND error IS NOT NULL
ORDER BY line
LIMIT $2;

-- name: batch_owner
SELECT api_key_id FROM pdpj.batches WHERE id = $1;
