-- psql workload for pgid's compatibility test; the test replaces :'notes' with a TSV file's path.
SELECT id, name, email FROM crm.customers ORDER BY id;
\copy (SELECT id, name FROM crm.customers ORDER BY id) TO STDOUT
BEGIN;
\copy crm.notes (customer_id, body) FROM :'notes'
SELECT customer_id, body FROM crm.notes ORDER BY 1;
ROLLBACK;
SELECT count(*) FROM crm.notes;
DO $$ BEGIN RAISE NOTICE 'hello from %', 'psql'; END $$;
LISTEN chan;
NOTIFY chan, 'payload';
SELECT 1/0;
SELECT 'still here' AS after_error;
PREPARE q (int) AS SELECT name FROM crm.customers WHERE id = $1;
EXECUTE q (2);
\echo done
