"""psycopg 3 reading masked columns through pgid, in text and binary results, with and without
server-side prepared statements. Prints what it decoded. Usage: python masked_psycopg.py DSN"""
import sys

import psycopg

SQL = "SELECT id, email, ssn, card_number FROM crm.customers WHERE id > %s ORDER BY id"
out = []
with psycopg.connect(sys.argv[1], autocommit=True, prepare_threshold=2) as conn:
    for binary in (False, True):
        for i in range(4):  # the third execution on uses a server-side prepared statement
            cur = conn.cursor(binary=binary)
            cur.execute(SQL, (0,))
            out.append("binary=%s run=%d %r" % (binary, i, cur.fetchall()))
    row = conn.execute("SELECT upper(email), count(*) OVER () FROM crm.customers ORDER BY id").fetchone()
    out.append("derived %r" % (row,))
print("\n".join(out))
