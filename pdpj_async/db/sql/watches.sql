-- Watches (pdpj.watches) and their refresh rows in pdpj.queue (kind 'refresh', ref = the digits).
-- Lock order: a process's refresh row first, then its watch rows. A refresh's own transaction
-- locks its row, then the process and its documents (as every transaction orders them), then the
-- watches; a PUT, a bulk add or a DELETE locks the row, then the watches.

-- name: schedule_refreshes
-- One refresh row per process. A row already there keeps the earlier due time: a new watch's
-- first fetch, or a shorter interval, brings it forward; nothing pushes it back. A leased row (a
-- refresh under way) is left alone: it schedules its successor when it ends. Sorted refs keep the
-- row locks of concurrent bulk calls in one order. `due` is the due time the handler measures
-- its lateness against.
WITH upserted AS (
    INSERT INTO pdpj.queue AS q (kind, ref, payload, priority, run_at, max_attempts)
    SELECT 'refresh', t.ref, jsonb_build_object('due', t.run_at), $3, t.run_at, $4
    FROM unnest($1::text[], $2::timestamptz[]) AS t(ref, run_at)
    ORDER BY t.ref
    ON CONFLICT (kind, ref) DO UPDATE
    SET run_at = EXCLUDED.run_at, payload = EXCLUDED.payload, priority = EXCLUDED.priority
    WHERE q.lease_owner IS NULL AND EXCLUDED.run_at < q.run_at
    RETURNING 1
), counted AS (
    SELECT count(*) AS n FROM upserted
)
SELECT n, CASE WHEN n > 0 THEN pg_notify('pdpj_queue', 'refresh') END AS notified FROM counted;

-- name: hold_refresh
-- First in a refresh's transaction: its own row, fenced by the lease, locked before the process
-- and the watches, as a change of watches locks it before them (no lock cycle with a PUT).
SELECT id FROM pdpj.queue
WHERE id = $1 AND lease_owner = $2 AND attempts = $3
FOR UPDATE;

-- name: reschedule_refresh
-- The refresh that just ran (fenced by its lease, as every write of a leased row) becomes the
-- next one: free again, attempts from zero, due at the next slot ($4). One statement where a
-- delete and an insert would be two; NULL when the lease was lost. A watch created while this
-- refresh ran (its schedule left the leased row alone) still gets its first fetch soon.
UPDATE pdpj.queue AS q
SET lease_owner = NULL, lease_expires_at = NULL, attempts = 0, last_error = NULL,
    run_at = d.due, payload = jsonb_build_object('due', d.due)
FROM (
    SELECT CASE WHEN EXISTS (
        SELECT 1 FROM pdpj.watches AS w
        WHERE w.number = $5 AND w.status = 'active' AND w.last_refreshed_at IS NULL
    ) THEN now() ELSE $4::timestamptz END AS due
) AS d
WHERE q.id = $1 AND q.lease_owner = $2 AND q.attempts = $3
RETURNING q.id;

-- name: lock_refreshes
-- Taken before any change to a process's watches: with it, "does anyone still watch it?" and
-- the refresh row's removal cannot interleave with a new watch's schedule.
SELECT ref FROM pdpj.queue
WHERE kind = 'refresh' AND ref = ANY($1::text[])
ORDER BY ref
FOR UPDATE;

-- name: unwatched
-- Of these numbers, those no active watch follows any more.
SELECT n.number
FROM unnest($1::text[]) AS n(number)
WHERE NOT EXISTS (
    SELECT 1 FROM pdpj.watches AS w WHERE w.number = n.number AND w.status = 'active'
);

-- name: shortest_interval
SELECT min(interval_s) FROM pdpj.watches WHERE number = $1 AND status = 'active';

-- name: put_watch
INSERT INTO pdpj.watches AS w (api_key_id, number, interval_s, download, download_types, webhook_url)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (api_key_id, number) DO UPDATE
SET interval_s = EXCLUDED.interval_s,
    download = EXCLUDED.download,
    download_types = EXCLUDED.download_types,
    webhook_url = EXCLUDED.webhook_url,
    status = 'active',
    failure_reason = NULL,
    updated_at = now()
RETURNING (xmax = 0) AS created, (SELECT w2.status FROM pdpj.watches AS w2 WHERE w2.id = w.id) AS old_status;

-- name: insert_watches
-- Bulk: new watches only; a number the key already watches is a duplicate, left as it is.
INSERT INTO pdpj.watches (api_key_id, number, interval_s, download, download_types, webhook_url)
SELECT $1, n.number, $3, $4, $5, $6
FROM unnest($2::text[]) AS n(number)
ORDER BY n.number
ON CONFLICT (api_key_id, number) DO NOTHING
RETURNING number;

-- name: get_watch
SELECT w.*, q.run_at AS next_refresh_at
FROM pdpj.watches AS w
LEFT JOIN pdpj.queue AS q ON q.kind = 'refresh' AND q.ref = w.number AND w.status = 'active'
WHERE w.api_key_id = $1 AND w.number = $2;

