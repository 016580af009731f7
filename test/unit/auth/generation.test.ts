import { after, afterEach, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import { X509Certificate, randomUUID } from 'node:crypto'
import { AuthService, type Peer } from '../../../src/auth/auth-service.ts'
import { AdminService } from '../../../src/auth/admin.ts'
import { loadOrCreateCas } from '../../../src/auth/cas.ts'
import { SqliteStore } from '../../../src/storage/sqlite.ts'
import type { Store } from '../../../src/storage/store.ts'
import type { IdentityResponse } from '../../../src/api/types.ts'
import { MemidError } from '../../../src/core/errors.ts'
import { silentLogger } from '../../../src/core/log.ts'
import { newKey } from '../../helpers/identity.ts'

/**
 * The generation state machine of the README ("Renewal and generations"), row by row,
 * against the real AuthService on a real SQLite store, in process. Peers present the DER of
 * the certificate they hold, as the TLS layer hands it over after verifying it.
 */

let dir: string
before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'memid-gen-'))
})
after(() => rmSync(dir, { recursive: true, force: true }))

interface Held {
  res: IdentityResponse
  peer: Peer
}

interface World {
  file: string
  store: SqliteStore
  auth: AuthService
  admin: AdminService
  clock: { now(): number; offset: number }
  /** Store method calls that write, in order, while `recording` is on. */
  writes: string[]
  /** Runs once, just before the next updateInstance transaction starts. */
  beforeUpdate: (() => Promise<void>) | undefined
}

const WRITES = new Set(['updateInstance', 'appendAudit', 'createLock', 'consumeToken', 'deleteBot', 'createBot'])

const opened: World[] = []
afterEach(async () => {
  for (const w of opened.splice(0)) await w.store.close()
})

async function world(): Promise<World> {
  const file = path.join(dir, `${randomUUID()}.db`)
  const store = SqliteStore.open(file)
  const clock = { offset: 0, now() { return Date.now() + this.offset } }
  const w = { file, store, clock, writes: [] as string[], beforeUpdate: undefined } as unknown as World
  // The real store, watched: which writes a request makes, and a hook into the moment
  // between authentication and the generation transaction.
  const watched = new Proxy(store, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver)
      if (typeof v !== 'function') return v
      return async (...args: unknown[]) => {
        if (WRITES.has(String(prop))) w.writes.push(String(prop))
        if (prop === 'updateInstance' && w.beforeUpdate) {
          const hook = w.beforeUpdate
          w.beforeUpdate = undefined
          await hook()
        }
        return (v as (...a: unknown[]) => unknown).apply(target, args)
      }
    },
  }) as Store
  const cas = await loadOrCreateCas(store, 'test')
  w.auth = new AuthService({ store: watched, cas, clock, logger: silentLogger() })
  w.admin = new AdminService({ store: watched, clock, audit: (ev) => w.auth.audit(ev) })
  opened.push(w)
  return w
}

async function joinBot(w: World, name = 'ci', ttl = '1h'): Promise<Held> {
  if ((await w.store.getRole('r')) === undefined) await w.admin.addRole({ name: 'r', logins: ['deploy'] })
  const { token } = await w.admin.addBot({ name, roles: ['r'] })
  const res = await w.auth.join({ joinMethod: 'token', token: token.token, publicKey: newKey().publicKey, ttl }, { remoteAddr: '127.0.0.1' })
  return held(res)
}

function held(res: IdentityResponse): Held {
  return { res, peer: { remoteAddr: '127.0.0.1', certificate: Buffer.from(new X509Certificate(res.certificate).raw) } }
}

async function renew(w: World, id: Held, publicKey = newKey().publicKey): Promise<Held> {
  return held(await w.auth.renew({ publicKey, ttl: '1h' }, id.peer))
}

const heartbeat = (w: World, id: Held) =>
  w.auth.heartbeat({ hostname: 'h', version: '0', os: 'linux', arch: 'x64', uptimeSeconds: 1, services: [] }, id.peer)

async function rejects(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof MemidError, String(e))
    assert.equal(e.code, code, e.message)
    return true
  })
}

async function state(w: World, id: Held): Promise<[number, number | null]> {
  const i = await w.store.getInstance(id.res.instanceId)
  return [i!.generation, i!.pendingGeneration]
}

async function locked(w: World, id: Held): Promise<boolean> {
  return (await w.store.listLocks()).some((l) => l.instance === id.res.instanceId)
}

