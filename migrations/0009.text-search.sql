-- depends: 0010.retention
-- The text of each available document and its Portuguese full-text index.
--
-- Accent folding and stemming must both hold: `unaccent` before the Portuguese stemmer folds
-- "ação"/"acao" together but stems "decisão" and "decisões" apart (decisa/deciso), and the
-- stemmer alone stems them apart too (decisã/decisõ). So the text is first normalised in Python
-- (pdpj_async.text.normalize: lower case, the -ões/-ães/-ãos plurals folded to -ão, accented or
-- not), then this configuration unaccents each word before the stemmer. The query goes through
-- the same two steps, so "decisões" finds "decisão" and "acao" finds "ação".
CREATE EXTENSION IF NOT EXISTS unaccent;

CREATE TEXT SEARCH CONFIGURATION pdpj.pt (COPY = pg_catalog.portuguese);
ALTER TEXT SEARCH CONFIGURATION pdpj.pt
    ALTER MAPPING FOR hword, hword_part, word WITH unaccent, portuguese_stem;

-- One row per available document once its text work has begun. `body` is the indexed part
-- (capped, config text.index_cap_chars), kept for the snippets; storage keeps the whole text.
CREATE TABLE pdpj.document_texts (
    document_id   bigint PRIMARY KEY REFERENCES pdpj.documents (id) ON DELETE CASCADE,
    process_id    bigint NOT NULL REFERENCES pdpj.processes (id) ON DELETE CASCADE,
    status        text NOT NULL CHECK (status IN ('pending', 'available', 'no_text', 'failed')),
    source        text CHECK (source IN ('pdpj', 'pdf', 'html', 'plain', 'ocr')),
    storage_key   text,
    chars         bigint,
    error_message text,
    -- Copied from the document: the search filters and orders without reading documents.
    juntada_at    timestamptz,
    type_name     text,
    body          text,
    tsv           tsvector,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX document_texts_tsv ON pdpj.document_texts USING gin (tsv);
CREATE INDEX document_texts_by_process ON pdpj.document_texts (process_id, juntada_at DESC);
-- The most recent matches of a common word (most documents match) for a key that sees much:
-- walking this index and testing each text beats reading every match from the GIN index and
-- sorting them. The planner picks per query (the search plans each one for its own values).
CREATE INDEX document_texts_recent ON pdpj.document_texts
    (juntada_at DESC NULLS LAST, document_id DESC);
-- The rebuild walks documents in id order and resumes after the last id it did.
CREATE INDEX document_texts_not_done ON pdpj.document_texts (document_id)
    WHERE status = 'pending';
