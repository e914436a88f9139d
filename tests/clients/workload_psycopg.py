"""psycopg 3 workload for pgid's compatibility test: prints a transcript to compare between a
direct connection and one through pgid. Usage: python workload_psycopg.py DSN"""
import sys

import psycopg

out = []
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    cur = conn.execute("SELECT id, name, email FROM crm.customers WHERE id > %s ORDER BY id", (1,))
    out += [repr(r) for r in cur.fetchall()]

    bcur = conn.cursor(binary=True)
    bcur.execute("SELECT 1::int4, 'ünï'::text, 1.5::float8, DATE '2026-01-02', ARRAY[1, 2], '\\x01ff'::bytea, NULL::int, 12.50::numeric")
    out.append(repr(bcur.fetchone()))

    with conn.pipeline():
        c1 = conn.execute("SELECT count(*) FROM crm.orders")
        c2 = conn.execute("SELECT max(id) FROM crm.customers")
        c3 = conn.execute("SELECT %s::text || %s::text", ("pipe", "line"))
    out.append(repr((c1.fetchone(), c2.fetchone(), c3.fetchone())))

    with conn.transaction():
        with conn.cursor(name="server_side") as sc:
            sc.itersize = 5
            sc.execute("SELECT g FROM generate_series(1, 23) g")
            out.append("server-side cursor rows: %d" % sum(1 for _ in sc))

    with conn.cursor().copy("COPY (SELECT id, name FROM crm.customers ORDER BY id) TO STDOUT") as cp:
        out.append(repr(b"".join(bytes(b) for b in cp)))

    with conn.transaction():
        with conn.cursor().copy("COPY crm.notes (customer_id, body) FROM STDIN") as cp:
            cp.write_row((1, "note from psycopg"))
            cp.write_row((2, "another"))
        out.append(repr(conn.execute("SELECT customer_id, body FROM crm.notes ORDER BY 1").fetchall()))
        raise psycopg.Rollback()
    out.append(repr(conn.execute("SELECT count(*) FROM crm.notes").fetchone()))

    try:
        conn.execute("SELECT 1/0")
    except psycopg.errors.DivisionByZero as e:
        out.append("error " + e.sqlstate)
    try:
        conn.execute("DELETE FROM crm.customers")
    except psycopg.errors.InsufficientPrivilege as e:
        out.append("error " + e.sqlstate)
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    conn.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 'notice'; END $$")
    out.append("notices " + repr(notices))
    conn.execute("LISTEN chan")
    conn.execute("NOTIFY chan, 'payload'")
    for n in conn.notifies(timeout=5, stop_after=1):
        out.append("notify %s %s" % (n.channel, n.payload))
print("\n".join(out))
