-- The shared pacing of PDPJ (migrations/0011.pacing.sql): a controller state per origin and token
-- fingerprint, and the daemons' heartbeats that divide its rate between them.

-- name: create_state
INSERT INTO pdpj.pacing (origin, token_fp, mode, estimate, epoch)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (origin, token_fp) DO NOTHING;

-- name: add_accepted
-- No event to merge: count what was accepted and read the state others may have changed.
UPDATE pdpj.pacing
SET accepted = accepted + $3, updated_at = now()
WHERE origin = $1 AND token_fp = $2
RETURNING mode, estimate, epoch, paused_until, event_at, accepted_at_event, accepted;

-- name: lock_state
SELECT mode, estimate, epoch, paused_until, event_at, accepted_at_event, accepted
FROM pdpj.pacing
WHERE origin = $1 AND token_fp = $2
FOR UPDATE;

-- name: save_state
UPDATE pdpj.pacing
SET mode = $3, estimate = $4, epoch = $5, paused_until = $6, event_at = $7,
    accepted_at_event = $8, accepted = accepted + $9, updated_at = now()
WHERE origin = $1 AND token_fp = $2
RETURNING accepted;

-- name: heartbeat
-- This daemon's heartbeat, and how many others had demand within the liveness window (a
-- data-modifying CTE runs whether read or not; the count sees the table before it).
WITH beat AS (
    INSERT INTO pdpj.pacing_shares (origin, token_fp, instance, demand)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (origin, token_fp, instance) DO UPDATE SET demand = $4, seen_at = now()
)
SELECT count(*) FILTER (WHERE s.demand > 0) AS busy_others
FROM pdpj.pacing_shares AS s
WHERE s.origin = $1 AND s.token_fp = $2 AND s.instance <> $3
  AND s.seen_at > now() - make_interval(secs => $5);

-- name: leave
DELETE FROM pdpj.pacing_shares WHERE origin = $1 AND token_fp = $2 AND instance = $3;

-- name: prune
-- Daemons gone without leaving (kill -9): their heartbeats go after a while.
DELETE FROM pdpj.pacing_shares WHERE seen_at < now() - make_interval(secs => $1);
