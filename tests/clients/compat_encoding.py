"""psycopg under a client encoding other than UTF-8 (pgid issue 13, point 2): data, identifiers
and error texts. Run with PGCLIENTENCODING set; prints a transcript to compare between a direct
connection and one through pgid. Usage: python compat_encoding.py DSN"""
import sys

import psycopg

conn = psycopg.connect(sys.argv[1], autocommit=True)
print("client encoding:", conn.info.encoding)
cur = conn.execute("SELECT 'café €' AS \"prix €\", %s::text AS param", ("€ 12,50",))
print([d.name for d in cur.description], cur.fetchone())
cur = conn.cursor(binary=True)
cur.execute("SELECT 'ünï €'::text, %s::varchar", ("Ÿ€",))
print("binary:", cur.fetchone())
with conn.transaction():
    conn.execute("INSERT INTO crm.notes (customer_id, body) VALUES (1, %s)", ("reçu 5 €",))
    conn.execute("INSERT INTO crm.notes (customer_id, body) VALUES (1, 'payé 7 €')")
    print(conn.execute("SELECT body FROM crm.notes WHERE body LIKE '%€' ORDER BY body").fetchall())
    print(conn.execute("SELECT count(*) FROM crm.notes WHERE body = %s", ("reçu 5 €",)).fetchone())
    raise psycopg.Rollback()
for sql in ["SELECT 'x€'::int", "SELECT * FROM \"tablé€\"", "SELECT 'é€' FROM FROM", "SELECT 'é€' +"]:
    try:
        conn.execute(sql)
    except psycopg.Error as e:
        print(type(e).__name__, e.sqlstate, e.diag.message_primary, e.diag.statement_position)
print("session still usable:", conn.execute("SELECT 'ok €'").fetchone()[0])
