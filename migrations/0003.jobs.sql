-- depends: 0002.processes-documents
-- Jobs: one client's request for the documents of one process. Documents are shared between jobs.

CREATE TABLE pdpj.jobs (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    process_id          bigint NOT NULL REFERENCES pdpj.processes (id) ON DELETE CASCADE,
    api_key_id          bigint NOT NULL REFERENCES pdpj.api_keys (id),
    webhook_url         text,
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')),
    total_documents     integer NOT NULL DEFAULT 0,
    completed_documents integer NOT NULL DEFAULT 0,
    failed_documents    integer NOT NULL DEFAULT 0,
    progress_percentage double precision NOT NULL DEFAULT 0,
    error               text,
    metadata            jsonb NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    completed_at        timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- The idempotency rule: one active job per process and client key. Two clients asking for one
-- process each get their own job (and webhook); the documents themselves are shared.
CREATE UNIQUE INDEX jobs_one_active_per_process_and_key
    ON pdpj.jobs (process_id, api_key_id)
    WHERE status IN ('pending', 'processing');

CREATE INDEX jobs_by_key ON pdpj.jobs (api_key_id, created_at DESC, id DESC);
CREATE INDEX jobs_by_process ON pdpj.jobs (process_id, created_at DESC, id DESC);
CREATE INDEX jobs_by_created ON pdpj.jobs (created_at DESC, id DESC);

-- Which documents a job waits on; fixed when the job is created (or extended while active).
CREATE TABLE pdpj.job_documents (
    job_id      uuid NOT NULL REFERENCES pdpj.jobs (id) ON DELETE CASCADE,
    document_id bigint NOT NULL REFERENCES pdpj.documents (id) ON DELETE CASCADE,
    PRIMARY KEY (job_id, document_id)
);

CREATE INDEX job_documents_by_document ON pdpj.job_documents (document_id);
