-- depends: 0005.webhook-deliveries
-- A job as its readers show it: the row's public columns and whether its webhook has been
-- delivered. One definition for the job, job list and status reads (which add the process
-- number or the reader's scope themselves). Columns listed, not j.*: a view freezes `*` when
-- it is created, and a column added to jobs later must be added here on purpose.

CREATE VIEW pdpj.job_views AS
SELECT j.id, j.process_id, j.api_key_id, j.status, j.webhook_url, j.total_documents,
       j.completed_documents, j.failed_documents, j.progress_percentage, j.error,
       j.created_at, j.started_at, j.completed_at, j.updated_at,
       EXISTS (SELECT 1 FROM pdpj.webhook_deliveries w
               WHERE w.job_id = j.id AND w.status = 'delivered') AS webhook_sent
FROM pdpj.jobs j;
