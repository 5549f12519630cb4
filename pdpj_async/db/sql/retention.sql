-- Each statement removes at most $2 rows older than $1 seconds, oldest first, through the index
-- on that age: short transactions, no long lock, however much is due. `id = ANY(ARRAY(...))`
-- makes the delete itself a primary-key lookup of the rows picked (an `IN (SELECT ...)` may be
-- planned as a scan of the whole table hashed against them).

-- name: prune_jobs
-- Final jobs (their document links and webhook deliveries go with them); never a document.
DELETE FROM pdpj.jobs
WHERE id = ANY(ARRAY(SELECT id FROM pdpj.jobs
             WHERE status IN ('completed', 'failed', 'cancelled')
               AND completed_at < now() - make_interval(secs => $1)
             ORDER BY completed_at
             LIMIT $2));

-- name: prune_deliveries
-- Webhook messages no longer pending (delivered, failed, gone), with their attempts.
DELETE FROM pdpj.webhook_deliveries
WHERE id = ANY(ARRAY(SELECT id FROM pdpj.webhook_deliveries
             WHERE status <> 'pending' AND updated_at < now() - make_interval(secs => $1)
             ORDER BY updated_at
             LIMIT $2));

-- name: prune_attempts
DELETE FROM pdpj.webhook_attempts
WHERE id = ANY(ARRAY(SELECT id FROM pdpj.webhook_attempts
             WHERE attempted_at < now() - make_interval(secs => $1)
             ORDER BY attempted_at
             LIMIT $2));

-- name: prune_access_log
DELETE FROM pdpj.access_log
WHERE id = ANY(ARRAY(SELECT id FROM pdpj.access_log
             WHERE at < now() - make_interval(secs => $1)
             ORDER BY at
             LIMIT $2));

-- name: prune_batches
-- Completed batches with their items (the jobs are pruned on their own).
DELETE FROM pdpj.batches
WHERE id = ANY(ARRAY(SELECT id FROM pdpj.batches
             WHERE status = 'completed' AND completed_at < now() - make_interval(secs => $1)
             ORDER BY completed_at
             LIMIT $2));

-- name: prune_idempotency_keys
-- Records past their expiry (never replayed any more); by row address, the key is two columns.
DELETE FROM pdpj.idempotency_keys
WHERE ctid = ANY(ARRAY(SELECT ctid FROM pdpj.idempotency_keys
               WHERE expires_at < now() - make_interval(secs => $1)
               ORDER BY expires_at
               LIMIT $2));
