// node-postgres (npm "pg") through Waypoint, run by test/compat/run.sh (NODE_PATH points
// at the node_modules that run.sh installs with `npm ci` from package-lock.json).
//
// Every check prints one line "check NAME pass|fail|na DETAIL" on stdout; run.sh turns
// those lines into the result table (the checks are the same for all five drivers, see
// docs/compatibility.md). Waiting is always "poll a condition until a deadline", never a
// blind sleep. Environment: WP_HOST, WP_PORT, WP_DB, WP_ROLE.
'use strict'

const crypto = require('crypto')
const tls = require('tls')
const { pipeline } = require('stream/promises')
const { Readable, Writable } = require('stream')
const pg = require('pg')
const copyStreams = require('pg-copy-streams')

const { WP_HOST: HOST, WP_PORT: PORT, WP_DB: DB, WP_ROLE: ROLE } = process.env
const DRIVER = 'node'
const UNICODE = "héllo wörld ✓ 日本語 🐘 'quote' \\back"
const ALL_BYTES = Buffer.from([...Array(256).keys()])

function config(extra = {}) {
  // sslmode=require semantics: encrypt, do not verify the (self-signed) certificate.
  return {
    host: HOST, port: Number(PORT), database: DB, user: 'ignored',
    ssl: { rejectUnauthorized: false }, connectionTimeoutMillis: 10000, ...extra,
  }
}

async function connect(extra) {
  const c = new pg.Client(config(extra))
  await c.connect()
  return c
}

class Failed extends Error {}
function want(cond, msg) {
  if (!cond) throw new Failed(msg)
}

async function run(name, fn, detail) {
  try {
    await fn()
    console.log(`check ${name} pass ${detail}`)
  } catch (e) {
    console.error(e)
    console.log(`check ${name} fail ${(e.constructor.name + ': ' + e.message).replace(/\s+/g, ' ')}`)
  }
}

async function scalar(c, text, values) {
  const r = await c.query({ text, values, rowMode: 'array' })
  return r.rows[0][0]
}

async function expectState(c, text, state) {
  try {
    await c.query(text)
  } catch (e) {
    want(e.code === state, `${text}: want SQLSTATE ${state}, got ${e.code} ${e.message}`)
    return
  }
  throw new Failed(`${text} succeeded, want SQLSTATE ${state}`)
}

async function checkTLS(c, role) {
  want(c.connection.stream instanceof tls.TLSSocket, 'connection is not TLS')
  const u = await scalar(c, 'SELECT current_user')
  want(u === role, `current_user ${u}, want ${role}`)
}

