-- depends: 0006.job-views
-- Per-key visibility: a key sees a process once it has requested it (or watches it); sealed
-- material only with an explicit permission; every read of a process is in the access log.

ALTER TABLE pdpj.api_keys ADD COLUMN can_read_sigiloso boolean NOT NULL DEFAULT false;

CREATE TABLE pdpj.process_access (
    api_key_id  bigint NOT NULL REFERENCES pdpj.api_keys (id),
    process_id  bigint NOT NULL REFERENCES pdpj.processes (id) ON DELETE CASCADE,
    granted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (api_key_id, process_id)
);
CREATE INDEX process_access_by_process ON pdpj.process_access (process_id);

-- Keys that already had a job for a process requested it: they keep seeing it.
INSERT INTO pdpj.process_access (api_key_id, process_id, granted_at)
SELECT api_key_id, process_id, min(created_at) FROM pdpj.jobs GROUP BY api_key_id, process_id;

-- Who requested, read the status of, or got a link to what, and when. Append-only; pruned by
-- age (config `access_log.retention_days`).
CREATE TABLE pdpj.access_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    api_key_id     bigint NOT NULL,
    action         text NOT NULL,
    process_id     bigint,
    document_uuid  text
);
CREATE INDEX access_log_by_time ON pdpj.access_log (at);
CREATE INDEX access_log_by_process ON pdpj.access_log (process_id, at);
CREATE INDEX access_log_by_key ON pdpj.access_log (api_key_id, at);

-- A document is sealed when PDPJ's level (a string: PUBLICO, SIGILOSO, ...) is anything but
-- PUBLICO; the one definition every query uses.
CREATE FUNCTION pdpj.is_sealed(sigilo text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce(upper(btrim(sigilo)) NOT IN ('', 'PUBLICO'), false);

-- A document PDPJ lists without a usable hrefBinario is kept (failed, with its reason).
ALTER TABLE pdpj.documents ALTER COLUMN href DROP NOT NULL;
