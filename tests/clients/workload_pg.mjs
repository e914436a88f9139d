// node-postgres workload for pgid's compatibility test: prints a transcript to compare between a
// direct connection and one through pgid. Usage: node workload_pg.mjs DSN
import pg from 'pg';

const client = new pg.Client({ connectionString: process.argv[2] });
const out = [];
client.on('notice', (n) => out.push(`notice ${n.message}`));
await client.connect();
out.push(JSON.stringify((await client.query('SELECT id, name, email FROM crm.customers WHERE id > $1 ORDER BY id', [1])).rows));
out.push(JSON.stringify((await client.query({ name: 'plus-one', text: 'SELECT $1::int + 1 AS n', values: [41] })).rows));
out.push(JSON.stringify((await client.query({ name: 'plus-one', text: 'SELECT $1::int + 1 AS n', values: [1] })).rows));
out.push(JSON.stringify((await client.query({ text: 'SELECT 1 AS a, 2 AS b', rowMode: 'array' })).rows));
await client.query('BEGIN');
await client.query("INSERT INTO crm.notes (customer_id, body) VALUES (1, 'node note')");
out.push(JSON.stringify((await client.query('SELECT count(*)::int AS n FROM crm.notes')).rows));
await client.query('ROLLBACK');
out.push(JSON.stringify((await client.query('SELECT count(*)::int AS n FROM crm.notes')).rows));
for (const sql of ['SELECT 1/0', 'DELETE FROM crm.customers']) {
  try { await client.query(sql); } catch (e) { out.push(`error ${e.code}`); }
}
await client.query("DO $$ BEGIN RAISE NOTICE 'hello from node'; END $$");
const notified = new Promise((resolve) => client.on('notification', (m) => resolve(`notify ${m.channel} ${m.payload}`)));
await client.query('LISTEN chan');
await client.query("NOTIFY chan, 'payload'");
out.push(await notified);
const many = await Promise.all([1, 2, 3].map((i) => client.query('SELECT $1::int * 10 AS v', [i])));
out.push(JSON.stringify(many.map((r) => r.rows[0].v)));
await client.end();
console.log(out.join('\n'));
