-- name: insert_key
INSERT INTO pdpj.api_keys (name, role, key_prefix, key_hash, webhook_secret,
                           rate_limit_per_s, rate_limit_burst, can_read_sigiloso)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING id, name, role, key_prefix, created_at, revoked_at, rate_limit_per_s, rate_limit_burst,
          can_read_sigiloso;

-- name: find_by_prefix
SELECT id, name, role, key_hash, webhook_secret, previous_webhook_secret, secret_rotated_at,
       rate_limit_per_s, rate_limit_burst, revoked_at, can_read_sigiloso
FROM pdpj.api_keys
WHERE key_prefix = $1;

-- name: list_keys
SELECT id, name, role, key_prefix, created_at, revoked_at, rate_limit_per_s, rate_limit_burst,
       can_read_sigiloso
FROM pdpj.api_keys
ORDER BY id;

-- name: get_key
SELECT id, name, role, key_prefix, created_at, revoked_at, rate_limit_per_s, rate_limit_burst,
       can_read_sigiloso
FROM pdpj.api_keys
WHERE id = $1;

-- name: lock_active_admins
-- Every active admin key, in id order: two admins revoking each other at once cannot both
-- pass the last-admin check.
SELECT id FROM pdpj.api_keys WHERE role = 'admin' AND revoked_at IS NULL ORDER BY id FOR UPDATE;

-- name: revoke_key
UPDATE pdpj.api_keys SET revoked_at = now()
WHERE id = $1 AND revoked_at IS NULL
RETURNING id;

-- name: rotate_secret
UPDATE pdpj.api_keys
SET previous_webhook_secret = webhook_secret, webhook_secret = $2, secret_rotated_at = now()
WHERE id = $1 AND revoked_at IS NULL
RETURNING id;
