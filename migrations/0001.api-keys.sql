-- API keys: only a hash of the key is stored; the webhook signing secret must be kept to sign.
CREATE SCHEMA IF NOT EXISTS pdpj;

CREATE TABLE pdpj.api_keys (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                    text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    role                    text NOT NULL CHECK (role IN ('admin', 'user')),
    -- The first characters of the key, to find its row without comparing hashes in SQL.
    key_prefix              text NOT NULL UNIQUE,
    key_hash                bytea NOT NULL,
    webhook_secret          text NOT NULL,
    previous_webhook_secret text,
    secret_rotated_at       timestamptz,
    rate_limit_per_s        double precision,
    rate_limit_burst        integer,
    created_at              timestamptz NOT NULL DEFAULT now(),
    revoked_at              timestamptz
);
