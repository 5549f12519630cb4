-- depends: 0015.search-rank
-- Free rows in claim order per kind: a claim reads the head of each kind it names, so its cost
-- no longer grows with the due rows of the kinds it does not name. With one index over every
-- kind, a claim for `refresh` alone walked past every due download of a higher priority first
-- (50,000 rows at 5 million documents: 15.7 ms against 2.0 ms at 10 thousand), and whenever
-- the text gate was closed every claim read the whole due text backlog through.
CREATE INDEX queue_claimable_by_kind
    ON pdpj.queue (kind, priority DESC, run_at, id) WHERE lease_owner IS NULL;

-- It replaces the index over every kind: one partial index on the hottest table, not two
-- (every enqueue, retry and release writes an entry into each). Nothing else reads it: the
-- claim was its only reader; the other statements over pdpj.queue go by id, (kind, ref) or
-- the lease expiry. A daemon of an older version still claims with its own statement, which
-- now reads the due rows of its kinds from this index and sorts them: correct, slower in
-- proportion to that backlog, until it is upgraded.
DROP INDEX pdpj.queue_claimable;
