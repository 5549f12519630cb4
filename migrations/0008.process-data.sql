-- depends: 0007.access
-- The process itself, typed: the last snapshot of its data (for the diff of the next refresh),
-- its movements with a stable identity, and one change row per refresh that found news.

-- The typed data of the last refresh (pdpj_async.process_data.ProcessData as JSON, movements
-- excluded: they have their own table). The next refresh is diffed against it.
CREATE TABLE pdpj.process_snapshots (
    process_id   bigint PRIMARY KEY REFERENCES pdpj.processes (id) ON DELETE CASCADE,
    data         jsonb NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);

-- Movements of every instance, deduplicated by their identity (see process_data.identity: PDPJ
-- gives movements no id, so the id is a fingerprint of when and what).
CREATE TABLE pdpj.process_movements (
    process_id     bigint NOT NULL REFERENCES pdpj.processes (id) ON DELETE CASCADE,
    id             text NOT NULL,
    data_hora      timestamptz,
    descricao      text,
    instances      text[] NOT NULL DEFAULT '{}',
    raw            jsonb NOT NULL,
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    -- Movements without a date sort last (oldest) in the newest-first pages.
    sort_at        timestamptz GENERATED ALWAYS AS (coalesce(data_hora, '-infinity')) STORED,
    PRIMARY KEY (process_id, id)
);
CREATE INDEX process_movements_page ON pdpj.process_movements (process_id, sort_at DESC, id DESC);

-- One row per refresh that found something new or changed; a refresh with nothing new adds none.
CREATE TABLE pdpj.process_changes (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    process_id      bigint NOT NULL REFERENCES pdpj.processes (id) ON DELETE CASCADE,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    new_movements   jsonb NOT NULL,
    new_documents   jsonb NOT NULL,
    changed_fields  jsonb NOT NULL
);
CREATE INDEX process_changes_by_process ON pdpj.process_changes (process_id, id);
