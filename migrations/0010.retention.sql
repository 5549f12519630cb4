-- depends: 0007.access
-- Retention: what is pruned by age is found through an index on that age, so that a prune costs
-- the rows it removes, not the size of the table. Documents and their objects are never pruned.

CREATE INDEX jobs_final_by_completion ON pdpj.jobs (completed_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
CREATE INDEX webhook_deliveries_final_by_update ON pdpj.webhook_deliveries (updated_at)
    WHERE status <> 'pending';
CREATE INDEX webhook_attempts_by_time ON pdpj.webhook_attempts (attempted_at);

-- Tables whose rows are updated in place (status, counters, leases): room on each page keeps the
-- new row version on the same page (a HOT update, no index write), and autovacuum comes sooner
-- than its default 20% of the table, which at millions of rows would let dead versions pile up.
ALTER TABLE pdpj.documents SET (
    fillfactor = 85,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);
ALTER TABLE pdpj.jobs SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);
-- Append-only and pruned by age: vacuumed for its inserts (visibility map, index-only scans).
ALTER TABLE pdpj.access_log SET (autovacuum_vacuum_insert_scale_factor = 0.02);
ALTER TABLE pdpj.webhook_attempts SET (autovacuum_vacuum_insert_scale_factor = 0.02);

-- Whether a job's webhook was delivered, looked up per job through webhook_deliveries_by_job:
-- as an EXISTS the planner may hash the whole outbox for a page of 50 jobs, which at millions
-- of messages is most of the cost of a job list. Same columns, same meaning.
CREATE OR REPLACE VIEW pdpj.job_views AS
SELECT j.id, j.process_id, j.api_key_id, j.status, j.webhook_url, j.total_documents,
       j.completed_documents, j.failed_documents, j.progress_percentage, j.error,
       j.created_at, j.started_at, j.completed_at, j.updated_at,
       coalesce(sent.delivered, false) AS webhook_sent
FROM pdpj.jobs j
LEFT JOIN LATERAL (SELECT true AS delivered
                   FROM pdpj.webhook_deliveries w
                   WHERE w.job_id = j.id AND w.status = 'delivered'
                   LIMIT 1) sent ON true;
