-- The work table pdpj.queue. Every write of a leased row is guarded by (lease_owner, attempts):
-- a claim bumps attempts, so a worker whose lease expired and was taken over matches nothing.
-- Batch statements join unnest(ids, attempts) to the primary key: one index probe per id.

-- name: enqueue
-- One row; the NOTIFY is sent on commit, and only when a row was really inserted.
WITH ins AS (
    INSERT INTO pdpj.queue (kind, ref, payload, priority, run_at, max_attempts)
    VALUES ($1, $2, $3, $4, coalesce($5, now()), $6)
    ON CONFLICT (kind, ref) DO NOTHING
    RETURNING id
)
SELECT id, pg_notify('pdpj_queue', $1) FROM ins;

-- name: enqueue_many
WITH ins AS (
    INSERT INTO pdpj.queue (kind, ref, payload, priority, run_at, max_attempts)
    SELECT $1, t.ref, t.payload, $4, coalesce($5, now()), $6
    FROM unnest($2::text[], $3::jsonb[]) AS t(ref, payload)
    ON CONFLICT (kind, ref) DO NOTHING
    RETURNING 1
), counted AS (
    SELECT count(*) AS n FROM ins
)
SELECT n, CASE WHEN n > 0 THEN pg_notify('pdpj_queue', $1) END AS notified FROM counted;

-- name: claim
-- Expired leases first (their worker is gone), then due free rows in priority order, of the
-- kinds named ($4). Each kind's free rows are read from the head of its own slice of a partial
-- index (at most $1 rows each), then merged: the due rows of kinds not named, however many,
-- are never read. SKIP LOCKED lets concurrent claimers pass by.
WITH expired AS (
    SELECT id, true AS rescued
    FROM pdpj.queue
    WHERE lease_owner IS NOT NULL AND lease_expires_at < now() AND kind = ANY($4::text[])
    ORDER BY lease_expires_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), free AS (
    SELECT head.id, false AS rescued
    FROM unnest($4::text[]) AS k(kind)
    CROSS JOIN LATERAL (
        SELECT q.id, q.priority, q.run_at
        FROM pdpj.queue AS q
        WHERE q.kind = k.kind AND q.lease_owner IS NULL AND q.run_at <= now()
        ORDER BY q.priority DESC, q.run_at, q.id
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    ) AS head
    ORDER BY head.priority DESC, head.run_at, head.id
    LIMIT $1
), picked AS (
    (SELECT id, rescued FROM expired) UNION ALL (SELECT id, rescued FROM free) LIMIT $1
), claimed AS (
    UPDATE pdpj.queue AS q
    SET lease_owner = $2,
        lease_expires_at = now() + make_interval(secs => $3),
        attempts = q.attempts + 1
    FROM picked
    WHERE q.id = picked.id
    RETURNING q.id, q.kind, q.ref, q.payload, q.priority, q.attempts, q.max_attempts,
              q.last_error, picked.rescued, q.run_at
)
-- UPDATE returns rows in no particular order; handlers start in claim order.
SELECT id, kind, ref, payload, priority, attempts, max_attempts, last_error, rescued
FROM claimed
ORDER BY rescued DESC, priority DESC, run_at, id;

-- name: kinds
-- The kinds queued now, for a claim that names none: one descent of queue_kind_ref per kind
-- (a loose index scan), however many rows each kind holds.
WITH RECURSIVE k AS (
    (SELECT kind FROM pdpj.queue ORDER BY kind LIMIT 1)
    UNION ALL
    SELECT (SELECT q.kind FROM pdpj.queue AS q WHERE q.kind > k.kind ORDER BY q.kind LIMIT 1)
    FROM k
    WHERE k.kind IS NOT NULL
)
SELECT kind FROM k WHERE kind IS NOT NULL;

-- name: complete
DELETE FROM pdpj.queue
WHERE id = $1 AND lease_owner = $2 AND attempts = $3
RETURNING id;

