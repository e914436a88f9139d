-- Approval requests (DESIGN §4, §6): a statement an [[approval]] rule holds for a human
-- reviewer. A request is decided once: the UPDATE that decides it only matches a pending,
-- unexpired row, so two reviewers (or two pgid instances) cannot both decide it.
CREATE TABLE pgid.approvals (
    id              uuid PRIMARY KEY,
    -- pending → approved | denied | expired | withdrawn
    state           text NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'withdrawn')),
    lease_id        uuid NOT NULL,
    issuer          text NOT NULL,
    subject         text NOT NULL,
    policy          text NOT NULL,
    database        text NOT NULL,
    statement       text NOT NULL,
    parameters      jsonb,
    tables          text[] NOT NULL DEFAULT '{}',
    estimated_rows  bigint,
    mode            text NOT NULL CHECK (mode IN ('wait', 'retry')),
    -- the rule's approvers (IdentityMatch as JSON), fixed when the request is made
    approvers       jsonb NOT NULL,
    requested_at    timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    decided_at      timestamptz,
    reviewer_issuer text,
    reviewer        text,
    comment         text,
    instance_id     integer NOT NULL
);

CREATE INDEX approvals_pending ON pgid.approvals (expires_at) WHERE state = 'pending';
CREATE INDEX approvals_lease ON pgid.approvals (lease_id);
