-- depends: 0001.api-keys
-- Processes as fetched from PDPJ, and their documents with their download state.

CREATE TABLE pdpj.processes (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number         text NOT NULL UNIQUE CHECK (number ~ '^[0-9]{20}$'),
    court          text,
    class          text,
    subject        text,
    last_movement  text,
    last_movement_at timestamptz,
    instances      text[] NOT NULL DEFAULT '{}',
    sigilo_level   integer NOT NULL DEFAULT 0,
    raw            jsonb NOT NULL,
    fetched_at     timestamptz NOT NULL DEFAULT now(),
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pdpj.documents (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    process_id            bigint NOT NULL REFERENCES pdpj.processes (id) ON DELETE CASCADE,
    uuid                  text NOT NULL,
    name                  text NOT NULL,
    type_name             text,
    mime_type             text,
    declared_size         bigint,
    sequence              integer,
    juntada_at            timestamptz,
    sigilo                text,
    href                  text NOT NULL,
    raw                   jsonb NOT NULL,
    status                text NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'processing', 'available', 'failed')),
    size                  bigint,
    sha256                text,
    storage_key           text,
    stored_mime_type      text,
    attempts              integer NOT NULL DEFAULT 0,
    error_message         text,
    download_started_at   timestamptz,
    download_completed_at timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (process_id, uuid)
);

CREATE INDEX documents_uuid ON pdpj.documents (uuid);
