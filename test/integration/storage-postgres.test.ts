import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { startPostgres, type PostgresFixture } from '../fixtures/postgres.ts'
import { freePort, testCa } from '../fixtures/db-tunnel.ts'
import { runMemid, startAgent, startAuth, tempDir, type AuthFixture } from '../fixtures/memid.ts'
import { PostgresStore } from '../../src/storage/postgres.ts'
import { openStore } from '../../src/storage/open.ts'
import { MemidError } from '../../src/core/errors.ts'
import type { Store } from '../../src/storage/store.ts'
import { POSTGRES, migrations } from '../../src/storage/migrations.ts'
import { acceptUnused, instance, role, storeContract, token } from '../helpers/store-contract.ts'

// Characters that must be percent-encoded in a URL, so both spellings are checked for leaks.
const PASSWORD = `s3cr:t@/${randomBytes(6).toString('hex')}'`
const ENCODED = encodeURIComponent(PASSWORD)

let server: PostgresFixture
let dbs = 0

/**
 * A new database owned by the store role; its URL (password included, TCP, no TLS).
 * Its collation is ICU en-US, like most production databases, not the fixture's C: the
 * store must still sort names in byte order.
 */
async function newDatabase(): Promise<string> {
  const name = `store_${++dbs}`
  await server.sql(`CREATE DATABASE ${name} OWNER memid TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'`)
  return url(name)
}

function url(db: string, query = '', password = ENCODED): string {
  return `postgres://memid${password ? `:${password}` : ''}@127.0.0.1:${server.port}/${db}${query}`
}

function isStorageError(e: unknown, re: RegExp): boolean {
  assert.ok(e instanceof MemidError, String(e))
  assert.equal(e.code, 'ERR_STORAGE', e.message)
  assert.match(e.message, re)
  assert.ok(!e.message.includes(PASSWORD) && !e.message.includes(ENCODED), `no password in: ${e.message}`)
  assert.ok(!/[\r\n]/.test(e.message), 'one line')
  return true
}

before(async () => {
  server = await startPostgres({
    clientCaPem: (await testCa('unused client CA')).certPem, roles: [], databases: {},
    passwordRole: { name: 'memid', password: PASSWORD },
  })
})
after(async () => {
  await server?.stop()
})

storeContract('PostgresStore', { newDatabase, open: (u) => openStore(u) })