-- name: complete_many
DELETE FROM pdpj.queue AS q
USING unnest($1::bigint[], $2::integer[]) AS t(id, attempts)
WHERE q.id = t.id AND q.attempts = t.attempts AND q.lease_owner = $3
RETURNING q.id;

-- name: complete_many_then
-- complete_many, and rows of kind $4 queued for the refs $5 (new ones only, as enqueue_many
-- with its defaults; $6: max_attempts, $7: priority) in the same statement: a handler's
-- follow-up work costs no round trip of its own. Queued only when every row was completed: a lost lease queues
-- nothing (its worker's caller rolls back or redoes the lot). Answers the ids deleted, and
-- reads `notified`, which, as a CTE nobody read, would never run.
WITH done AS (
    DELETE FROM pdpj.queue AS q
    USING unnest($1::bigint[], $2::integer[]) AS t(id, attempts)
    WHERE q.id = t.id AND q.attempts = t.attempts AND q.lease_owner = $3
    RETURNING q.id
), ins AS (
    INSERT INTO pdpj.queue (kind, ref, payload, priority, run_at, max_attempts)
    SELECT $4, r.ref, '{}'::jsonb, $7, now(), $6
    FROM unnest($5::text[]) AS r(ref)
    WHERE (SELECT count(*) FROM done) = cardinality($1::bigint[])
    ON CONFLICT (kind, ref) DO NOTHING
    RETURNING 1
), notified AS (
    SELECT pg_notify('pdpj_queue', $4) WHERE EXISTS (SELECT 1 FROM ins)
)
SELECT ARRAY(SELECT id FROM done) AS done, (SELECT count(*) FROM notified) AS notified;

-- name: heartbeat
UPDATE pdpj.queue AS q
SET lease_expires_at = now() + make_interval(secs => $4)
FROM unnest($1::bigint[], $2::integer[]) AS t(id, attempts)
WHERE q.id = t.id AND q.attempts = t.attempts AND q.lease_owner = $3
RETURNING q.id;

-- name: retry
-- Back to the free rows, due after the delay; the attempt stays counted.
UPDATE pdpj.queue
SET lease_owner = NULL, lease_expires_at = NULL, last_error = $4,
    run_at = now() + make_interval(secs => $5)
WHERE id = $1 AND lease_owner = $2 AND attempts = $3
RETURNING id;

-- name: release
-- Back to the free rows at once, the attempt not counted; other pools are woken.
WITH released AS (
    UPDATE pdpj.queue AS q
    SET lease_owner = NULL, lease_expires_at = NULL, attempts = q.attempts - 1
    FROM unnest($1::bigint[], $2::integer[]) AS t(id, attempts)
    WHERE q.id = t.id AND q.attempts = t.attempts AND q.lease_owner = $3
    RETURNING q.id, q.kind
), notified AS (
    SELECT count(*) AS n
    FROM (SELECT DISTINCT kind FROM released) AS k, LATERAL pg_notify('pdpj_queue', k.kind)
)
SELECT r.id FROM released AS r, notified;

-- name: defer
-- Back to the free rows, due after the delay, the attempt given back: the row was not at fault
-- (PDPJ was busy). Other pools learn of it when it comes due, by their poll or their own claim.
UPDATE pdpj.queue
SET lease_owner = NULL, lease_expires_at = NULL, attempts = attempts - 1, last_error = $4,
    run_at = now() + make_interval(secs => $5)
WHERE id = $1 AND lease_owner = $2 AND attempts = $3
RETURNING id;

-- name: cancel
DELETE FROM pdpj.queue
WHERE kind = $1 AND ref = ANY($2::text[])
RETURNING id, lease_owner;

-- name: notify_cancel
SELECT pg_notify('pdpj_queue_cancel', $1);

-- name: depth
SELECT kind, count(*) AS n FROM pdpj.queue GROUP BY kind;
