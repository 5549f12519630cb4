-- depends: 0003.jobs
-- The webhook outbox: one row per message (its id is the webhook-id header), attempts logged.

CREATE TABLE pdpj.webhook_deliveries (
    id               text PRIMARY KEY,
    job_id           uuid REFERENCES pdpj.jobs (id) ON DELETE CASCADE,
    api_key_id       bigint NOT NULL REFERENCES pdpj.api_keys (id),
    url              text NOT NULL,
    event_type       text NOT NULL,
    payload          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed', 'gone')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
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
    error         text,
    response_body text
);

CREATE INDEX webhook_attempts_by_delivery ON pdpj.webhook_attempts (delivery_id, attempt);
