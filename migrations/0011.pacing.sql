-- depends: 0010.retention
-- Pacing of PDPJ shared by every daemon on one database: one row per upstream origin and token
-- holder (a fingerprint of the token's subject, never the token) with the rate controller's
-- state (pdpj_async.upstream.pacing_control), the pause PDPJ asked for, and a count of accepted
-- requests; and one row per live daemon pacing that token, whose count divides the rate.
-- Times are seconds since the Unix epoch, as the controller computes with them.

CREATE TABLE pdpj.pacing (
    origin            text NOT NULL,
    token_fp          text NOT NULL,
    mode              text NOT NULL CHECK (mode IN ('start', 'steady')),
    estimate          double precision NOT NULL,
    epoch             double precision NOT NULL,
    paused_until      double precision NOT NULL DEFAULT 0,
    event_at          double precision NOT NULL DEFAULT 0,
    accepted_at_event double precision NOT NULL DEFAULT 0,
    accepted          bigint NOT NULL DEFAULT 0,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (origin, token_fp)
);

CREATE TABLE pdpj.pacing_shares (
    origin   text NOT NULL,
    token_fp text NOT NULL,
    instance text NOT NULL,
    -- Requests waiting or in flight at the last heartbeat: an idle daemon takes no share.
    demand   integer NOT NULL,
    seen_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (origin, token_fp, instance)
);
