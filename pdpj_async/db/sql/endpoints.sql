-- Standing webhook endpoints: a key's receivers of the events it subscribes to.

-- name: insert_endpoint
-- At most $6 endpoints per key (each event is sent to every subscribed one).
INSERT INTO pdpj.webhook_endpoints (api_key_id, url, event_types, description, secret)
SELECT $1, $2, $3, $4, $5
WHERE (SELECT count(*) FROM pdpj.webhook_endpoints WHERE api_key_id = $1) < $6
RETURNING id, url, event_types, description, created_at, updated_at, secret_rotated_at;

-- name: list_endpoints
SELECT id, url, event_types, description, created_at, updated_at, secret_rotated_at
FROM pdpj.webhook_endpoints
WHERE api_key_id = $1
ORDER BY created_at, id;

-- name: get_endpoint
SELECT id, url, event_types, description, created_at, updated_at, secret_rotated_at
FROM pdpj.webhook_endpoints
WHERE api_key_id = $1 AND id = $2;

-- name: delete_endpoint
DELETE FROM pdpj.webhook_endpoints
WHERE api_key_id = $1 AND id = $2
RETURNING id;

-- name: rotate_endpoint_secret
-- The old secret keeps signing (beside the new one) for webhooks.secret_overlap_s.
UPDATE pdpj.webhook_endpoints
SET previous_secret = secret, secret = $3, secret_rotated_at = now(), updated_at = now()
WHERE api_key_id = $1 AND id = $2
RETURNING id, url, event_types, description, created_at, updated_at, secret_rotated_at;

-- name: subscribed_endpoints
-- The key's endpoints that take events of type $2 (an empty list of types takes every type).
SELECT id, url
FROM pdpj.webhook_endpoints
WHERE api_key_id = $1 AND (event_types = '{}' OR $2 = ANY(event_types))
ORDER BY created_at, id;

-- name: endpoint_secrets
SELECT secret, previous_secret,
       extract(epoch FROM now() - secret_rotated_at)::float8 AS rotated_s_ago
FROM pdpj.webhook_endpoints
WHERE api_key_id = $1 AND id = $2;

-- name: delivery_endpoint_secrets
-- The endpoint secrets of one message, by its webhook-id (the built-in test receiver's check).
SELECT d.api_key_id, e.secret, e.previous_secret,
       extract(epoch FROM now() - e.secret_rotated_at)::float8 AS rotated_s_ago
FROM pdpj.webhook_deliveries d
JOIN pdpj.webhook_endpoints e ON e.id = d.endpoint_id
WHERE d.id = $1;
