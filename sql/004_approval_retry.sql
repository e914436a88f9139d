-- Retry-mode approvals (DESIGN §4): the statement was refused at once; once approved, the same
-- lease may run the same statement (canonical text and exact parameters: `fingerprint`, a
-- SHA-256) once, within the rule's window after the decision. `used_at` marks that one run.
ALTER TABLE pgid.approvals
    ADD COLUMN fingerprint text,
    ADD COLUMN used_at timestamptz;

CREATE INDEX approvals_retry ON pgid.approvals (lease_id, fingerprint) WHERE mode = 'retry';
