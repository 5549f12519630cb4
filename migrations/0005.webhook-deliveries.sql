-- depends: 0003.jobs
-- The webhook outbox: one row per message (its id is the webhook-id header), every attempt logged.
-- A row is due when next_attempt_at has passed; claiming it pushes next_attempt_at past the lease,
-- so a sender that dies mid-attempt leaves it due again once the lease runs out.

CREATE TABLE pdpj.webhook_deliveries (
    id               text PRIMARY KEY,
    job_id           uuid REFERENCES pdpj.jobs (id) ON DELETE CASCADE,
    api_key_id       bigint NOT NULL REFERENCES pdpj.api_keys (id),
    url              text NOT NULL,
    event_type       text NOT NULL,
    payload          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed', 'gone')),
    -- Every attempt ever made, and those of the current round (a redelivery starts a new round).
    attempts         integer NOT NULL DEFAULT 0,
    round_attempts   integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
) WITH (fillfactor = 80);

CREATE INDEX webhook_deliveries_due ON pdpj.webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_job ON pdpj.webhook_deliveries (job_id, created_at);

CREATE TABLE pdpj.webhook_attempts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id   text NOT NULL REFERENCES pdpj.webhook_deliveries (id) ON DELETE CASCADE,
    attempt       integer NOT NULL,
    attempted_at  timestamptz NOT NULL DEFAULT now(),
    status_code   integer,
    latency_ms    double precision,
    outcome       text NOT NULL
                  CHECK (outcome IN ('delivered', 'gone', 'retry', 'failed', 'stale')),
    error         text,
    response_body text
);

CREATE INDEX webhook_attempts_by_delivery ON pdpj.webhook_attempts (delivery_id, attempt);
