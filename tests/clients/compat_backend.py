"""psycopg: the backend a session is bound to, as the client knows it (pgid issue 13, point 1).
Prints a transcript to compare between a direct connection and one through pgid.
Usage: python compat_backend.py DSN"""
import sys
import threading
import time

import psycopg

dsn = sys.argv[1]
conn = psycopg.connect(dsn, autocommit=True)
other = psycopg.connect(dsn, autocommit=True)
pid = conn.info.backend_pid
print("BackendKeyData pid is pg_backend_pid():", conn.execute("SELECT pg_backend_pid()").fetchone()[0] == pid)
print("the other session sees it:", other.execute(
    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0])

# A session tells its own notifications from others' by the pid.
conn.execute("LISTEN chan")
conn.execute("NOTIFY chan, 'mine'")
other.execute("NOTIFY chan, 'theirs'")
for n in conn.notifies(timeout=10, stop_after=2):
    print("notification", n.payload, "from this session:", n.pid == pid,
          "from the other:", n.pid == other.info.backend_pid)
conn.execute("UNLISTEN *")

# A cancel reaches the statement once it runs (the other session watches for it).
failed = []
def sleep():
    try:
        conn.execute("SELECT pg_sleep(30)")
        failed.append("not cancelled")
    except psycopg.errors.QueryCanceled as e:
        failed.append("cancelled: " + e.diag.message_primary)
t = threading.Thread(target=sleep)
t.start()
deadline = time.time() + 20
while time.time() < deadline:
    running = other.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active'"
        " AND query LIKE 'SELECT pg_sleep%%'", (pid,)).fetchone()[0]
    if running:
        break
    time.sleep(0.02)
conn.cancel()
t.join()
print(failed[0])
print("still usable:", conn.execute("SELECT 1").fetchone()[0])

# pg_terminate_backend of the pid the client was given ends that session.
print("terminated:", other.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchone()[0])
try:
    conn.execute("SELECT 1")
    print("the terminated session still answers")
except psycopg.OperationalError:
    print("the terminated session is gone")
print("the other is fine:", other.execute("SELECT 2").fetchone()[0])
