-- name: insert_delivery
INSERT INTO pdpj.webhook_deliveries (id, job_id, api_key_id, url, event_type, payload,
                                     endpoint_id)
VALUES ($1, $2, $3, $4, $5, $6, $7);

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
       d.status, d.error_message, d.text_status
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
    SELECT id, endpoint_id
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
FROM picked LEFT JOIN pdpj.webhook_endpoints e ON e.id = picked.endpoint_id, pdpj.api_keys k
WHERE d.id = picked.id AND k.id = d.api_key_id
-- The payload comes as JSON text: sent as it is unless a hook rewrites it. A message to a
-- standing endpoint is signed with the endpoint's secrets, any other with its key's.
RETURNING d.id, d.job_id, d.url, d.event_type, d.payload::text AS body, d.attempts,
          d.round_attempts,
          CASE WHEN e.id IS NULL THEN k.webhook_secret ELSE e.secret END AS webhook_secret,
          CASE WHEN e.id IS NULL THEN k.previous_webhook_secret
               ELSE e.previous_secret END AS previous_webhook_secret,
          extract(epoch FROM now() - CASE WHEN e.id IS NULL THEN k.secret_rotated_at
                                          ELSE e.secret_rotated_at END)::float8 AS rotated_s_ago;

-- name: finish_attempts
-- Record a batch of attempts and move their deliveries on, in one statement. Each update is
-- guarded by its own lease: a redelivery or a takeover since the claim makes it a no-op and that
-- attempt 'stale'. RETURNING reads the batch's lease_owner, the row's own is already cleared.
-- The batch comes as one jsonb array of objects: cheaper to send than ten parallel arrays.
WITH result AS (
    SELECT *
    FROM jsonb_to_recordset($1::jsonb)
         AS r(id text, lease_owner text, status text, delay_s float8, status_code int, error text,
              attempt int, latency_ms float8, outcome text, response_body text)
),
finished AS (
    UPDATE pdpj.webhook_deliveries d
    SET status = r.status,
        next_attempt_at = CASE WHEN r.status = 'pending'
                               THEN now() + make_interval(secs => r.delay_s)
                               ELSE d.next_attempt_at END,
        lease_owner = NULL, lease_expires_at = NULL,
        last_status_code = r.status_code, last_error = r.error, updated_at = now(),
        delivered_at = CASE WHEN r.status = 'delivered' THEN now() ELSE d.delivered_at END
    FROM result r
    WHERE d.id = r.id AND d.lease_owner = r.lease_owner
    RETURNING d.id, r.lease_owner
),
recorded AS (
    INSERT INTO pdpj.webhook_attempts (delivery_id, attempt, status_code, latency_ms, outcome,
                                       error, response_body)
    SELECT r.id, r.attempt, r.status_code, r.latency_ms,
           CASE WHEN f.id IS NULL THEN 'stale' ELSE r.outcome END, r.error, r.response_body
    FROM result r
    LEFT JOIN finished f ON f.id = r.id AND f.lease_owner = r.lease_owner
    RETURNING delivery_id, attempt, outcome
)
-- Only the exceptions come back: every other attempt was recorded with the outcome it was given.
SELECT delivery_id, attempt FROM recorded WHERE outcome = 'stale';

-- name: release_lease
-- Shutdown: hand an attempt cut short back at once instead of waiting out the lease. It may have
-- reached the receiver, so it keeps its number.
UPDATE pdpj.webhook_deliveries
SET lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = now(), updated_at = now()
WHERE id = $1 AND lease_owner = $2;

-- name: release_unsent
-- Shutdown: hand back deliveries claimed ahead but never sent, undoing the claim's count.
UPDATE pdpj.webhook_deliveries d
SET lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = now(), updated_at = now(),
    attempts = d.attempts - 1, round_attempts = d.round_attempts - 1
FROM unnest($1::text[], $2::text[]) AS r(id, lease_owner)
WHERE d.id = r.id AND d.lease_owner = r.lease_owner;

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
