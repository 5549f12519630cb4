-- name: insert_delivery
INSERT INTO pdpj.webhook_deliveries (id, job_id, api_key_id, url, event_type, payload)
VALUES ($1, $2, $3, $4, $5, $6);

-- name: notify
SELECT pg_notify('pdpj_webhooks', $1);

-- name: job_for_payload
SELECT j.id, j.status, j.api_key_id, j.webhook_url, j.total_documents, j.completed_documents,
       j.failed_documents, j.completed_at, p.number AS process_number
FROM pdpj.jobs j
JOIN pdpj.processes p ON p.id = j.process_id
WHERE j.id = $1;

-- name: job_documents_for_payload
-- One more than the cap, to know whether the list was cut.
SELECT d.id, d.uuid, d.name, d.type_name, coalesce(d.size, d.declared_size) AS size, d.sha256,
       d.status, d.error_message
FROM pdpj.job_documents jd
JOIN pdpj.documents d ON d.id = jd.document_id
WHERE jd.job_id = $1
ORDER BY d.sequence NULLS LAST, d.id
LIMIT $2;

-- name: redeliver
-- A new round on the schedule; clearing the lease makes an attempt still in flight a stale one.
UPDATE pdpj.webhook_deliveries
SET status = 'pending', round_attempts = 0, next_attempt_at = now(),
    lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
WHERE id = $1 AND ($2::bigint IS NULL OR api_key_id = $2)
RETURNING id;

-- name: deliveries_for_job
SELECT id, job_id, event_type, url, status, attempts, next_attempt_at, last_status_code,
       last_error, created_at, delivered_at
FROM pdpj.webhook_deliveries
WHERE job_id = $1
ORDER BY created_at, id;

-- name: get_delivery
SELECT id, job_id, event_type, url, status, attempts, next_attempt_at, last_status_code,
       last_error, created_at, delivered_at
FROM pdpj.webhook_deliveries
WHERE id = $1 AND ($2::bigint IS NULL OR api_key_id = $2);

-- name: attempts_for_deliveries
SELECT delivery_id, attempt, attempted_at, status_code, latency_ms, outcome, error, response_body
FROM pdpj.webhook_attempts
WHERE delivery_id = ANY($1::text[])
ORDER BY delivery_id, attempt, id;

-- name: claim_deliveries
-- Pick due rows no other sender holds, then take them: pushing next_attempt_at past the lease
-- hides them from every other claim until this attempt is recorded or the lease runs out.
WITH picked AS (
    SELECT id
    FROM pdpj.webhook_deliveries
    WHERE status = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE pdpj.webhook_deliveries d
SET lease_owner = $1,
    lease_expires_at = now() + make_interval(secs => $3),
    next_attempt_at = now() + make_interval(secs => $3),
    attempts = d.attempts + 1,
    round_attempts = d.round_attempts + 1,
    updated_at = now()
FROM picked, pdpj.api_keys k
WHERE d.id = picked.id AND k.id = d.api_key_id
RETURNING d.id, d.job_id, d.url, d.event_type, d.payload, d.attempts, d.round_attempts,
          k.webhook_secret, k.previous_webhook_secret,
          extract(epoch FROM now() - k.secret_rotated_at)::float8 AS rotated_s_ago;

-- name: finish_attempt
-- Record the attempt and move the delivery on, in one statement. The update is guarded by the
-- lease: a redelivery or a takeover since the claim makes it a no-op and the attempt 'stale'.
WITH finished AS (
    UPDATE pdpj.webhook_deliveries
    SET status = $3,
        next_attempt_at = CASE WHEN $3 = 'pending' THEN now() + make_interval(secs => $4)
                               ELSE next_attempt_at END,
        lease_owner = NULL, lease_expires_at = NULL,
        last_status_code = $5, last_error = $6, updated_at = now(),
        delivered_at = CASE WHEN $3 = 'delivered' THEN now() ELSE delivered_at END
    WHERE id = $1 AND lease_owner = $2
    RETURNING id
)
INSERT INTO pdpj.webhook_attempts (delivery_id, attempt, status_code, latency_ms, outcome,
                                   error, response_body)
SELECT $1, $7, $5, $8,
       CASE WHEN EXISTS (SELECT 1 FROM finished) THEN $9::text ELSE 'stale' END, $6, $10
RETURNING outcome;

-- name: release_lease
-- Shutdown: hand unfinished attempts back at once instead of waiting out the lease.
UPDATE pdpj.webhook_deliveries
SET lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = now(), updated_at = now()
WHERE id = $1 AND lease_owner = $2;

-- name: seconds_to_next_due
SELECT extract(epoch FROM min(next_attempt_at) - now())::float8
FROM pdpj.webhook_deliveries
WHERE status = 'pending';

-- name: active_secrets
-- The built-in test receiver tries these to find who signed a message.
SELECT id, webhook_secret, previous_webhook_secret
FROM pdpj.api_keys
WHERE revoked_at IS NULL
ORDER BY id
LIMIT 1000;

-- name: key_secrets
SELECT webhook_secret, previous_webhook_secret,
       extract(epoch FROM now() - secret_rotated_at)::float8 AS rotated_s_ago
FROM pdpj.api_keys
WHERE id = $1;
