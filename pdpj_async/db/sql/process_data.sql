-- The typed data of processes: snapshots, movements with their identity, changes per refresh.

-- name: lock_process
-- The stored PDPJ answer, the process row locked as a refresh locks it (so that a baseline
-- recorded on read and a refresh never interleave).
SELECT raw::text AS raw FROM pdpj.processes WHERE id = $1 FOR NO KEY UPDATE;

-- name: get_snapshot
SELECT data::text AS data, recorded_at FROM pdpj.process_snapshots WHERE process_id = $1;

-- name: has_snapshot
SELECT EXISTS (SELECT 1 FROM pdpj.process_snapshots WHERE process_id = $1);

-- name: now
SELECT now();

-- name: known_movements
-- The identity of every movement stored, with the instances that listed it (joined by U+001F:
-- text decodes faster than 5,000 arrays).
SELECT id, array_to_string(instances, E'\x1f') AS instances
FROM pdpj.process_movements WHERE process_id = $1;

-- name: put_snapshot_and_movements
-- The typed data ($2, JSON text) and the new movements, in one round trip: the movements as one
-- JSON array ($3) of [id, instant in UTC as ISO 8601 text, descricao, instances joined by
-- U+001F, raw entry]: one parameter the client encodes in C at once, where six arrays cost it a
-- type check and a codec call per element.
WITH movements AS (
    INSERT INTO pdpj.process_movements (process_id, id, data_hora, descricao, instances, raw)
    SELECT $1, e->>0, (e->>1)::timestamptz, e->>2, string_to_array(e->>3, E'\x1f'), e->4
    FROM jsonb_array_elements($3::text::jsonb) AS e
    ON CONFLICT (process_id, id) DO NOTHING
)
INSERT INTO pdpj.process_snapshots AS s (process_id, data)
VALUES ($1, $2::text::jsonb)
ON CONFLICT (process_id) DO UPDATE SET data = EXCLUDED.data, recorded_at = now();

-- name: put_first_snapshot_and_movements
-- The same for a process this transaction inserted: nothing of it is stored yet, so plain
-- inserts. ON CONFLICT's speculative insertion costs each row a WAL record and a check of its
-- own (300 movements: 4.85 against 3.85 ms of the server's CPU).
WITH movements AS (
    INSERT INTO pdpj.process_movements (process_id, id, data_hora, descricao, instances, raw)
    SELECT $1, e->>0, (e->>1)::timestamptz, e->>2, string_to_array(e->>3, E'\x1f'), e->4
    FROM jsonb_array_elements($3::text::jsonb) AS e
)
INSERT INTO pdpj.process_snapshots (process_id, data) VALUES ($1, $2::text::jsonb);

-- name: set_movement_instances
-- A movement now listed by more instances than before (joined by U+001F, as above).
UPDATE pdpj.process_movements m
SET instances = string_to_array(u.instances, E'\x1f')
FROM unnest($2::text[], $3::text[]) AS u(id, instances)
WHERE m.process_id = $1 AND m.id = u.id;

-- name: insert_change
INSERT INTO pdpj.process_changes (process_id, new_movements, new_documents, changed_fields)
VALUES ($1, $2::text::jsonb, $3::text::jsonb, $4::text::jsonb)
RETURNING id;

-- name: movements_page
-- Newest first; $2: only movements dated at or after it; ($3, $4): the (sort_at, id) of the last
-- movement already seen. One JSON document per row, decoded straight into Movimento.
SELECT json_build_object('id', id, 'dataHora', data_hora, 'descricao', descricao,
                         'instances', instances, 'first_seen_at', first_seen_at)::text AS movement,
       id, sort_at
FROM pdpj.process_movements
WHERE process_id = $1
  AND ($2::timestamptz IS NULL OR data_hora >= $2)
  AND ($3::timestamptz IS NULL OR (sort_at, id) < ($3, $4))
ORDER BY sort_at DESC, id DESC
LIMIT $5;

-- name: get_data
-- The snapshot and when PDPJ was last read; the stored answer only when there is no snapshot.
SELECT s.data::text AS data, p.fetched_at,
       CASE WHEN s.data IS NULL THEN p.raw::text END AS raw
FROM pdpj.processes p
LEFT JOIN pdpj.process_snapshots s ON s.process_id = p.id
WHERE p.id = $1;

-- name: movement_count
SELECT count(*) FROM pdpj.process_movements WHERE process_id = $1;

-- name: document_first_seen
-- When each document of the process was first stored.
SELECT uuid, created_at FROM pdpj.documents WHERE process_id = $1;

-- name: changes_page
-- Oldest first (the order they happened in); $2: recorded at or after it; $3: the id of the last
-- change already seen.
SELECT json_build_object('id', id, 'recorded_at', recorded_at, 'new_movements', new_movements,
                         'new_documents', new_documents, 'changed_fields', changed_fields)::text
       AS change
FROM pdpj.process_changes
WHERE process_id = $1
  AND ($2::timestamptz IS NULL OR recorded_at >= $2)
  AND ($3::bigint IS NULL OR id > $3)
ORDER BY id
LIMIT $4;

-- name: change_count
SELECT count(*) FROM pdpj.process_changes WHERE process_id = $1;

-- name: raw_process
SELECT raw::text AS raw, fetched_at FROM pdpj.processes WHERE id = $1;
