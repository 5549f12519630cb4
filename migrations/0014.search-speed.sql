-- depends: 0009.text-search
-- Search at 100,000 documents and beyond: whether a text is sealed on the text's own row; the
-- text's state on the document (for the status); the query as functions the planner can see.
--
-- The search found the sealed documents of a key without the sealed permission by probing
-- pdpj.documents for each matching text: at 100,000 documents a common word made 50,000 probes
-- (~300 ms). A column on the text row costs nothing to test. It follows the document: written
-- with the text (pdpj_async/db/sql/text.sql `save`, which updates, so locks, the document row),
-- and kept in step by the trigger below when a refresh changes a document's sigilo (and with it
-- the other copied columns, juntada_at and type_name, that the search filters on).
ALTER TABLE pdpj.document_texts ADD COLUMN sealed boolean NOT NULL DEFAULT false;

UPDATE pdpj.document_texts t
SET sealed = true
FROM pdpj.documents d
WHERE d.id = t.document_id AND pdpj.is_sealed(d.sigilo);

CREATE FUNCTION pdpj.document_texts_follow() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pdpj.document_texts
    SET sealed = pdpj.is_sealed(NEW.sigilo), juntada_at = NEW.juntada_at,
        type_name = NEW.type_name
    WHERE document_id = NEW.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER documents_texts_follow
AFTER UPDATE OF sigilo, juntada_at, type_name ON pdpj.documents
FOR EACH ROW
WHEN (OLD.sigilo IS DISTINCT FROM NEW.sigilo OR OLD.juntada_at IS DISTINCT FROM NEW.juntada_at
      OR OLD.type_name IS DISTINCT FROM NEW.type_name)
EXECUTE FUNCTION pdpj.document_texts_follow();

-- The state of each document's text on the document too: the status of a process (a hot read,
-- bench/api.py) shows it with no join (a probe of document_texts per document made that read
-- ~35% slower), and its link is the text's key beside the binary. Written with the text row
-- (`save`, `mark_pending` in pdpj_async/db/sql/text.sql), in the same statement.
ALTER TABLE pdpj.documents ADD COLUMN text_status text
    CHECK (text_status IN ('pending', 'available', 'no_text', 'failed'));

UPDATE pdpj.documents d
SET text_status = t.status
FROM pdpj.document_texts t
WHERE t.document_id = d.id;

-- The query as the search reads it, and the same words with phrases relaxed to AND (what the
-- GIN index alone answers: it keeps no positions). Functions, not a CTE, so that the planner
-- sees the query's words and estimates how many texts match (a common word or a rare one).
CREATE FUNCTION pdpj.websearch(q text) RETURNS tsquery
LANGUAGE sql STABLE PARALLEL SAFE
RETURN websearch_to_tsquery('pdpj.pt', q);

CREATE FUNCTION pdpj.websearch_relaxed(q text) RETURNS tsquery
LANGUAGE sql STABLE PARALLEL SAFE
RETURN regexp_replace(websearch_to_tsquery('pdpj.pt', q)::text, '<[0-9-]+>', '&', 'g')::tsquery;

-- The words of a query as lexemes (to find where a text first has one), and a query matching
-- any of them (to highlight each one a snippet's window holds: with the query itself, a window
-- that holds one word of "a b" highlights nothing).
CREATE FUNCTION pdpj.query_lexemes(q tsquery) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ARRAY(SELECT DISTINCT m[1]
             FROM regexp_matches(q::text, '''((?:[^'']|'''')+)''', 'g') AS m);

CREATE FUNCTION pdpj.any_word(q tsquery) RETURNS tsquery
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce(array_to_string(ARRAY(SELECT '''' || w || ''''
                                      FROM unnest(pdpj.query_lexemes(q)) w), ' | ')::tsquery,
                ''::tsquery);