-- name: list_watches
-- A key's watches by number, after the cursor's number, optionally of one status.
SELECT w.*, q.run_at AS next_refresh_at
FROM pdpj.watches AS w
LEFT JOIN pdpj.queue AS q ON q.kind = 'refresh' AND q.ref = w.number AND w.status = 'active'
WHERE w.api_key_id = $1
  AND ($2::text IS NULL OR w.status = $2)
  AND ($3::text IS NULL OR w.number > $3)
ORDER BY w.number
LIMIT $4;

-- name: list_all_watches
-- Operators: every key's watches, optionally one key's, by (key, number).
SELECT w.*, q.run_at AS next_refresh_at
FROM pdpj.watches AS w
LEFT JOIN pdpj.queue AS q ON q.kind = 'refresh' AND q.ref = w.number AND w.status = 'active'
WHERE ($1::bigint IS NULL OR w.api_key_id = $1)
  AND ($2::text IS NULL OR w.status = $2)
ORDER BY w.api_key_id, w.number
LIMIT $3;

-- name: delete_watch
DELETE FROM pdpj.watches WHERE api_key_id = $1 AND number = $2 RETURNING id;

-- name: watchers
-- The active watches of a process with what their keys may see (revoked keys watch nothing),
-- stamped refreshed; each key that may see the process ($3: its sigilo level) gets access.
WITH watching AS (
    UPDATE pdpj.watches AS w
    SET last_refreshed_at = now()
    FROM pdpj.api_keys AS k
    WHERE k.id = w.api_key_id AND w.number = $1 AND w.status = 'active' AND k.revoked_at IS NULL
    RETURNING w.id, w.api_key_id, w.interval_s, w.download, w.download_types, w.webhook_url,
              k.role, k.name, k.can_read_sigiloso
), granted AS (
    INSERT INTO pdpj.process_access (api_key_id, process_id)
    SELECT api_key_id, $2 FROM watching
    WHERE $3 = 0 OR role = 'admin' OR can_read_sigiloso
    ON CONFLICT DO NOTHING
)
SELECT * FROM watching ORDER BY id;

-- name: watchers_of
-- The active watches of a process (no stamp, no grant: the process is gone from PDPJ).
SELECT w.id, w.api_key_id, w.interval_s, w.download, w.download_types, w.webhook_url,
       k.role, k.name, k.can_read_sigiloso
FROM pdpj.watches AS w
JOIN pdpj.api_keys AS k ON k.id = w.api_key_id
WHERE w.number = $1 AND w.status = 'active' AND k.revoked_at IS NULL
ORDER BY w.id;

-- name: fail_watches
UPDATE pdpj.watches
SET status = 'failed', failure_reason = $2, updated_at = now()
WHERE id = ANY($1::bigint[]) AND status = 'active'
RETURNING id;

-- name: set_event_sent
UPDATE pdpj.watches SET last_event_at = now() WHERE id = ANY($1::bigint[]);

-- name: watch_by_id
SELECT w.id, w.api_key_id, w.number, w.webhook_url, w.status
FROM pdpj.watches AS w
JOIN pdpj.api_keys AS k ON k.id = w.api_key_id
WHERE w.id = $1 AND k.revoked_at IS NULL;

-- name: process_documents
-- What a refresh decides downloads from, and what an event lists of each new document. Locked
-- (in id order, after the process: the lock order of every transaction) so that a worker
-- cannot finish one between the decision and the enqueue.
SELECT id, uuid, name, type_name, status, size, sha256, error_message,
       href IS NOT NULL AS downloadable, pdpj.is_sealed(sigilo) AS sealed
FROM pdpj.documents
WHERE process_id = $1
ORDER BY id
FOR NO KEY UPDATE;

-- name: documents_by_id
SELECT id, uuid, name, type_name, status, size, sha256, error_message,
       href IS NOT NULL AS downloadable, pdpj.is_sealed(sigilo) AS sealed
FROM pdpj.documents
WHERE id = ANY($1::bigint[])
ORDER BY id;

-- name: grant_stored
-- A key that watches a stored process may see it (access.grant, for many numbers at once);
-- a sealed one only with the sealed permission ($3).
INSERT INTO pdpj.process_access (api_key_id, process_id)
SELECT $1, p.id
FROM pdpj.processes AS p
WHERE p.number = ANY($2::text[]) AND (p.sigilo_level = 0 OR $3)
ON CONFLICT DO NOTHING;

-- name: refresh_now
-- Operators (and tests): the refresh rows of these numbers, or of all when NULL, due now.
WITH due AS (
    UPDATE pdpj.queue
    SET run_at = now(), payload = jsonb_build_object('due', now())
    WHERE kind = 'refresh' AND lease_owner IS NULL AND ($1::text[] IS NULL OR ref = ANY($1))
    RETURNING 1
), counted AS (
    SELECT count(*) AS n FROM due
)
SELECT n, CASE WHEN n > 0 THEN pg_notify('pdpj_queue', 'refresh') END AS notified FROM counted;

-- name: active_key
-- The CLI imports watches for a key named by id.
SELECT id, name, role, can_read_sigiloso FROM pdpj.api_keys WHERE id = $1 AND revoked_at IS NULL;