describe('PostgresStore connection', () => {
  const opened: Store[] = []
  after(async () => {
    for (const s of opened) await s.close()
  })
  const open = async (u: string) => {
    const s = await openStore(u)
    opened.push(s)
    return s
  }

  it('accepts postgres:// and postgresql://, sslmode (TLS verified against sslrootcert), and a unix socket via host=/dir', async () => {
    const db = await newDatabase()
    const name = db.slice(db.lastIndexOf('/') + 1)
    const plain = await open(db)
    await plain.createRole(role('shared'))
    const tls = await open(`${url(name).replace('postgres://', 'postgresql://')}?sslmode=verify-full&sslrootcert=${server.serverCaFile}`)
    assert.ok(await tls.getRole('shared'))
    const ssl = await server.sql(`SELECT bool_or(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = '${name}' AND a.application_name = 'memid'`)
    assert.equal(ssl.trim(), 't', 'a pooled connection of the sslmode=verify-full store uses TLS')
    const disabled = await open(url(name, '?sslmode=disable'))
    assert.ok(await disabled.getRole('shared'))
    const socket = await open(`postgres://memid@/${name}?host=${encodeURIComponent(server.socketDir)}&port=${server.port}`)
    assert.ok(await socket.getRole('shared'))
  })

  it('takes the password from PGPASSWORD when the URL has none', async () => {
    const db = await newDatabase()
    const name = db.slice(db.lastIndexOf('/') + 1)
    const saved = process.env.PGPASSWORD
    process.env.PGPASSWORD = PASSWORD
    try {
      const s = await open(url(name, '', ''))
      assert.deepEqual(await s.listRoles(), [])
    } finally {
      if (saved === undefined) delete process.env.PGPASSWORD
      else process.env.PGPASSWORD = saved
    }
  })

  it('failures are one-line ERR_STORAGE naming host:port, never the password', async () => {
    const closed = await freePort()
    await assert.rejects(openStore(`postgres://memid:${ENCODED}@127.0.0.1:${closed}/x`),
      (e) => isStorageError(e, new RegExp(`^cannot reach the store at 127\\.0\\.0\\.1:${closed}: .*ECONNREFUSED`)))
    await assert.rejects(openStore(url('postgres', '', `${ENCODED}x`)),
      (e) => isStorageError(e, /^cannot reach the store at 127\.0\.0\.1:\d+: password authentication failed for user "memid"$/))
    await assert.rejects(openStore(url('no_such_db')), (e) => isStorageError(e, /database "no_such_db" does not exist/))
    // verify-full without the server's CA: the certificate is refused, not accepted.
    await assert.rejects(openStore(url('postgres', '?sslmode=verify-full')), (e) => isStorageError(e, /certificate/))
    await assert.rejects(openStore(`postgres://memid:${ENCODED}@127.0.0.1:99999/x`),
      (e: unknown) => e instanceof MemidError && e.code === 'ERR_CONFIG' && !e.message.includes(ENCODED) && !e.message.includes(PASSWORD))
  })

  it('a connection the server drops does not crash the process; the next call reconnects', async () => {
    const db = await newDatabase()
    const name = db.slice(db.lastIndexOf('/') + 1)
    const s = await open(db)
    await Promise.all([s.listRoles(), s.listBots(), s.listLocks()]) // several idle pooled connections
    const killed = await server.sql(`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '${name}'`)
    assert.ok(Number(killed) >= 1)
    await new Promise((r) => setTimeout(r, 200))
    await s.createRole(role('after'))
    assert.ok(await s.getRole('after'))
  })

  it('migrations: servers starting together migrate once; a newer schema is refused', async () => {
    const db = await newDatabase()
    const name = db.slice(db.lastIndexOf('/') + 1)
    const stores = await Promise.all(Array.from({ length: 4 }, () => PostgresStore.open(db, { max: 2 })))
    opened.push(...stores)
    assert.equal(await server.sql('SELECT string_agg(version::text, \',\' ORDER BY version) FROM schema_migrations', name), `${migrations(POSTGRES).map((_, i) => i + 1).join(',')}\n`)
    const types = await server.sql(`SELECT column_name || ':' || data_type || ':' || is_identity FROM information_schema.columns
      WHERE (table_name, column_name) IN (('audit_events', 'id'), ('cas', 'private_key'), ('bots', 'max_ttl_ms')) ORDER BY column_name`, name)
    assert.deepEqual(types.trim().split('\n'), ['id:bigint:YES', 'max_ttl_ms:bigint:NO', 'private_key:bytea:NO'])
    await server.sql(`INSERT INTO schema_migrations (version, applied_at) VALUES (999, 'later')`, name)
    await assert.rejects(openStore(db), (e: unknown) => e instanceof MemidError && e.code === 'ERR_STORAGE' && /upgrade memid/.test(e.message))
  })

  it('two connections consuming one token: both wait on its row lock, exactly one wins', async () => {
    const db = await newDatabase()
    const [a, b] = [await open(db), await open(db)]
    await a.createToken(token('tok-0000000000ff'))
    // A third session holds the token row, so both joins are inside their transactions at once.
    const holder = new pg.Client({ connectionString: db })
    await holder.connect()
    try {
      await holder.query('BEGIN')
      await holder.query(`SELECT * FROM join_tokens WHERE name = 'tok-0000000000ff' FOR UPDATE`)
      const joins = Promise.allSettled([a, b].map((s) => s.consumeToken('tok-0000000000ff', acceptUnused(instance('tok-0000000000ff')))))
      const waiting = async () => {
        // Inside a transaction pg_stat_activity is a snapshot taken on first read: refresh it.
        await holder.query('SELECT pg_stat_clear_snapshot()')
        return Number((await holder.query(`SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()`)).rows[0].n)
      }
      const until = Date.now() + 10_000
      while ((await waiting()) < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 20))
      const blocked = await waiting()
      await holder.query('COMMIT')
      assert.equal(blocked, 2, 'both joins were blocked on the row lock')
      const results = await joins
      assert.deepEqual(results.map((r) => r.status).sort(), ['fulfilled', 'rejected'])
      const lost = results.find((r) => r.status === 'rejected') as PromiseRejectedResult
      assert.equal((lost.reason as MemidError).code, 'ERR_TOKEN_USED')
      assert.equal((await b.listInstances()).length, 1)
    } finally {
      await holder.end()
    }
  })
})

