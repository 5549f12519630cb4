-- depends: 0010.retention
-- Watches: a key follows a process. The process is shared: whoever watches it, one refresh row
-- (pdpj.queue, kind 'refresh', ref = the 20 digits) serves every watcher at the shortest
-- interval any of them asked for. A watch names the number, not a process row: the process may
-- not be stored before its first fetch (and PDPJ may not know it: the watch then fails).

CREATE TABLE pdpj.watches (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    api_key_id        bigint NOT NULL REFERENCES pdpj.api_keys (id) ON DELETE CASCADE,
    number            text NOT NULL CHECK (number ~ '^[0-9]{20}$'),
    interval_s        integer NOT NULL CHECK (interval_s > 0),
    -- 'all', 'none', or 'types' (then download_types lists PDPJ's tipo.nome values).
    download          text NOT NULL CHECK (download IN ('all', 'none', 'types')),
    download_types    text[] NOT NULL DEFAULT '{}',
    webhook_url       text,
    status            text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'failed')),
    failure_reason    text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    last_refreshed_at timestamptz,
    last_event_at     timestamptz,
    CHECK ((status = 'failed') = (failure_reason IS NOT NULL))
) WITH (fillfactor = 85);

-- One watch per key and number; also the key's pages (by number) and its lookups.
CREATE UNIQUE INDEX watches_key_number ON pdpj.watches (api_key_id, number);
-- A refresh finds the watchers of its process.
CREATE INDEX watches_active_by_number ON pdpj.watches (number) WHERE status = 'active';
