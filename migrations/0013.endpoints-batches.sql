-- depends: 0010.retention
-- Standing webhook endpoints, bulk batches, and the Idempotency-Key records of POST requests.

-- A key's standing receivers: every event of a type it subscribes to (none listed: all) goes to
-- each, signed with the endpoint's own secret (the previous one too during a rotation's overlap).
CREATE TABLE pdpj.webhook_endpoints (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    api_key_id        bigint NOT NULL REFERENCES pdpj.api_keys (id) ON DELETE CASCADE,
    url               text NOT NULL,
    event_types       text[] NOT NULL DEFAULT '{}',
    description       text NOT NULL DEFAULT '',
    secret            text NOT NULL,
    previous_secret   text,
    secret_rotated_at timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_endpoints_by_key ON pdpj.webhook_endpoints (api_key_id, created_at, id);

-- A message to an endpoint is signed with the endpoint's secret; deleting the endpoint drops
-- its messages (a pending one has nowhere to go and nothing to be signed with).
ALTER TABLE pdpj.webhook_deliveries
    ADD COLUMN endpoint_id uuid REFERENCES pdpj.webhook_endpoints (id) ON DELETE CASCADE;
CREATE INDEX webhook_deliveries_by_endpoint ON pdpj.webhook_deliveries (endpoint_id)
    WHERE endpoint_id IS NOT NULL;

-- A bulk request: one item per accepted number. Each item is resolved by a queue row running the
-- single request's path (fetch, store, the caller's job); it is open until it failed, needed no
-- job, or its job is final. `open_items` reaching 0 completes the batch, once (a guarded update
-- in the transaction that closes the last item).
CREATE TABLE pdpj.batches (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    api_key_id   bigint NOT NULL REFERENCES pdpj.api_keys (id) ON DELETE CASCADE,
    webhook_url  text,
    options      jsonb NOT NULL DEFAULT '{}',
    status       text NOT NULL DEFAULT 'processing'
                 CHECK (status IN ('processing', 'completed')),
    total_items  integer NOT NULL,
    open_items   integer NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
) WITH (fillfactor = 80);

CREATE INDEX batches_by_key ON pdpj.batches (api_key_id, created_at DESC, id DESC);
CREATE INDEX batches_final_by_completion ON pdpj.batches (completed_at)
    WHERE status = 'completed';

CREATE TABLE pdpj.batch_items (
    batch_id   uuid NOT NULL REFERENCES pdpj.batches (id) ON DELETE CASCADE,
    line       integer NOT NULL,
    number     text NOT NULL,
    -- queued: waiting for its request; waiting: its job is active; done: final (see job_id and
    -- error: a job, no job needed, or a failure such as a process PDPJ does not know).
    state      text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'waiting', 'done')),
    job_id     uuid REFERENCES pdpj.jobs (id) ON DELETE SET NULL,
    error      text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, line)
) WITH (fillfactor = 80);

CREATE INDEX batch_items_waiting_on_job ON pdpj.batch_items (job_id) WHERE state = 'waiting';

-- Idempotency-Key: the first request with a key reserves it (status NULL: in flight, held until
-- lease_expires_at); its 2xx answer is kept until expires_at and replayed to the same request.
CREATE TABLE pdpj.idempotency_keys (
    api_key_id       bigint NOT NULL REFERENCES pdpj.api_keys (id) ON DELETE CASCADE,
    key              text NOT NULL,
    fingerprint      bytea NOT NULL,
    status           integer,
    content_type     text,
    body             bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    lease_expires_at timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (api_key_id, key)
);

CREATE INDEX idempotency_keys_by_expiry ON pdpj.idempotency_keys (expires_at);
