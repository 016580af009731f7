import { randomUUID } from 'node:crypto'
// Retention on a manual clock: instances go 7 days (instance_ttl) after their identity
// expired and they were last seen; audit events after 90 days (audit_retention).
import { afterEach, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { DEFAULT_AUDIT_RETENTION_MS, DEFAULT_INSTANCE_TTL_MS, Retention } from '../../../src/auth/retention.ts'
import { SqliteStore } from '../../../src/storage/sqlite.ts'
import { silentLogger } from '../../../src/core/log.ts'
import { loadAuthConfig } from '../../../src/config/auth.ts'
import type { BotInstance, NewAuditEvent } from '../../../src/storage/store.ts'
import { acceptUnused, instance, token } from '../../helpers/store-contract.ts'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'

const HOUR = 3_600_000
const DAY = 24 * HOUR
const T = Date.parse('2030-03-01T00:00:00.000Z')
const iso = (ms: number) => new Date(ms).toISOString()

const stores: SqliteStore[] = []
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close()
})

async function setup() {
  const store = SqliteStore.open(':memory:')
  stores.push(store)
  const clock = { t: T, now() { return this.t } }
  const audited: NewAuditEvent[] = []
  const retention = new Retention({ store, clock, logger: silentLogger(), audit: async (ev) => void audited.push(ev) })
  await store.createBot({ id: randomUUID(), name: 'ci', roles: ['r'], maxTtlMs: 12 * HOUR, createdAt: iso(T) })
  let n = 0
  const join = async (at: number, over: Partial<BotInstance> = {}) => {
    const name = `tok-${(n++).toString(16).padStart(12, '0')}`
    await store.createToken(token(name, over.bot ?? 'ci'))
    const auth = { time: iso(at), joinMethod: 'token', remoteAddr: '127.0.0.1', generation: 1 }
    return store.consumeToken(name, acceptUnused(instance(name, { createdAt: iso(at), initialAuthentication: auth, latestAuthentications: [auth], ...over })))
  }
  return { store, clock, retention, audited, join }
}

describe('retention', () => {
  it('removes an instance instance_ttl after its identity expired, not before; heartbeats and renewals keep it', async () => {
    const { store, clock, retention, audited, join } = await setup()
    const idle = await join(T)
    const renewed = await join(T)
    const beating = await join(T)
    const gone = await join(T, { bot: 'deleted-bot' })
    // identity (12h max TTL) expires at T+12h; forgotten 7 days later
    clock.t = T + 12 * HOUR + DEFAULT_INSTANCE_TTL_MS - 1
    await store.updateInstance(renewed.id, (i) => ({ instance: { ...i!, latestAuthentications: [...i!.latestAuthentications, { time: iso(T + 5 * DAY), joinMethod: 'token', remoteAddr: '127.0.0.1', generation: 2 }] } }))
    await store.updateInstance(beating.id, (i) => ({ instance: { ...i!, heartbeats: [{ time: iso(T + 7 * DAY), hostname: 'h', version: '0', os: 'linux', arch: 'x64', uptimeSeconds: 1, services: [] }] } }))
    assert.deepEqual(await retention.sweep(), { instancesRemoved: 0, auditPruned: 0 })
    clock.t += 1
    assert.deepEqual(await retention.sweep(), { instancesRemoved: 1, auditPruned: 0 })
    assert.equal(await store.getInstance(idle.id), undefined)
    assert.ok(await store.getInstance(renewed.id))
    assert.ok(await store.getInstance(beating.id))
    assert.ok(await store.getInstance(gone.id), 'a deleted bot\'s instance is kept for the longest identity lifetime')
    clock.t = T + 5 * DAY + 12 * HOUR + DEFAULT_INSTANCE_TTL_MS
    assert.equal((await retention.sweep()).instancesRemoved, 1)
    assert.equal(await store.getInstance(renewed.id), undefined)
    clock.t = T + 60 * DAY
    assert.equal((await retention.sweep()).instancesRemoved, 2)
    assert.deepEqual((await store.pageInstances({ limit: 10 })).items, [])
    assert.ok(audited.every((e) => e.type === 'retention.pruned'))
    assert.equal(audited.length, 3)
  })

  it('prunes audit events older than audit_retention in batches, keeps newer ones', async () => {
    const { store, clock, retention } = await setup()
    for (let k = 0; k < 2500; k++) await store.appendAudit({ time: iso(T + k * 1000), type: 'old', success: true, fields: {} })
    await store.appendAudit({ time: iso(T + 10 * DAY), type: 'new', success: true, fields: {} })
    clock.t = T + DEFAULT_AUDIT_RETENTION_MS + 2500 * 1000
    assert.equal((await retention.sweep()).auditPruned, 2500)
    assert.deepEqual((await store.queryAudit({})).map((e) => e.type), ['new'])
  })

  it('instance_ttl and audit_retention come from the auth config file', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'memid-retention-'))
    try {
      const file = path.join(dir, 'auth.yaml')
      writeFileSync(file, 'version: v1\ninstance_ttl: 2d\naudit_retention: 30d\n')
      const cfg = loadAuthConfig({ config: file, dataDir: dir })
      assert.equal(cfg.instanceTtlMs, 2 * DAY)
      assert.equal(cfg.auditRetentionMs, 30 * DAY)
      writeFileSync(file, 'version: v1\naudit_retention: forever\n')
      assert.throws(() => loadAuthConfig({ config: file, dataDir: dir }), /audit_retention/)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
