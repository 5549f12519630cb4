-- depends: 0014.search-speed
-- The search ranks each candidate as it reads it (pdpj_async/db/sql/text.sql), and a negated
-- phrase no longer narrows the candidates.

-- The rank of a text having the relaxed query's words against the query itself, NULL when it
-- does not match it exactly. Without a phrase the relaxed query is the query: the planner sees
-- that (both are constants in a custom plan) and drops the second test of the words.
CREATE FUNCTION pdpj.exact_rank(tsv tsvector, q text) RETURNS float8
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE WHEN pdpj.websearch(q)::text = pdpj.websearch_relaxed(q)::text
                 OR tsv @@ pdpj.websearch(q)
            THEN ts_rank_cd(tsv, pdpj.websearch(q))::float8 END;

-- The words the GIN index can answer: phrases relaxed to AND (it keeps no positions). A negated
-- phrase `-"a b"` excludes the texts holding the phrase, not those holding both words apart:
-- relaxed to "not both words" it dropped those. It becomes true (`'a' | !'a'`, its first
-- word or not), so that only the exact check afterwards applies it.
CREATE OR REPLACE FUNCTION pdpj.websearch_relaxed(q text) RETURNS tsquery
LANGUAGE sql STABLE PARALLEL SAFE
RETURN regexp_replace(
    regexp_replace(websearch_to_tsquery('pdpj.pt', q)::text,
                   '!\( (''(?:[^'']|'''')*'')(?: <(?:-|[0-9]+)> ''(?:[^'']|'''')*'')+ \)',
                   '( \1 | !\1 )', 'g'),
    '<[0-9-]+>', '&', 'g')::tsquery;
