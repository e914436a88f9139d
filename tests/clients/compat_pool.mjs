// node-postgres: one connection, one query; prints the backend pid, or the error. pgid issue 13,
// point 4: a client is never handed an upstream connection that is already dead.
// Usage: node compat_pool.mjs DSN
import pg from 'pg'

const client = new pg.Client({ connectionString: process.argv[2] })
try {
  await client.connect()
  const r = await client.query('SELECT pg_backend_pid() AS pid, 1 + 1 AS two')
  console.log(JSON.stringify({ pid: r.rows[0].pid, two: r.rows[0].two, key: client.processID === r.rows[0].pid }))
  await client.end()
} catch (e) {
  console.log(JSON.stringify({ error: e.code, message: e.message }))
  process.exitCode = 1
}
