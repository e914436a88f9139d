-- Approval requests as reviewers see them (issue 14): a request is listed to those who may
-- decide it, filtered before any limit, so a flood of one team's requests never hides
-- another's. `approvers_key` names the rule's approvers (md5 of their canonical jsonb text);
-- `approval_rules` holds each distinct approvers value once, so a reviewer's rules are found
-- without scanning the requests.
ALTER TABLE pgid.approvals ADD COLUMN approvers_key text;
UPDATE pgid.approvals SET approvers_key = md5(approvers::text);
ALTER TABLE pgid.approvals ALTER COLUMN approvers_key SET NOT NULL;

CREATE TABLE pgid.approval_rules (
    key       text PRIMARY KEY,
    approvers jsonb NOT NULL
);
INSERT INTO pgid.approval_rules (key, approvers)
    SELECT DISTINCT ON (approvers_key) approvers_key, approvers FROM pgid.approvals;

CREATE INDEX approvals_rule_requested ON pgid.approvals (approvers_key, requested_at DESC, id DESC);
CREATE INDEX approvals_rule_decided ON pgid.approvals (approvers_key, decided_at DESC)
    WHERE state <> 'pending';
-- Pending requests per policy and lease: the limits on pending requests count these.
CREATE INDEX approvals_pending_policy ON pgid.approvals (policy, lease_id) WHERE state = 'pending';

-- Reviewers' sessions on the approval page. The cookie names its session; every request checks
-- that it has not ended, so signing out ends it on every instance.
CREATE TABLE pgid.review_sessions (
    id         uuid PRIMARY KEY,
    issuer     text NOT NULL,
    subject    text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    ended_at   timestamptz
);
CREATE INDEX review_sessions_expires ON pgid.review_sessions (expires_at);
