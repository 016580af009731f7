import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { X509Certificate, randomBytes, randomUUID } from 'node:crypto'
import pg from 'pg'
import { startPostgres, type PostgresFixture } from '../fixtures/postgres.ts'
import { freePort, testCa } from '../fixtures/db-tunnel.ts'
import { runMemid, startAgent, startAuth, tempDir, type AuthFixture } from '../fixtures/memid.ts'
import { PostgresStore } from '../../src/storage/postgres.ts'
import { openStore } from '../../src/storage/open.ts'
import { MemidError } from '../../src/core/errors.ts'
import type { Store } from '../../src/storage/store.ts'
import { AuthService, type Peer } from '../../src/auth/auth-service.ts'
import { AdminService } from '../../src/auth/admin.ts'
import { loadOrCreateCas } from '../../src/auth/cas.ts'
import { systemClock } from '../../src/core/clock.ts'
import { silentLogger } from '../../src/core/log.ts'
import { newKey } from '../helpers/identity.ts'
import { LEGACY_V1_ROWS, acceptUnused, assertLegacyUpgraded, instance, role, storeContract, token } from '../helpers/store-contract.ts'
import { POSTGRES, SCHEMA_MIGRATIONS_DDL, migrations } from '../../src/storage/migrations.ts'

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
    const all = migrations(POSTGRES).map((_m, i) => i + 1).join(',')
    assert.equal(await server.sql('SELECT string_agg(version::text, \',\' ORDER BY version) FROM schema_migrations', name), `${all}\n`)
    const types = await server.sql(`SELECT column_name || ':' || data_type || ':' || is_identity FROM information_schema.columns
      WHERE (table_name, column_name) IN (('audit_events', 'id'), ('cas', 'private_key'), ('bots', 'max_ttl_ms')) ORDER BY column_name`, name)
    assert.deepEqual(types.trim().split('\n'), ['id:bigint:YES', 'max_ttl_ms:bigint:NO', 'private_key:bytea:NO'])
    await server.sql(`INSERT INTO schema_migrations (version, applied_at) VALUES (999, 'later')`, name)
    await assert.rejects(openStore(db), (e: unknown) => e instanceof MemidError && e.code === 'ERR_STORAGE' && /upgrade memid/.test(e.message))
  })

  it('upgrading a store from before bot ids gives bots ids and ends the instances of deleted bots', async () => {
    const db = await newDatabase()
    const c = new pg.Client({ connectionString: db })
    await c.connect()
    try {
      await c.query(SCHEMA_MIGRATIONS_DDL)
      await c.query(migrations(POSTGRES)[0] as string)
      await c.query("INSERT INTO schema_migrations (version, applied_at) VALUES (1, '2030-01-01T00:00:00.000Z')")
      await c.query(LEGACY_V1_ROWS)
    } finally {
      await c.end()
    }
    const s = await PostgresStore.open(db)
    opened.push(s)
    await assertLegacyUpgraded(s)
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

describe('the generation state machine on PostgreSQL, two auth servers on one database', () => {
  const stores: Store[] = []
  after(async () => {
    for (const s of stores) await s.close()
  })

  async function servers(): Promise<{ a: AuthService; b: AuthService; sa: Store; sb: Store; admin: AdminService; hook: { before?: () => Promise<void> } }> {
    const db = await newDatabase()
    const sa = await PostgresStore.open(db)
    const sb = await PostgresStore.open(db)
    stores.push(sa, sb)
    const hook: { before?: () => Promise<void> } = {}
    // Server a's store, with a moment between authentication and the generation transaction.
    const hooked = new Proxy(sa, {
      get(target, prop, receiver) {
        const v = Reflect.get(target, prop, receiver)
        if (typeof v !== 'function') return v
        return async (...args: unknown[]) => {
          if (prop === 'updateInstance' && hook.before) {
            const h = hook.before
            delete hook.before
            await h()
          }
          return (v as (...x: unknown[]) => unknown).apply(target, args)
        }
      },
    }) as Store
    const cas = await loadOrCreateCas(sa, 'pg')
    const a = new AuthService({ store: hooked, cas, clock: systemClock, logger: silentLogger() })
    const b = new AuthService({ store: sb, cas: await loadOrCreateCas(sb, 'pg'), clock: systemClock, logger: silentLogger() })
    const admin = new AdminService({ store: sa, clock: systemClock, audit: (ev) => a.audit(ev) })
    await admin.addRole({ name: 'r', logins: ['deploy'] })
    return { a, b, sa, sb, admin, hook }
  }

  async function joined(s: Awaited<ReturnType<typeof servers>>, name: string): Promise<Peer> {
    const { token } = await s.admin.addBot({ name, roles: ['r'] })
    const res = await s.a.join({ joinMethod: 'token', token: token.token, publicKey: newKey().publicKey, ttl: '1h' }, { remoteAddr: '127.0.0.1' })
    return { remoteAddr: '127.0.0.1', certificate: Buffer.from(new X509Certificate(res.certificate).raw) }
  }

  it('one renewal retried through both servers at once with the same key: one generation, no lock; another key: locked, with its audit', async () => {
    const s = await servers()
    const peer = await joined(s, 'ci')
    const k = newKey()
    const got = await Promise.all(Array.from({ length: 8 }, (_x, i) => (i % 2 ? s.a : s.b).renew({ publicKey: k.publicKey, ttl: '1h' }, peer)))
    assert.deepEqual([...new Set(got.map((r) => r.generation))], [2])
    assert.deepEqual(await s.sb.listLocks(), [])
    assert.equal((await s.sb.queryAudit({ type: 'renew' })).length, 8)
    await assert.rejects(s.b.renew({ publicKey: newKey().publicKey, ttl: '1h' }, peer), (e: unknown) => e instanceof MemidError && e.code === 'ERR_STALE_GENERATION')
    assert.equal((await s.sa.listLocks()).length, 1)
    assert.deepEqual((await s.sa.queryAudit({})).filter((e) => e.type === 'generation.mismatch' || e.type === 'lock.created').map((e) => e.type), ['generation.mismatch', 'lock.created'])
  })

  it('copies racing through both servers (one identity, twelve keys at once): one renewal wins, every copy is refused, one lock row and one lock.created', async () => {
    const s = await servers()
    const peer = await joined(s, 'ci')
    const got = await Promise.allSettled(Array.from({ length: 12 }, (_x, i) => (i % 2 ? s.a : s.b).renew({ publicKey: newKey().publicKey, ttl: '1h' }, peer)))
    const won = got.filter((r) => r.status === 'fulfilled')
    assert.equal(won.length, 1, 'exactly one copy renews')
    for (const r of got) {
      if (r.status === 'rejected') assert.ok(r.reason instanceof MemidError && ['ERR_STALE_GENERATION', 'ERR_LOCKED'].includes(r.reason.code), String(r.reason))
    }
    const locks = await s.sb.listLocks()
    assert.equal(locks.length, 1, `one lock row, not one per copy: ${JSON.stringify(locks)}`)
    assert.equal((await s.sa.queryAudit({ type: 'lock.created' })).length, 1)
  })

  it('a lock committed through the other server while a renewal is in flight stops it; so does a bot deletion', async () => {
    const s = await servers()
    const peer = await joined(s, 'ci')
    const instance = (await s.sb.listInstances('ci'))[0]!.id
    s.hook.before = async () => void await s.sb.createLock({ id: randomUUID(), instance, reason: 'compromised', createdAt: new Date().toISOString() })
    await assert.rejects(s.a.renew({ publicKey: newKey().publicKey, ttl: '1h' }, peer), (e: unknown) => e instanceof MemidError && e.code === 'ERR_LOCKED')
    assert.equal((await s.sb.getInstance(instance))?.pendingGeneration, null)

    const peer2 = await joined(s, 'web')
    s.hook.before = async () => void await s.sb.deleteBot('web', new Date().toISOString())
    await assert.rejects(s.a.renew({ publicKey: newKey().publicKey, ttl: '1h' }, peer2), (e: unknown) => e instanceof MemidError && e.code === 'ERR_BOT_NOT_FOUND')
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
    assert.equal(await server.sql('SELECT count(*) FROM cas', 'e2e'), '4\n', 'the cluster-wide CAs; client CAs are per resource')
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
