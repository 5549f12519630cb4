-- Idempotency-Key records: (key id, Idempotency-Key) → the request's fingerprint and its answer.

-- name: reserve
-- The first request with a key takes it; so does one after the record expired, or the same
-- request again after the one in flight was lost (its daemon died: the lease ran out).
INSERT INTO pdpj.idempotency_keys AS k (api_key_id, key, fingerprint, lease_expires_at,
                                        expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4), now() + make_interval(secs => $5))
ON CONFLICT (api_key_id, key) DO UPDATE
SET fingerprint = excluded.fingerprint, status = NULL, content_type = NULL, body = NULL,
    created_at = now(), lease_expires_at = excluded.lease_expires_at,
    expires_at = excluded.expires_at
WHERE k.expires_at < now()
   OR (k.status IS NULL AND k.lease_expires_at < now() AND k.fingerprint = excluded.fingerprint)
RETURNING true AS reserved;

-- name: find
SELECT fingerprint, status, content_type, body,
       extract(epoch FROM lease_expires_at - now())::float8 AS lease_left_s
FROM pdpj.idempotency_keys
WHERE api_key_id = $1 AND key = $2 AND expires_at >= now();

-- name: store
UPDATE pdpj.idempotency_keys
SET status = $4, content_type = $5, body = $6
WHERE api_key_id = $1 AND key = $2 AND fingerprint = $3 AND status IS NULL;

-- name: release
-- The request did not succeed: the key is free for a retry.
DELETE FROM pdpj.idempotency_keys
WHERE api_key_id = $1 AND key = $2 AND fingerprint = $3 AND status IS NULL;
