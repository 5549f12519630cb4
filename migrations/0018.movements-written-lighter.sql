-- depends: 0017.text-off
-- A process's first answer writes all its movements at once (hundreds, thousands for an old
-- process): most of a new process's write. Only pdpj_async.process_data.store writes them, in
-- the transaction that upserted the process and holds its row lock, so the foreign key's check
-- on every row (a lookup of the process and a KEY SHARE lock on it, per movement) proved
-- nothing the writer does not: a quarter of that write's CPU in PostgreSQL
-- (300 movements: 4.85 against 3.59 ms). What the key gave besides, ON DELETE CASCADE, stays:
-- one statement-level trigger deletes the movements of the processes a statement deletes.
ALTER TABLE pdpj.process_movements DROP CONSTRAINT process_movements_process_id_fkey;

CREATE FUNCTION pdpj.process_movements_follow_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM pdpj.process_movements m USING gone WHERE m.process_id = gone.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER processes_delete_movements
AFTER DELETE ON pdpj.processes
REFERENCING OLD TABLE AS gone
FOR EACH STATEMENT
EXECUTE FUNCTION pdpj.process_movements_follow_delete();
