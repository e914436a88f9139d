-- The fingerprint of the server key this state was set up with (HMAC of the key, never the key):
-- an instance with another key (a key file generated afresh because the shared one was not
-- mounted, or restored from the wrong backup) refuses to start instead of issuing passwords and
-- sealing events no other instance agrees with.
CREATE TABLE pgid.server_key (
    only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    fingerprint text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
