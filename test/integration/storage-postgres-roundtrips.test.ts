import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { X509Certificate, randomUUID } from 'node:crypto'
import pg from 'pg'
import { startPostgres, type PostgresFixture } from '../fixtures/postgres.ts'
import { testCa } from '../fixtures/db-tunnel.ts'
import { PostgresStore } from '../../src/storage/postgres.ts'
import type { Store } from '../../src/storage/store.ts'
import { AuthService, type Peer } from '../../src/auth/auth-service.ts'
import { AdminService } from '../../src/auth/admin.ts'
import { loadOrCreateCas } from '../../src/auth/cas.ts'
import { MemidError } from '../../src/core/errors.ts'
import { systemClock } from '../../src/core/clock.ts'
import { silentLogger } from '../../src/core/log.ts'
import { newKey } from '../helpers/identity.ts'

/**
 * Database round trips per agent request on PostgreSQL, counted through the driver (every
 * `Client.query` is one request/response exchange with the server), not timed: a renewal
 * costs at most 3, whatever the machine's load.
 */

const PASSWORD = 'roundtrips-pw'
let server: PostgresFixture
let store: Store
let auth: AuthService
let admin: AdminService
let statements: string[] | undefined

const originalQuery = pg.Client.prototype.query
before(async () => {
  server = await startPostgres({ clientCaPem: (await testCa('unused client CA')).certPem, roles: [], databases: {}, passwordRole: { name: 'memid', password: PASSWORD } })
  await server.sql('CREATE DATABASE trips OWNER memid')
  store = await PostgresStore.open(`postgres://memid:${PASSWORD}@127.0.0.1:${server.port}/trips`)
  const cas = await loadOrCreateCas(store, 'pg')
  auth = new AuthService({ store, cas, clock: systemClock, logger: silentLogger() })
  admin = new AdminService({ store, clock: systemClock, audit: (ev) => auth.audit(ev) })
  await admin.addRole({ name: 'r', logins: ['deploy'] })
  // Every statement the store sends goes through Client#query (the pool lends Clients).
  pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
    const q = args[0] as string | { text?: string }
    statements?.push(typeof q === 'string' ? q : String(q?.text))
    return (originalQuery as (...a: unknown[]) => unknown).apply(this, args)
  } as typeof originalQuery
})
after(async () => {
  pg.Client.prototype.query = originalQuery
  await store?.close()
  await server?.stop()
})

/** Runs `fn` and returns the statements the store sent meanwhile. */
async function counted(fn: () => Promise<unknown>): Promise<string[]> {
  statements = []
  try {
    await fn()
    return statements
  } finally {
    statements = undefined
  }
}

function peerOf(certificatePem: string): Peer {
  return { remoteAddr: '127.0.0.1', certificate: Buffer.from(new X509Certificate(certificatePem).raw) }
}

const HB = { hostname: 'h', version: '0', os: 'linux', arch: 'x64', uptimeSeconds: 1, services: [] }
const show = (sql: string[]) => sql.map((s) => s.replace(/\s+/g, ' ').slice(0, 60)).join(' | ')

