-- pgid's own state. Lease roles never get USAGE on this schema: it holds client verifiers.
REVOKE ALL ON SCHEMA pgid FROM PUBLIC;

CREATE TABLE pgid.leases (
    id               uuid PRIMARY KEY,
    role_name        text NOT NULL UNIQUE,
    policy           text NOT NULL,
    database         text NOT NULL,
    issuer           text NOT NULL,
    subject          text NOT NULL,
    -- creating → active → revoking → revoked | expired | failed
    state            text NOT NULL CHECK (state IN ('creating', 'active', 'revoking', 'revoked', 'expired', 'failed')),
    -- the state a lease in 'revoking' reaches once its role is gone
    final_state      text CHECK (final_state IN ('revoked', 'expired', 'failed')),
    client_verifier  text NOT NULL,
    connection_limit integer NOT NULL,
    -- the pgid instance creating the lease; its advisory lock says whether it is still alive
    instance_id      integer NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    max_expires_at   timestamptz NOT NULL,
    ended_at         timestamptz,
    end_reason       text,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    last_error       text
);

CREATE INDEX leases_live ON pgid.leases (state, expires_at)
    WHERE state IN ('creating', 'active', 'revoking');
CREATE INDEX leases_subject ON pgid.leases (issuer, subject);
