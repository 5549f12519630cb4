-- depends: 0001.api-keys
-- The work table. Rows are deleted when their work is done; history lives in the domain tables.
-- A hot, update-heavy table: free room on each page so that new row versions stay on it, and
-- eager autovacuum so that dead versions left by claims and deletes do not pile up.

CREATE TABLE pdpj.queue (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             text NOT NULL,
    ref              text NOT NULL,
    payload          jsonb NOT NULL DEFAULT '{}',
    priority         smallint NOT NULL DEFAULT 0,
    run_at           timestamptz NOT NULL DEFAULT now(),
    -- Counts claims: the attempt under way (or last made); with lease_owner it fences stale writers.
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 8 CHECK (max_attempts > 0),
    lease_owner      text,
    lease_expires_at timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((lease_owner IS NULL) = (lease_expires_at IS NULL))
) WITH (
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- One row per piece of work: enqueueing a document already queued is a no-op.
CREATE UNIQUE INDEX queue_kind_ref ON pdpj.queue (kind, ref);
-- Free rows in claim order: the claim reads the head of this index and stops after n rows,
-- so it stays an index scan however many rows wait.
CREATE INDEX queue_claimable ON pdpj.queue (priority DESC, run_at, id) WHERE lease_owner IS NULL;
-- Leased rows by expiry: the rescue of expired leases reads only the head of this index (free
-- rows hold NULL and sort last). Not a partial index on purpose: with stale statistics a tiny
-- partial index looks like the cheapest way to find "lease_owner = $1" rows, and the guarded
-- batch writes would scan every leased row instead of looking ids up by primary key.
CREATE INDEX queue_leased ON pdpj.queue (lease_expires_at);