/** A trigger that makes the real database refuse some inserts, as a full disk would. */
function failInserts(w: World, table: string, when = '1'): () => void {
  const db = new DatabaseSync(w.file)
  db.exec(`CREATE TRIGGER fail_${table} BEFORE INSERT ON ${table} WHEN ${when} BEGIN SELECT RAISE(ABORT, 'disk full'); END`)
  return () => {
    db.exec(`DROP TRIGGER fail_${table}`)
    db.close()
  }
}

describe('generation state machine', () => {
  it('settled n, renew with n: generation n+1 pending, bound to the new key', async () => {
    const w = await world()
    const id = await joinBot(w)
    const next = await renew(w, id)
    assert.equal(next.res.generation, 2)
    assert.deepEqual(await state(w, id), [1, 2])
  })

  it('settled n, heartbeat or certificate with n: accepted, nothing moves', async () => {
    const w = await world()
    const id = await joinBot(w)
    await heartbeat(w, id)
    await w.auth.issueSsh({ publicKey: newKey().publicKey }, id.peer)
    assert.deepEqual(await state(w, id), [1, null])
  })

  it('pending n+1, renew with n and the same key: the same pending generation, any number of times', async () => {
    const w = await world()
    const id = await joinBot(w)
    const k = newKey()
    for (let i = 0; i < 10; i++) assert.equal((await renew(w, id, k.publicKey)).res.generation, 2)
    assert.deepEqual(await state(w, id), [1, 2])
    assert.equal(await locked(w, id), false)
  })

  it('pending n+1, renew with n and another key: a copy, locked and audited', async () => {
    const w = await world()
    const id = await joinBot(w)
    await renew(w, id)
    await rejects(renew(w, id), 'ERR_STALE_GENERATION')
    assert.equal(await locked(w, id), true)
    assert.equal((await w.store.queryAudit({ type: 'generation.mismatch' })).length, 1)
  })

  it('pending n+1, heartbeat or certificate with n: accepted (the agent has not switched yet), still pending', async () => {
    const w = await world()
    const id = await joinBot(w)
    await renew(w, id)
    await heartbeat(w, id)
    await w.auth.issueSsh({ publicKey: newKey().publicKey }, id.peer)
    assert.deepEqual(await state(w, id), [1, 2])
  })

  it('pending n+1, any request with n+1: confirms it; a renewal then moves to n+2', async () => {
    const w = await world()
    const id = await joinBot(w)
    const next = await renew(w, id)
    await heartbeat(w, next)
    assert.deepEqual(await state(w, id), [2, null])
    const third = await renew(w, next)
    assert.equal(third.res.generation, 3)
    const fourth = await renew(w, third) // renewing with the pending one confirms it too
    assert.equal(fourth.res.generation, 4)
    assert.deepEqual(await state(w, id), [3, 4])
  })

  it('any request with a generation older than the current one: a copy, locked', async () => {
    const w = await world()
    for (const op of ['renew', 'heartbeat', 'cert'] as const) {
      const id = await joinBot(w, `old-${op}`)
      const next = await renew(w, id)
      await heartbeat(w, next)
      const p = op === 'renew' ? renew(w, id) : op === 'heartbeat' ? heartbeat(w, id) : w.auth.issueSsh({ publicKey: newKey().publicKey }, id.peer)
      await rejects(p, 'ERR_STALE_GENERATION')
      assert.equal(await locked(w, id), true, op)
      await rejects(heartbeat(w, next), 'ERR_LOCKED')
    }
  })

  it('a lock committed while a renewal is in flight stops that renewal: no certificate, nothing moves', async () => {
    const w = await world()
    const id = await joinBot(w)
    // The lock commits after the request authenticated, before its generation transaction.
    w.beforeUpdate = async () => void await w.store.createLock({ id: randomUUID(), instance: id.res.instanceId, reason: 'compromised', createdAt: new Date().toISOString() })
    await rejects(renew(w, id), 'ERR_LOCKED')
    assert.deepEqual(await state(w, id), [1, null])
    assert.equal((await w.store.queryAudit({ type: 'renew' })).length, 0)
    w.beforeUpdate = async () => void await w.store.createLock({ id: randomUUID(), bot: 'ci', reason: 'bot compromised', createdAt: new Date().toISOString() })
    await rejects(w.auth.issueSsh({ publicKey: newKey().publicKey }, id.peer), 'ERR_LOCKED')
  })

  it('a bot deleted while a renewal is in flight: the renewal is refused', async () => {
    const w = await world()
    const id = await joinBot(w)
    w.beforeUpdate = async () => void await w.admin.removeBot('ci')
    await rejects(renew(w, id), 'ERR_BOT_NOT_FOUND')
    assert.deepEqual(await state(w, id), [1, null])
  })

  it('an identity outside its validity (service clock) is refused, whatever the TLS layer said', async () => {
    const w = await world()
    const id = await joinBot(w, 'ci', '5s')
    w.clock.offset = 6_000
    await rejects(renew(w, id), 'ERR_CERT_EXPIRED')
    await rejects(heartbeat(w, id), 'ERR_CERT_EXPIRED')
    w.clock.offset = -120_000
    await rejects(heartbeat(w, id), 'ERR_CERT_EXPIRED')
  })

  it('a renewal is one durable commit: the generation move and its audit rows', async () => {
    const w = await world()
    const id = await joinBot(w)
    w.writes.length = 0
    await renew(w, id)
    assert.deepEqual(w.writes, ['updateInstance'])
    const types = (await w.store.queryAudit({})).map((e) => e.type)
    assert.ok(types.includes('renew') && types.filter((t) => t === 'cert.issued').length === 2, types.join(','))
  })

  it('a certificate request is one durable commit: the instance\'s check and the certificate\'s audit row', async () => {
    const w = await world()
    const id = await joinBot(w)
    w.writes.length = 0
    const cert = await w.auth.issueSsh({ publicKey: newKey().publicKey, principals: ['deploy'] }, id.peer)
    assert.deepEqual(w.writes, ['updateInstance'])
    const issued = await w.store.queryAudit({ type: 'cert.issued' })
    assert.ok(issued.some((e) => e.fields.kind === 'ssh' && e.fields.serial === cert.serial), 'its audit row')
    w.writes.length = 0
    await rejects(w.auth.issueSsh({ publicKey: newKey().publicKey, principals: ['root'] }, id.peer), 'ERR_ACCESS_DENIED')
    assert.deepEqual(w.writes, ['updateInstance'], 'a denial too')
    assert.equal((await w.store.queryAudit({ type: 'cert.denied' })).length, 1)
  })

  it('no certificate goes out without its audit row: when the row cannot be written the request fails', async () => {
    const w = await world()
    const id = await joinBot(w)
    const heal = failInserts(w, 'audit_events', "NEW.type = 'cert.issued'")
    await assert.rejects(w.auth.issueSsh({ publicKey: newKey().publicKey, principals: ['deploy'] }, id.peer), (e: unknown) => e instanceof MemidError)
    heal()
    assert.equal((await w.store.queryAudit({ type: 'cert.issued' })).filter((e) => e.fields.kind === 'ssh').length, 0)
    assert.equal((await w.auth.issueSsh({ publicKey: newKey().publicKey, principals: ['deploy'] }, id.peer)).principals[0], 'deploy')
  })

  it('a renewal whose audit rows cannot be written moves nothing', async () => {
    const w = await world()
    const id = await joinBot(w)
    const heal = failInserts(w, 'audit_events', "NEW.type = 'cert.issued'")
    await assert.rejects(renew(w, id))
    assert.deepEqual(await state(w, id), [1, null], 'no pending generation without its audit')
    heal()
    assert.equal((await renew(w, id)).res.generation, 2)
  })

  it('a copy\'s lock and its audit are one commit: if either write fails, neither is kept', async () => {
    const w = await world()
    const id = await joinBot(w)
    await renew(w, id)
    for (const [table, when] of [['locks', '1'], ['audit_events', "NEW.type = 'generation.mismatch'"]] as const) {
      const heal = failInserts(w, table, when)
      await assert.rejects(renew(w, id), (e: unknown) => e instanceof MemidError && e.code !== 'ERR_STALE_GENERATION')
      heal()
      assert.equal(await locked(w, id), false, `${table}: no lock without its audit`)
      assert.equal((await w.store.queryAudit({ type: 'generation.mismatch' })).length, 0, `${table}: no audit without its lock`)
      assert.deepEqual(await state(w, id), [1, 2])
    }
    await rejects(renew(w, id), 'ERR_STALE_GENERATION')
    assert.equal(await locked(w, id), true)
    assert.equal((await w.store.queryAudit({ type: 'generation.mismatch' })).length, 1)
  })
})
