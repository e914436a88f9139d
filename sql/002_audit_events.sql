-- The audit table sink (DESIGN §8): each row is one sealed audit record, exactly the line the
-- JSON Lines file holds (`line`), with the fields people filter on pulled out. Each pgid instance
-- writes its own chain; `prev`/`hash` inside `line` link it, in `id` order per instance.
CREATE TABLE pgid.audit_events (
    id          bigserial PRIMARY KEY,
    instance_id integer NOT NULL,
    time        timestamptz NOT NULL,
    kind        text NOT NULL,
    lease_id    uuid,
    subject     text,
    policy      text,
    session_id  uuid,
    decision    text,
    statement   text,
    hash        text NOT NULL UNIQUE,
    line        text NOT NULL
);

CREATE INDEX audit_events_time ON pgid.audit_events (time);
CREATE INDEX audit_events_lease ON pgid.audit_events (lease_id, time) WHERE lease_id IS NOT NULL;
CREATE INDEX audit_events_subject ON pgid.audit_events (subject, time) WHERE subject IS NOT NULL;