describe('PostgreSQL round trips per agent request', () => {
  it('a renewal costs at most 3 round trips (and so does the heartbeat that confirms it, and a retry)', async (t) => {
    const { token } = await admin.addBot({ name: 'rt', roles: ['r'] })
    let res = await auth.join({ joinMethod: 'token', token: token.token, publicKey: newKey().publicKey, ttl: '1h' }, { remoteAddr: '127.0.0.1' })
    for (let i = 0; i < 3; i++) {
      const k = newKey()
      const peer = peerOf(res.certificate)
      let next: Awaited<ReturnType<AuthService['renew']>> | undefined
      const renewal = await counted(async () => { next = await auth.renew({ publicKey: k.publicKey, ttl: '1h' }, peer) })
      t.diagnostic(`renewal ${i + 1}: ${renewal.length} round trips: ${show(renewal)}`)
      assert.ok(renewal.length <= 3, `renewal ${i + 1} took ${renewal.length} round trips: ${show(renewal)}`)
      // The answer was lost: the same request again gets the same generation, also in ≤ 3.
      const retry = await counted(() => auth.renew({ publicKey: k.publicKey, ttl: '1h' }, peer))
      assert.ok(retry.length <= 3, `retried renewal took ${retry.length}: ${show(retry)}`)
      res = next as NonNullable<typeof next>
      const hb = await counted(() => auth.heartbeat(HB, peerOf(res.certificate)))
      t.diagnostic(`confirming heartbeat: ${hb.length} round trips`)
      assert.ok(hb.length <= 3, `heartbeat took ${hb.length}: ${show(hb)}`)
    }
    const inst = (await store.pageInstances({ limit: 10, bot: 'rt' })).items[0]
    assert.equal(inst?.generation, 4)
    assert.equal(inst?.pendingGeneration, null)
    assert.equal((await store.queryAudit({ type: 'renew', bot: 'rt' })).length, 6, 'each renewal and retry audited with its move')
  })

  it('the fast path still refuses what the transaction would: a lock committed after authentication, a copy', async () => {
    const { token } = await admin.addBot({ name: 'rt2', roles: ['r'] })
    const res = await auth.join({ joinMethod: 'token', token: token.token, publicKey: newKey().publicKey, ttl: '1h' }, { remoteAddr: '127.0.0.1' })
    const peer = peerOf(res.certificate)
    const instance = (await store.pageInstances({ limit: 1, bot: 'rt2' })).items[0]!.id
    const next = await auth.renew({ publicKey: newKey().publicKey, ttl: '1h' }, peer)
    // Another key under the old generation while the first renewal is pending: a copy, locked once.
    await assert.rejects(auth.renew({ publicKey: newKey().publicKey, ttl: '1h' }, peer), (e: unknown) => e instanceof MemidError && e.code === 'ERR_STALE_GENERATION')
    assert.equal((await store.listLocks()).filter((l) => l.instance === instance).length, 1)
    await assert.rejects(auth.heartbeat(HB, peerOf(next.certificate)), (e: unknown) => e instanceof MemidError && e.code === 'ERR_LOCKED')

    const { token: t3 } = await admin.addBot({ name: 'rt3', roles: ['r'] })
    const r3 = await auth.join({ joinMethod: 'token', token: t3.token, publicKey: newKey().publicKey, ttl: '1h' }, { remoteAddr: '127.0.0.1' })
    await store.createLock({ id: randomUUID(), bot: 'rt3', reason: 'compromised', createdAt: new Date().toISOString() })
    await assert.rejects(auth.renew({ publicKey: newKey().publicKey, ttl: '1h' }, peerOf(r3.certificate)), (e: unknown) => e instanceof MemidError && e.code === 'ERR_LOCKED')
    assert.equal((await store.pageInstances({ limit: 1, bot: 'rt3' })).items[0]?.pendingGeneration, null, 'nothing moved')
  })

  it('a join costs at most 6 round trips; a certificate issue is reported', async (t) => {
    const { token } = await admin.addBot({ name: 'rt4', roles: ['r'] })
    let res: Awaited<ReturnType<AuthService['join']>> | undefined
    const joinSql = await counted(async () => { res = await auth.join({ joinMethod: 'token', token: token.token, publicKey: newKey().publicKey, ttl: '1h' }, { remoteAddr: '127.0.0.1' }) })
    t.diagnostic(`join: ${joinSql.length} round trips: ${show(joinSql)}`)
    const ssh = await counted(() => auth.issueSsh({ publicKey: newKey().publicKey, principals: ['deploy'], ttl: '10m' }, peerOf(res!.certificate)))
    t.diagnostic(`ssh certificate: ${ssh.length} round trips: ${show(ssh)}`)
    assert.ok(joinSql.length <= 6, `join took ${joinSql.length}: ${show(joinSql)}`)
    assert.ok(ssh.length > 0)
  })
})