describe('memid auth start --storage postgres://… (end to end)', () => {
  let a: AuthFixture | undefined
  let b: AuthFixture | undefined
  after(async () => {
    await b?.stop()
    await a?.stop()
  })

  it('two auth servers share one database: same CAs, a bot added on one joins through the other, restart keeps everything', async () => {
    await server.sql('CREATE DATABASE e2e OWNER memid')
    // The recommended way: TLS to the store, the password in the environment rather than argv.
    a = await startAuth({ storage: `postgres://memid@127.0.0.1:${server.port}/e2e?sslmode=verify-full&sslrootcert=${server.serverCaFile}`, env: { PGPASSWORD: PASSWORD } })
    b = await startAuth({ storage: url('e2e') })
    assert.equal(b.caPin, a.caPin, 'the second server found the CAs the first created')
    assert.equal(await server.sql('SELECT count(*) FROM cas', 'e2e'), '6\n')
    const warned = b.process.stderr.split('\n').find((l) => l.includes('--storage carries a password'))
    assert.ok(warned, 'a password in argv is warned about')
    assert.ok(!a.process.stderr.includes(PASSWORD) && !b.process.stderr.includes(PASSWORD) && !b.process.stderr.includes(ENCODED), 'no password in logs')

    const tokenValue = await a.bot('pgbot')
    const agent = startAgent({ auth: b, token: tokenValue })
    try {
      await agent.ready
      assert.equal((await agent.status()).bot, 'pgbot')
    } finally {
      assert.equal(await agent.stop(), 0)
    }
    const inA = JSON.parse((await a.cli(['get', 'bot_instance/pgbot', '--format', 'json'])).stdout).items as unknown[]
    assert.equal(inA.length, 1, 'the instance created through b is seen by a')

    await a.restart()
    assert.equal(a.caPin, b.caPin, 'restart keeps the CAs')
    const bots = await a.cli(['bots', 'ls', '--format', 'json'])
    assert.deepEqual((JSON.parse(bots.stdout).items as { name: string }[]).map((x) => x.name), ['pgbot'])
    const again = JSON.parse((await a.cli(['get', 'bot_instance/pgbot', '--format', 'json'])).stdout).items as unknown[]
    assert.equal(again.length, 1)
    const exported = await a.cli(['auth', 'export', '--kind', 'ssh-user'])
    assert.match(exported.stdout, /^ssh-ed25519 /, `export asks the running server: ${exported.stderr}`)
    const joins = await a.cli(['audit', '--type', 'join', '--format', 'json'])
    assert.equal(joins.code, 0, joins.stderr)
    assert.equal((JSON.parse(joins.stdout).items as unknown[]).length, 1)
  })

  it('an unreachable store: exit 1, one line naming host:port, no password', async () => {
    const closed = await freePort()
    const tmp = tempDir('memid-pg-unreachable-')
    const r = await runMemid(['auth', 'start', '--listen', '127.0.0.1:0', '--data-dir', tmp.dir,
      '--storage', `postgres://memid:${ENCODED}@127.0.0.1:${closed}/x`, '--log-format', 'json']).finally(tmp.cleanup)
    assert.equal(r.code, 1, r.stderr)
    const lines = r.stderr.trim().split('\n')
    assert.match(lines.at(-1) ?? '', new RegExp(`cannot reach the store at 127\\.0\\.0\\.1:${closed}: connect ECONNREFUSED`))
    assert.ok(!r.stderr.includes(PASSWORD) && !r.stderr.includes(ENCODED), r.stderr)
  })
})