async function checkTypes(c) {
  const ts = new Date(Date.UTC(2024, 1, 29, 12, 30))
  const r = await c.query({
    text: "SELECT $1::text, $2::bytea, $3::text, $4::int8::text, $5::float8, $6::numeric::text, $7::bool," +
      " $8::date::text, $9::uuid, $10::jsonb->>'k', $11::int4[], $12::timestamptz",
    values: [UNICODE, ALL_BYTES, null, '9223372036854775807', 1.5e300, '12345678901234567890.123456789', true,
      '2024-02-29', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', JSON.stringify({ k: 'ü' }), [1, -2, 3], ts],
    rowMode: 'array',
  })
  const v = r.rows[0]
  want(v[0] === UNICODE, `text: ${v[0]}`)
  want(Buffer.isBuffer(v[1]) && v[1].equals(ALL_BYTES), 'bytea differs')
  want(v[2] === null, `NULL: ${v[2]}`)
  want(v[3] === '9223372036854775807', `int8: ${v[3]}`)
  want(v[4] === 1.5e300, `float8: ${v[4]}`)
  want(v[5] === '12345678901234567890.123456789', `numeric: ${v[5]}`)
  want(v[6] === true && v[7] === '2024-02-29', `bool/date: ${v[6]} ${v[7]}`)
  want(v[8] === 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11' && v[9] === 'ü', `uuid/jsonb: ${v[8]} ${v[9]}`)
  want(JSON.stringify(v[10]) === '[1,-2,3]' && v[11].getTime() === ts.getTime(), `int4[]/timestamptz: ${v[10]} ${v[11]}`)
  await c.query('INSERT INTO items (driver, t, b, n) VALUES ($1, $2, $3, $4)', [DRIVER, UNICODE, ALL_BYTES, null])
  const s = await c.query('SELECT t, b, n FROM items WHERE driver = $1', [DRIVER])
  want(s.rows.length === 1 && s.rows[0].t === UNICODE && s.rows[0].b.equals(ALL_BYTES) && s.rows[0].n === null,
    'stored row differs')
}

async function checkPrepared(c) {
  for (let i = 0; i < 100; i++) {
    const r = await c.query({ name: 'compat_prep', text: 'SELECT $1::int8 * 2 AS compat_prep, $2::text', values: [i, `ü${i}`], rowMode: 'array' })
    want(r.rows[0][0] === String(2 * i) && r.rows[0][1] === `ü${i}`, `execution ${i}: ${r.rows[0]}`)
  }
  const n = await scalar(c, "SELECT count(*)::int FROM pg_prepared_statements WHERE name = 'compat_prep'")
  want(n === 1, `statement not in pg_prepared_statements (${n})`)
}

async function checkErrors(c) {
  await expectState(c, 'SELECT 1/0', '22012')
  await expectState(c, 'SELECT * FROM no_such_table', '42P01')
  await expectState(c, 'SELEC 1', '42601')
  await c.query('BEGIN')
  try {
    await expectState(c, 'SELECT 1/0', '22012')
    await expectState(c, 'SELECT 1', '25P02')
  } finally {
    await c.query('ROLLBACK')
  }
  want(await scalar(c, "SELECT 'still usable'") === 'still usable', 'session not usable after errors')
}

async function checkRollback(c) {
  const count = "SELECT count(*)::int FROM items WHERE driver = 'node' AND t = 'rolled back'"
  let inTx
  await c.query('BEGIN')
  try {
    await c.query("INSERT INTO items (driver, t) VALUES ('node', 'rolled back')")
    inTx = await scalar(c, count)
  } finally {
    await c.query('ROLLBACK')
  }
  const after = await scalar(c, count)
  want(inTx === 1 && after === 0, `inside the transaction ${inTx} (want 1), after ROLLBACK ${after} (want 0)`)
}

async function checkCopyIn(c) {
  const lines = []
  for (let i = 0; i < 1000; i++) {
    lines.push(`${DRIVER}-copy\tü${i}\t\\\\x${(i % 256).toString(16).padStart(2, '0')}005c\t${i}\n`)
  }
  await pipeline(Readable.from(lines), c.query(copyStreams.from('COPY items (driver, t, b, n) FROM STDIN')))
  const r = await c.query("SELECT count(*)::int AS n, sum(n)::int AS s FROM items WHERE driver = 'node-copy'")
  want(r.rows[0].n === 1000 && r.rows[0].s === 499500, `table has ${r.rows[0].n} rows, sum ${r.rows[0].s}`)
  const b = await scalar(c, "SELECT encode(b, 'hex') FROM items WHERE driver = 'node-copy' AND n = 7")
  want(b === '07005c', `bytea through COPY: ${b}`)
}

async function checkCopyOut(c) {
  const chunks = []
  await pipeline(c.query(copyStreams.to("COPY (SELECT i, 'ü' || i FROM generate_series(1, 1000) i) TO STDOUT")),
    new Writable({ write(chunk, _enc, cb) { chunks.push(chunk); cb() } }))
  let expected = ''
  for (let i = 1; i <= 1000; i++) expected += `${i}\tü${i}\n`
  const got = Buffer.concat(chunks).toString('utf8')
  want(got === expected, `COPY TO: ${got.length} chars, want ${expected.length}`)
}

async function waitRunning(other, marker) {
  const deadline = Date.now() + 10000
  while (Date.now() < deadline) {
    const n = await scalar(other, "SELECT count(*)::int FROM pg_stat_activity WHERE state = 'active'" +
      " AND pid <> pg_backend_pid() AND query LIKE $1", [`%${marker}%`])
    if (n > 0) return
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  throw new Failed(`query ${marker} never seen running`)
}

async function checkCancel(c) {
  const other = await connect()
  try {
    const q = new pg.Query('SELECT pg_sleep(30) AS compat_cancel')
    const done = new Promise((resolve) => {
      q.on('error', resolve)
      q.on('end', () => resolve(null))
    })
    c.query(q)
    await waitRunning(other, 'compat_cancel')
    const t0 = Date.now()
    // node-postgres's cancel: a second Client opens a connection and sends the
    // CancelRequest with the busy client's key.
    new pg.Client(config()).cancel(c, q)
    let timer
    const err = await Promise.race([done,
      new Promise((resolve) => { timer = setTimeout(() => resolve('timeout'), 5000) })])
    clearTimeout(timer)
    want(err !== 'timeout', 'query still running 5 s after the cancel')
    want(err && err.code === '57014', `want 57014, got ${err && (err.code + ' ' + err.message)}`)
    console.error(`node: cancel took ${(Date.now() - t0) / 1000} s`)
    want(await scalar(c, "SELECT 'still usable'") === 'still usable', 'session not usable after cancel')
  } finally {
    await other.end()
  }
}

async function checkNotify(c) {
  await c.query('LISTEN compat_node')
  let timer
  const got = new Promise((resolve, reject) => {
    c.once('notification', resolve)
    timer = setTimeout(() => reject(new Failed('no notification within 5 s')), 5000)
  })
  const other = await connect()
  try {
    await other.query("SELECT pg_notify('compat_node', $1)", ['payload ü 🐘'])
  } finally {
    await other.end()
  }
  const n = await got
  clearTimeout(timer)
  want(n.channel === 'compat_node' && n.payload === 'payload ü 🐘', `got ${n.channel} ${n.payload}`)
  await c.query('UNLISTEN *')
}

async function checkBig(c) {
  const r = await c.query({ text: 'SELECT i, repeat(md5(i::text), 32) FROM generate_series(1, 20480) i', rowMode: 'array' })
  let total = 0
  for (const [i, s] of r.rows) {
    want(s === crypto.createHash('md5').update(String(i)).digest('hex').repeat(32), `row ${i} differs`)
    total += s.length
  }
  want(r.rows.length === 20480 && total === 20 << 20, `${r.rows.length} rows, ${total} bytes`)
}

async function checkPool() {
  const pool = new pg.Pool({ ...config(), max: 20 })
  try {
    const clients = await Promise.all(Array.from({ length: 20 }, () => pool.connect()))
    try {
      const users = await Promise.all(clients.map((cl) => scalar(cl, 'SELECT current_user')))
      want(users.every((u) => u === ROLE), `roles ${[...new Set(users)]}`)
      const pids = new Set(clients.map((cl) => cl.processID))
      want(pids.size === 20 && pool.totalCount === 20, `${pids.size} distinct backend keys, ${pool.totalCount} connections`)
    } finally {
      clients.forEach((cl) => cl.release())
    }
  } finally {
    await pool.end()
  }
}

async function checkReadonly() {
  const c = await connect({ options: '-c waypoint_presets=readonly' })
  try {
    await checkTLS(c, ROLE + '_readonly')
    await scalar(c, 'SELECT count(*) FROM items')
    await expectState(c, "INSERT INTO items (driver, t) VALUES ('node', 'readonly')", '42501')
  } finally {
    await c.end()
  }
}

async function checkDirect() {
  // Through run.sh's first-byte relay, which checks the connection opens with TLS.
  const c = await connect({ sslnegotiation: 'direct', port: Number(process.env.WP_DIRECT_PORT) })
  try {
    await checkTLS(c, ROLE)
  } finally {
    await c.end()
  }
}

// Four sequential connects, each passing the previous connection's TLS session as
// ssl.session (the option docs/tls.md gives): connects 2-4 must resume. run.sh also
// counts them in waypoint_tls_handshakes_total.
async function checkResume() {
  let session
  for (let i = 1; i <= 4; i++) {
    const c = await connect({ ssl: { rejectUnauthorized: false, session } })
    try {
      // A TLS 1.3 ticket arrives after the handshake: a round trip reads it.
      await scalar(c, 'SELECT current_user')
      const s = c.connection.stream
      want(s instanceof tls.TLSSocket, `connect ${i}: not TLS`)
      want(i === 1 || s.isSessionReused(), `connect ${i}: full handshake, ssl.session was not resumed`)
      session = s.getSession()
      want(session, `connect ${i}: no session to pass on`)
    } finally {
      await c.end()
    }
  }
}

async function main() {
  console.log(`version ${DRIVER} pg-${require('pg/package.json').version}`)
  let c
  try {
    c = await connect()
  } catch (e) {
    console.log(`check connect_tls fail ${e.message}`)
    process.exit(1)
  }
  await run('connect_tls', () => checkTLS(c, ROLE), `ssl (sslmode=require semantics), TLS in use, current_user=${ROLE}`)
  await run('types', () => checkTypes(c), 'unicode, bytea 0-255, NULL, int8, float8, numeric, bool, date, uuid, jsonb, int4[], timestamptz')
  await run('prepared_x100', () => checkPrepared(c), 'named query x100, in pg_prepared_statements')
  await run('errors', () => checkErrors(c), '22012, 42P01, 42601, 25P02; session usable after')
  await run('rollback', () => checkRollback(c), 'inserted row gone after ROLLBACK')
  await run('copy_in', () => checkCopyIn(c), 'pg-copy-streams from (COPY FROM STDIN), 1000 rows')
  await run('copy_out', () => checkCopyOut(c), 'pg-copy-streams to (COPY TO STDOUT), 1000 rows')
  await run('cancel', () => checkCancel(c), 'Client.cancel(): 57014, session usable after')
  await run('listen_notify', () => checkNotify(c), "'notification' event, unicode payload")
  await run('result_20mb', () => checkBig(c), '20480 rows x 1 KiB, every row verified')
  await run('pool_20', checkPool, 'pg.Pool max=20, 20 held at once, 20 backend pids')
  await run('readonly', checkReadonly, "options: '-c waypoint_presets=readonly': role *_readonly, INSERT 42501")
  await run('direct_tls', checkDirect, 'sslnegotiation=direct (ALPN postgresql)')
  await run('tls_resume', checkResume, 'ssl.session from the previous connection: connects 2-4 resumed (isSessionReused)')
  await c.end()
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
