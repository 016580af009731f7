import { afterEach, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPairSync, randomUUID } from 'node:crypto'
import { INSTANCE_HISTORY, type Authentication, type Bot, type BotInstance, type Heartbeat, type JoinToken, type Role, type Store, type StoredCa } from '../../src/storage/store.ts'
import { MemidError } from '../../src/core/errors.ts'

/**
 * The behaviour every Store backend owes the auth service, run against each backend
 * (test/unit/storage/sqlite.test.ts, test/integration/storage-postgres.test.ts).
 */
export interface StoreBackend {
  /** A new, empty database; what `open` takes. */
  newDatabase(): Promise<string>
  /** Opens a store on `db`; opening the same `db` twice is two auth servers sharing it. */
  open(db: string): Promise<Store>
}

export const T0 = '2030-01-01T00:00:00.000Z'

/** A resource's client CA as the store sees it (key bytes and PEM are opaque to it). */
export function clientCa(kind: 'kube-client' | 'db-client', n: number): StoredCa {
  return { kind, privateKeyDer: Buffer.from([n, 0, n]), publicMaterial: `PEM-${kind}-${n}`, createdAt: T0 }
}

export function role(name: string, over: Partial<Role> = {}): Role {
  return {
    name, logins: ['deploy'], kubeClusters: ['prod'], kubeUsers: ['ci'], kubeGroups: ['viewers'], databases: ['orders'],
    dbUsers: ['app'], dbNames: ['*'], createdAt: T0, ...over,
  }
}

/** A bot record; its id derives from the name so tests can compare whole records. */
export function bot(name: string, over: Partial<Bot> = {}): Bot {
  const hex = Buffer.from(name).toString('hex').padEnd(32, '0').slice(0, 32)
  return { id: hex, name, roles: [], maxTtlMs: 1, createdAt: T0, ...over }
}

export function token(name: string, bot = 'ci', over: Partial<JoinToken> = {}): JoinToken {
  return { name, bot, joinMethod: 'token', secretHash: 'ab'.repeat(32), createdAt: T0, expiresAt: '2030-01-01T00:30:00.000Z', ...over }
}

function auth(generation: number, time = T0): Authentication {
  return { time, joinMethod: 'token', remoteAddr: '127.0.0.1', generation }
}

function heartbeat(i: number): Heartbeat {
  return { time: T0, hostname: `h${i}`, version: '0.1.0', os: 'linux', arch: 'x64', uptimeSeconds: i, services: [] }
}

export function instance(tokenName: string, over: Partial<BotInstance> = {}): BotInstance {
  return {
    id: randomUUID(), bot: 'ci', botId: bot('ci').id, joinMethod: 'token', tokenName, createdAt: T0, generation: 1, pendingGeneration: null,
    pendingRetries: 0, initialAuthentication: auth(1), latestAuthentications: [auth(1)], heartbeats: [], ...over,
  }
}

/** What the auth service's join does: refuse unknown or used tokens by throwing. */
export function acceptUnused(inst: BotInstance) {
  return (t: JoinToken | undefined): BotInstance => {
    if (t === undefined) throw new MemidError('ERR_TOKEN_INVALID', 'no such token')
    if (t.usedAt !== undefined) throw new MemidError('ERR_TOKEN_USED', 'token already used')
    return inst
  }
}

export async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => err instanceof MemidError && err.code === code)
}

const LEGACY_DATA = JSON.stringify({ joinMethod: 'token', tokenName: 'tok-1', initialAuthentication: auth(1), latestAuthentications: [auth(1)], heartbeats: [] })
export const LEGACY_INSTANCES = {
  /** Joined "ci" before it was deleted and created again: belongs to a deleted bot. */
  revived: '00000000-0000-4000-8000-000000000001',
  /** Joined the "ci" that exists now. */
  current: '00000000-0000-4000-8000-000000000002',
  /** Its bot "gone" was deleted. */
  orphan: '00000000-0000-4000-8000-000000000003',
}

/**
 * Rows as memid wrote them before bots had ids (schema version 1), for upgrade tests: bot
 * "ci" deleted and created again at 00:10, an instance from each of its lives, and one of
 * a bot deleted for good.
 */
export const LEGACY_V1_ROWS = `
  INSERT INTO bots (name, roles, max_ttl_ms, created_at) VALUES ('ci', '[]', 1, '2030-01-01T00:10:00.000Z'), ('web', '[]', 1, '2030-01-01T00:00:00.000Z');
  INSERT INTO bot_instances (id, bot, generation, pending_generation, pending_retries, created_at, data) VALUES
    ('${LEGACY_INSTANCES.revived}', 'ci', 1, NULL, 0, '2030-01-01T00:05:00.000Z', '${LEGACY_DATA}'),
    ('${LEGACY_INSTANCES.current}', 'ci', 3, 4, 1, '2030-01-01T00:15:00.000Z', '${LEGACY_DATA}'),
    ('${LEGACY_INSTANCES.orphan}', 'gone', 1, NULL, 0, '2030-01-01T00:05:00.000Z', '${LEGACY_DATA}');`

/** What the upgrade must make of LEGACY_V1_ROWS: ids for bots, instances of deleted bots ended. */
export async function assertLegacyUpgraded(s: Store): Promise<void> {
  const ci = await s.getBot('ci')
  const web = await s.getBot('web')
  assert.match(ci?.id ?? '', /^[0-9a-f]{32}$/)
  assert.match(web?.id ?? '', /^[0-9a-f]{32}$/)
  assert.notEqual(ci?.id, web?.id)
  const current = await s.getInstance(LEGACY_INSTANCES.current)
  assert.equal(current?.botId, ci?.id)
  assert.equal(current?.endedAt, undefined)
  assert.deepEqual([current?.generation, current?.pendingGeneration, current?.pendingKey], [3, 4, undefined])
  for (const id of [LEGACY_INSTANCES.revived, LEGACY_INSTANCES.orphan]) {
    const i = await s.getInstance(id)
    assert.equal(i?.botId, '', `${id}: no bot`)
    assert.ok(i?.endedAt && Math.abs(Date.parse(i.endedAt) - Date.now()) < 120_000, `${id}: ended by the upgrade, at ${i?.endedAt}`)
  }
  const listed = await s.pageInstances({ limit: 10 })
  assert.deepEqual((await s.pageInstancesJson({ limit: 10 })).items, listed.items.map((i) => JSON.stringify(i)), 'old records list as JSON text exactly as re-serialized')
}

/** Registers the contract's tests under `describe(name)`. */
export function storeContract(name: string, backend: StoreBackend): void {
  describe(name, () => {
    const opened: Store[] = []
    const open = async (db: string): Promise<Store> => {
      const s = await backend.open(db)
      opened.push(s)
      return s
    }
    const store = async (): Promise<Store> => open(await backend.newDatabase())
    /** Two stores on one new database: two auth servers. */
    const pair = async (): Promise<[Store, Store]> => {
      const db = await backend.newDatabase()
      return [await open(db), await open(db)]
    }
    afterEach(async () => {
      for (const s of opened.splice(0)) await s.close()
    })

    describe('records', () => {
      it('round-trips roles, bots, resources and locks', async () => {
        const s = await store()
        await s.createRole(role('b-role', { dbNames: [] }))
        await s.createRole(role('a-role'))
        assert.deepEqual((await s.listRoles()).map((r) => r.name), ['a-role', 'b-role'])
        assert.deepEqual(await s.getRole('b-role'), role('b-role', { dbNames: [] }))
        assert.equal(await s.getRole('nope'), undefined)
        assert.equal(await s.deleteRole('a-role'), true)
        assert.equal(await s.deleteRole('a-role'), false)

        await s.createBot(bot('ci', { roles: ['b-role'], maxTtlMs: 3_600_000 }))
        assert.deepEqual(await s.getBot('ci'), bot('ci', { roles: ['b-role'], maxTtlMs: 3_600_000 }))

        await s.putResource({ kind: 'kube', name: 'prod', uri: 'https://10.0.0.1:6443', caPem: 'PEM', createdAt: T0 }, clientCa('kube-client', 1))
        await s.putResource({ kind: 'db', name: 'prod', uri: 'postgres://10.0.0.2:5432', createdAt: T0 }, clientCa('db-client', 2))
        assert.deepEqual(await s.getResource('kube', 'prod'), { kind: 'kube', name: 'prod', uri: 'https://10.0.0.1:6443', caPem: 'PEM', createdAt: T0 })
        assert.deepEqual(await s.getResource('db', 'prod'), { kind: 'db', name: 'prod', uri: 'postgres://10.0.0.2:5432', createdAt: T0 })
        assert.equal((await s.listResources('db')).length, 1)
        assert.equal(await s.deleteResource('db', 'prod'), true)
        assert.equal(await s.getResource('db', 'prod'), undefined)
        assert.ok(await s.getResource('kube', 'prod'), 'same name, other kind, untouched')

        await s.createLock({ id: 'l1', bot: 'ci', reason: 'compromised', createdAt: T0 })
        await s.createLock({ id: 'l2', instance: 'i-2', reason: 'copied', createdAt: T0 })
        await s.createLock({ id: 'l3', bot: 'other', reason: 'x', createdAt: T0 })
        assert.deepEqual((await s.locksFor('ci', 'i-9')).map((l) => l.id), ['l1'])
        assert.deepEqual((await s.locksFor('nobody', 'i-2')).map((l) => l.id), ['l2'])
        assert.deepEqual((await s.locksFor('ci', 'i-2')).map((l) => l.id).sort(), ['l1', 'l2'])
        assert.deepEqual(await s.locksFor('nobody', 'i-9'), [])
        assert.deepEqual((await s.listLocks()).find((l) => l.id === 'l2'), { id: 'l2', instance: 'i-2', reason: 'copied', createdAt: T0 })
        assert.equal(await s.deleteLock('l1'), true)
        assert.deepEqual(await s.locksFor('ci', 'i-9'), [])
      })

      it('lists sort by byte order, whatever the database locale', async () => {
        const s = await store()
        for (const n of ['a', 'B', '_x', 'ä']) {
          await s.createRole(role(n))
          await s.createBot(bot(n))
        }
        const bytes = ['B', '_x', 'a', 'ä']
        assert.deepEqual((await s.listRoles()).map((r) => r.name), bytes)
        assert.deepEqual((await s.listBots()).map((b) => b.name), bytes)
      })

      it('keeps large and awkward values exactly: 720h TTLs, quotes, unicode, NUL-bearing key bytes', async () => {
        const s = await store()
        await s.createBot(bot('long', { roles: ["it's", 'ünï'], maxTtlMs: 720 * 3_600_000 }))
        assert.deepEqual(await s.getBot('long'), bot('long', { roles: ["it's", 'ünï'], maxTtlMs: 720 * 3_600_000 }))
        await s.createLock({ id: 'q', bot: 'long', reason: `'; DROP TABLE locks; -- "quoted" \\ ✓`, createdAt: T0 })
        assert.equal((await s.listLocks())[0]?.reason, `'; DROP TABLE locks; -- "quoted" \\ ✓`)
        const der = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'der', type: 'pkcs8' })
        const withNul = Buffer.concat([Buffer.from([0, 0, 255]), der])
        await s.putCaIfAbsent({ kind: 'bot', privateKeyDer: Buffer.from(withNul), publicMaterial: 'PEM', createdAt: T0 })
        assert.deepEqual((await s.getCa('bot'))?.privateKeyDer, withNul)
      })

      it('duplicate names are ERR_ALREADY_EXISTS and change nothing', async () => {
        const s = await store()
        await s.createRole(role('ops'))
        await rejectsWith(s.createRole(role('ops', { logins: ['root'] })), 'ERR_ALREADY_EXISTS')
        assert.deepEqual((await s.getRole('ops'))?.logins, ['deploy'])

        await s.createBot(bot('ci'))
        await rejectsWith(s.createBot(bot('ci', { id: bot('other').id, roles: ['x'], maxTtlMs: 2 })), 'ERR_ALREADY_EXISTS')
        await rejectsWith(s.createBot(bot('other', { id: bot('ci').id })), 'ERR_ALREADY_EXISTS')

        await s.createToken(token('tok-000000000001'))
        await rejectsWith(s.createToken(token('tok-000000000001')), 'ERR_ALREADY_EXISTS')

        await s.putResource({ kind: 'kube', name: 'prod', uri: 'https://a:1', createdAt: T0 }, clientCa('kube-client', 1))
        await rejectsWith(s.putResource({ kind: 'kube', name: 'prod', uri: 'https://b:1', createdAt: T0 }, clientCa('kube-client', 2)), 'ERR_ALREADY_EXISTS')
        assert.equal((await s.getResource('kube', 'prod'))?.uri, 'https://a:1')
        assert.equal((await s.getResourceCa('kube', 'prod'))?.publicMaterial, 'PEM-kube-client-1', 'the refused add left the CA alone')

        await s.createLock({ id: 'l', bot: 'ci', reason: 'r', createdAt: T0 })
        await rejectsWith(s.createLock({ id: 'l', bot: 'ci', reason: 'r', createdAt: T0 }), 'ERR_ALREADY_EXISTS')
      })

      it('putCaIfAbsent keeps the first CA of a kind', async () => {
        const s = await store()
        const first = { kind: 'tls' as const, privateKeyDer: Buffer.from([1, 2, 3]), publicMaterial: 'PEM-1', createdAt: T0 }
        assert.deepEqual(await s.putCaIfAbsent(first), first)
        const second = await s.putCaIfAbsent({ ...first, privateKeyDer: Buffer.from([9]), publicMaterial: 'PEM-2' })
        assert.equal(second.publicMaterial, 'PEM-1')
        assert.deepEqual([...second.privateKeyDer], [1, 2, 3])
        const read = await s.getCa('tls')
        assert.deepEqual([...read!.privateKeyDer], [1, 2, 3])
        assert.equal(await s.getCa('ssh-user'), undefined)
      })

      it('each resource has its own client CA; rm drops it unless keepCa, and a re-add reuses only a kept one', async () => {
        const s = await store()
        const kube = (name: string) => ({ kind: 'kube' as const, name, uri: 'https://a:1', createdAt: T0 })
        assert.deepEqual(await s.putResource(kube('dev'), clientCa('kube-client', 1)), { keptCa: false })
        assert.deepEqual(await s.putResource(kube('prod'), clientCa('kube-client', 2)), { keptCa: false })
        await s.putResource({ kind: 'db', name: 'prod', uri: 'postgres://a:1', createdAt: T0 }, clientCa('db-client', 3))
        assert.deepEqual(await s.getResourceCa('kube', 'dev'), clientCa('kube-client', 1))
        assert.deepEqual(await s.getResourceCa('kube', 'prod'), clientCa('kube-client', 2))
        assert.deepEqual(await s.getResourceCa('db', 'prod'), clientCa('db-client', 3), 'same name, other kind: its own CA')
        assert.equal(await s.getResourceCa('kube', 'nope'), undefined)

        assert.equal(await s.deleteResource('kube', 'prod'), true)
        assert.equal(await s.getResourceCa('kube', 'prod'), undefined, 'rm drops the CA')
        assert.deepEqual(await s.putResource(kube('prod'), clientCa('kube-client', 4)), { keptCa: false })
        assert.equal((await s.getResourceCa('kube', 'prod'))?.publicMaterial, 'PEM-kube-client-4', 'a re-added resource gets the new CA')

        assert.equal(await s.deleteResource('kube', 'prod', { keepCa: true }), true)
        assert.equal(await s.getResource('kube', 'prod'), undefined)
        assert.deepEqual(await s.putResource(kube('prod'), clientCa('kube-client', 5)), { keptCa: true })
        assert.equal((await s.getResourceCa('kube', 'prod'))?.publicMaterial, 'PEM-kube-client-4', 'the kept CA, not the new one')

        assert.equal(await s.deleteResource('kube', 'prod', { keepCa: true }), true)
        assert.equal(await s.deleteResource('kube', 'prod', { keepCa: true }), false, 'nothing left to remove but the kept CA')
        assert.equal(await s.deleteResource('kube', 'prod'), true, 'rm without keepCa drops a kept CA')
        assert.equal(await s.getResourceCa('kube', 'prod'), undefined)
        assert.equal(await s.deleteResource('kube', 'prod'), false)
        assert.equal(await s.deleteResource('db', 'nope', { keepCa: true }), false)
        assert.deepEqual(await s.getResourceCa('db', 'prod'), clientCa('db-client', 3), 'other resources untouched')
      })

      it('putResourceCaIfAbsent gives a CA only to a resource without one, once across servers', async () => {
        const [a, b] = await pair()
        const got = await Promise.all([1, 2, 3, 4].map((n) => (n % 2 ? a : b).putResourceCaIfAbsent('db', 'orders', clientCa('db-client', n))))
        const winner = (await a.getResourceCa('db', 'orders'))!.publicMaterial
        assert.deepEqual(got.map((c) => c.publicMaterial), [winner, winner, winner, winner])
        assert.equal((await b.putResourceCaIfAbsent('db', 'orders', clientCa('db-client', 9))).publicMaterial, winner)
      })

      it('two servers creating the CAs at once end up with one CA of each kind', async () => {
        const [a, b] = await pair()
        const ca = (n: number) => ({ kind: 'ssh-user' as const, privateKeyDer: Buffer.from([n]), publicMaterial: `PEM-${n}`, createdAt: T0 })
        const got = await Promise.all([a.putCaIfAbsent(ca(1)), b.putCaIfAbsent(ca(2)), a.putCaIfAbsent(ca(3)), b.putCaIfAbsent(ca(4))])
        const winner = (await a.getCa('ssh-user'))!.publicMaterial
        assert.deepEqual(got.map((c) => c.publicMaterial), [winner, winner, winner, winner])
      })

      it('deleting a bot removes its unused tokens and ends its instances, keeping both as records', async () => {
        const s = await store()
        await s.createBot(bot('ci'))
        await s.createToken(token('tok-00000000000a'))
        await s.createToken(token('tok-00000000000b'))
        await s.createToken(token('tok-00000000000c', 'other'))
        await s.createToken(token('tok-00000000000d', 'other'))
        const inst = await s.consumeToken('tok-00000000000a', acceptUnused(instance('tok-00000000000a')))
        const others = await s.consumeToken('tok-00000000000d', acceptUnused(instance('tok-00000000000d', { bot: 'other', botId: bot('other').id })))
        const ended = '2030-01-02T00:00:00.000Z'
        assert.deepEqual(await s.deleteBot('ci', ended), { endedInstances: 1 })
        assert.equal(await s.getBot('ci'), undefined)
        assert.ok(await s.getToken('tok-00000000000a'), 'the used token stays as a record')
        assert.equal(await s.getToken('tok-00000000000b'), undefined)
        assert.ok(await s.getToken('tok-00000000000c'), "another bot's token is untouched")
        assert.equal((await s.getInstance(inst.id))?.endedAt, ended, 'the instance stays, ended')
        assert.equal((await s.getInstance(others.id))?.endedAt, undefined, "another bot's instance is untouched")
        assert.equal(await s.deleteBot('ci', ended), undefined)
        // A bot created again under the name is a new bot; the old instance stays ended.
        await s.createBot(bot('ci', { id: 'ab'.repeat(16) }))
        assert.equal((await s.getBot('ci'))?.id, 'ab'.repeat(16))
        assert.deepEqual(await s.deleteBot('ci', '2030-01-03T00:00:00.000Z'), { endedInstances: 0 })
        assert.equal((await s.getInstance(inst.id))?.endedAt, ended)
      })

      it('a restarted server reads what the last one wrote; migrations apply once', async () => {
        const db = await backend.newDatabase()
        const a = await open(db)
        await a.createRole(role('ops'))
        await a.appendAudit({ type: 'first', success: true, fields: {} })
        await a.close()
        const b = await open(db)
        assert.deepEqual(await b.getRole('ops'), role('ops'))
        const ev = await b.appendAudit({ type: 'second', success: true, fields: {} })
        assert.deepEqual((await b.queryAudit({})).map((e) => [e.type, typeof e.id]), [['first', 'number'], ['second', 'number']])
        assert.ok(ev.id > (await b.queryAudit({ type: 'first' }))[0]!.id)
      })
    })

    describe('joinWithPlatformToken', () => {
      const platform = (name: string, over: Partial<JoinToken> = {}) => token(name, 'ci', {
        joinMethod: 'github', secretHash: '', platform: { rules: [{ repository: 'acme/app' }], issuer: 'https://issuer.example', audience: 'memid' }, ...over,
      })
      const accept = (inst: BotInstance) => (t: JoinToken | undefined): BotInstance => {
        if (t === undefined) throw new MemidError('ERR_TOKEN_INVALID', 'no such token')
        return inst
      }
      const replay = (key: string, expiresAt = '2030-01-01T00:10:00.000Z', now = T0) => ({ key, expiresAt, now })

      it('round-trips the rules, a token that never expires, the join count and the instance claims', async () => {
        const s = await store()
        await s.createToken(platform('gh-1', { expiresAt: undefined }))
        const t = await s.getToken('gh-1')
        assert.equal(t?.joinMethod, 'github')
        assert.deepEqual(t?.platform?.rules, [{ repository: 'acme/app' }])
        assert.equal(t?.expiresAt, undefined)
        assert.equal(t?.joinCount, 0)
        const inst = instance('gh-1', { joinMethod: 'github', claims: { repository: 'acme/app', run_id: '1' } })
        await s.joinWithPlatformToken('gh-1', replay('k1'), accept(inst))
        await s.joinWithPlatformToken('gh-1', replay('k2'), accept(instance('gh-1')))
        assert.equal((await s.getToken('gh-1'))?.joinCount, 2, 'usable many times, each join counted')
        assert.deepEqual((await s.getInstance(inst.id))?.claims, { repository: 'acme/app', run_id: '1' })
        assert.equal((await s.getToken('gh-1'))?.usedAt, undefined)
      })

      it('refuses a replay key already recorded, from another store on the same database too; prunes expired keys', async () => {
        const [a, b] = await pair()
        await a.createToken(platform('gh-2'))
        await a.joinWithPlatformToken('gh-2', replay('same'), accept(instance('gh-2')))
        await rejectsWith(b.joinWithPlatformToken('gh-2', replay('same'), accept(instance('gh-2'))), 'ERR_JOIN_JWT_REPLAYED')
        assert.equal((await a.listInstances('ci')).length, 1, 'the replay created nothing')
        assert.equal((await a.getToken('gh-2'))?.joinCount, 1)
        // Once the key's JWT can no longer be accepted the key is pruned, so it no longer refuses.
        await b.joinWithPlatformToken('gh-2', replay('same', '2030-01-01T01:00:00.000Z', '2030-01-01T00:20:00.000Z'), accept(instance('gh-2')))
      })

      it('concurrent joins with one JWT on two stores: exactly one wins', async () => {
        const [a, b] = await pair()
        await a.createToken(platform('gh-3'))
        const results = await Promise.allSettled([a, b, a, b].map((s) => s.joinWithPlatformToken('gh-3', replay('race'), accept(instance('gh-3')))))
        assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1)
        for (const r of results) if (r.status === 'rejected') assert.equal((r.reason as MemidError).code, 'ERR_JOIN_JWT_REPLAYED')
      })

      it('decide throwing records nothing: the key stays usable', async () => {
        const s = await store()
        await s.createToken(platform('gh-4'))
        await rejectsWith(s.joinWithPlatformToken('gh-4', replay('k'), () => { throw new MemidError('ERR_BOT_NOT_FOUND', 'gone') }), 'ERR_BOT_NOT_FOUND')
        await rejectsWith(s.joinWithPlatformToken('nope', replay('k'), accept(instance('nope'))), 'ERR_TOKEN_INVALID')
        await s.joinWithPlatformToken('gh-4', replay('k'), accept(instance('gh-4')))
        assert.equal((await s.getToken('gh-4'))?.joinCount, 1)
      })
    })

    describe('consumeToken', () => {
      it('marks the token used and creates the instance in one step', async () => {
        const s = await store()
        await s.createToken(token('tok-000000000001'))
        const inst = instance('tok-000000000001', { createdAt: '2030-01-01T00:05:00.000Z' })
        const got = await s.consumeToken('tok-000000000001', acceptUnused(inst))
        assert.deepEqual(got, inst)
        assert.deepEqual(await s.getInstance(inst.id), inst)
        const t = await s.getToken('tok-000000000001')
        assert.equal(t?.usedAt, '2030-01-01T00:05:00.000Z')
        assert.equal(t?.usedByInstance, inst.id)
      })

      it('decide sees the stored token: unknown is undefined, a used one carries usedAt', async () => {
        const s = await store()
        const seen: (JoinToken | undefined)[] = []
        await rejectsWith(s.consumeToken('tok-ffffffffffff', (t) => {
          seen.push(t)
          throw new MemidError('ERR_TOKEN_INVALID', 'no such token')
        }), 'ERR_TOKEN_INVALID')
        assert.deepEqual(seen, [undefined])
        await s.createToken(token('tok-000000000002'))
        const first = await s.consumeToken('tok-000000000002', acceptUnused(instance('tok-000000000002')))
        await rejectsWith(s.consumeToken('tok-000000000002', acceptUnused(instance('tok-000000000002'))), 'ERR_TOKEN_USED')
        assert.equal((await s.listInstances()).length, 1, 'the refused second join created nothing')
        assert.equal((await s.getToken('tok-000000000002'))?.usedByInstance, first.id, 'the first use is kept')
      })

      it('decide throwing leaves the token unused and creates no instance', async () => {
        const s = await store()
        await s.createToken(token('tok-000000000003'))
        await rejectsWith(s.consumeToken('tok-000000000003', () => {
          throw new MemidError('ERR_TOKEN_EXPIRED', 'expired')
        }), 'ERR_TOKEN_EXPIRED')
        const t = await s.getToken('tok-000000000003')
        assert.equal(t?.usedAt, undefined)
        assert.equal(t?.usedByInstance, undefined)
        assert.deepEqual(await s.listInstances(), [])
        // and the token still works afterwards
        await s.consumeToken('tok-000000000003', acceptUnused(instance('tok-000000000003')))
        assert.ok((await s.getToken('tok-000000000003'))?.usedAt)
      })

      it('a failing write rolls back the token update too', async () => {
        const s = await store()
        await s.createToken(token('tok-000000000004'))
        await s.createToken(token('tok-000000000005'))
        const inst = await s.consumeToken('tok-000000000004', acceptUnused(instance('tok-000000000004')))
        // The same instance id again: the INSERT fails after the token UPDATE ran.
        await assert.rejects(s.consumeToken('tok-000000000005', acceptUnused({ ...inst, tokenName: 'tok-000000000005' })))
        assert.equal((await s.getToken('tok-000000000005'))?.usedAt, undefined, 'rolled back with the instance')
      })

      it('a token can be used once even when joins race', async () => {
        const s = await store()
        await s.createToken(token('tok-000000000006'))
        const results = await Promise.allSettled(
          Array.from({ length: 10 }, () => s.consumeToken('tok-000000000006', acceptUnused(instance('tok-000000000006')))),
        )
        assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1)
        assert.equal((await s.listInstances()).length, 1)
      })

      it('a token can be used once when two servers race for it', async () => {
        const [a, b] = await pair()
        await a.createToken(token('tok-000000000007'))
        const results = await Promise.allSettled([a, b, a, b, a, b].map((s) =>
          s.consumeToken('tok-000000000007', acceptUnused(instance('tok-000000000007')))))
        assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1, 'exactly one join wins')
        for (const r of results) {
          if (r.status === 'rejected') assert.equal((r.reason as MemidError).code, 'ERR_TOKEN_USED', 'the losers saw the token used')
        }
        assert.equal((await b.listInstances()).length, 1)
      })

      it('with the token the caller saw: one of several joins on two servers wins, the others see it used, and so does a later one', async () => {
        const [a, b] = await pair()
        await a.createToken(token('tok-000000000009'))
        const seen = await a.getToken('tok-000000000009')
        const results = await Promise.allSettled([a, b, a, b].map((s) => s.consumeToken('tok-000000000009', acceptUnused(instance('tok-000000000009')), seen)))
        const won = results.filter((r) => r.status === 'fulfilled')
        assert.equal(won.length, 1, 'exactly one join wins')
        for (const r of results) {
          if (r.status === 'rejected') assert.equal((r.reason as MemidError).code, 'ERR_TOKEN_USED', 'the losers saw the token used')
        }
        const winner = (won[0] as PromiseFulfilledResult<BotInstance>).value
        assert.equal((await b.getToken('tok-000000000009'))?.usedByInstance, winner.id)
        assert.deepEqual((await b.listInstances()).map((i) => i.id), [winner.id])
        assert.deepEqual(await b.getInstance(winner.id), winner)
        await rejectsWith(b.consumeToken('tok-000000000009', acceptUnused(instance('tok-000000000009')), seen), 'ERR_TOKEN_USED')
      })

      it('a token consumed while its bot is deleted is either used or gone, never both', async () => {
        const [a, b] = await pair()
        await a.createBot(bot('ci'))
        await a.createToken(token('tok-000000000008'))
        const [join, del] = await Promise.allSettled([
          a.consumeToken('tok-000000000008', acceptUnused(instance('tok-000000000008'))), b.deleteBot('ci', T0),
        ])
        assert.equal(del.status, 'fulfilled')
        const t = await a.getToken('tok-000000000008')
        if (join.status === 'fulfilled') {
          assert.equal(t?.usedByInstance, join.value.id, 'a used token is kept as a record')
          assert.equal((await a.getInstance(join.value.id))?.endedAt, T0, 'the instance the join created was ended with its bot')
        } else {
          assert.equal(t, undefined, 'the join lost: the unused token went with the bot')
        }
      })
    })

    describe('updateInstance', () => {
      async function withInstance(s: Store): Promise<BotInstance> {
        await s.createToken(token('tok-0000000000aa'))
        return s.consumeToken('tok-0000000000aa', acceptUnused(instance('tok-0000000000aa')))
      }

      it('writes what decide returns', async () => {
        const s = await store()
        const inst = await withInstance(s)
        const next = await s.updateInstance(inst.id, (cur) => ({ instance: { ...cur!, generation: 2, pendingGeneration: 3, pendingRetries: 1, pendingKey: 'ab'.repeat(32) } }))
        assert.equal(next.instance?.generation, 2)
        const read = await s.getInstance(inst.id)
        assert.deepEqual([read?.generation, read?.pendingGeneration, read?.pendingRetries, read?.pendingKey], [2, 3, 1, 'ab'.repeat(32)])
        await s.updateInstance(inst.id, (cur) => {
          const { pendingKey: _k, ...rest } = cur!
          return { instance: { ...rest, pendingGeneration: null } }
        })
        assert.equal((await s.getInstance(inst.id))?.pendingKey, undefined)
      })

      it('decide sees the locks that apply, read in the transaction, and its locks and audit events commit with the instance', async () => {
        const s = await store()
        const inst = await withInstance(s)
        await s.createLock({ id: 'l-bot', bot: 'ci', reason: 'bot', createdAt: T0 })
        await s.createLock({ id: 'l-inst', instance: inst.id, reason: 'instance', createdAt: T0 })
        await s.createLock({ id: 'l-other', bot: 'other', reason: 'other', createdAt: T0 })
        let seen: string[] = []
        await s.updateInstance(inst.id, (cur, locks) => {
          seen = locks.map((l) => l.id).sort()
          return {
            instance: { ...cur!, generation: 5 },
            locks: [{ id: 'l-new', instance: cur!.id, reason: 'copied', createdAt: T0 }],
            audit: [{ type: 'generation.mismatch', success: false, instance: cur!.id, fields: { presented: 1 } }, { type: 'lock.created', success: true, fields: {} }],
          }
        })
        assert.deepEqual(seen, ['l-bot', 'l-inst'])
        assert.equal((await s.getInstance(inst.id))?.generation, 5)
        assert.ok((await s.listLocks()).some((l) => l.id === 'l-new'))
        assert.deepEqual((await s.queryAudit({})).map((e) => e.type), ['generation.mismatch', 'lock.created'])
        // Nothing to write but audit: the instance stays as it is.
        await s.updateInstance(inst.id, () => ({ audit: [{ type: 'renew', success: true, fields: {} }] }))
        assert.equal((await s.getInstance(inst.id))?.generation, 5)
        assert.equal((await s.queryAudit({ type: 'renew' })).length, 1)
      })

      it('a write of the decision that fails keeps none of it: instance, audit events, locks', async () => {
        const s = await store()
        const inst = await withInstance(s)
        await s.createLock({ id: 'taken', bot: 'nobody', reason: 'x', createdAt: T0 })
        await assert.rejects(s.updateInstance(inst.id, (cur) => ({
          instance: { ...cur!, generation: 9 },
          audit: [{ type: 'generation.mismatch', success: false, fields: {} }],
          locks: [{ id: 'fresh', instance: cur!.id, reason: 'copied', createdAt: T0 }, { id: 'taken', instance: cur!.id, reason: 'copied', createdAt: T0 }],
        })))
        assert.equal((await s.getInstance(inst.id))?.generation, 1)
        assert.deepEqual(await s.queryAudit({}), [])
        assert.deepEqual((await s.listLocks()).map((l) => l.id), ['taken'])
      })

      it('decide throwing changes nothing', async () => {
        const s = await store()
        const inst = await withInstance(s)
        await rejectsWith(s.updateInstance(inst.id, (cur) => {
          cur!.generation = 99
          throw new MemidError('ERR_LOCKED', 'locked')
        }), 'ERR_LOCKED')
        assert.deepEqual(await s.getInstance(inst.id), inst)
      })

      it('read-modify-write is atomic: concurrent increments are all kept', async () => {
        const s = await store()
        const inst = await withInstance(s)
        await Promise.all(Array.from({ length: 25 }, () => s.updateInstance(inst.id, (cur) => ({ instance: { ...cur!, generation: cur!.generation + 1 } }))))
        assert.equal((await s.getInstance(inst.id))?.generation, 26)
      })

      it('two servers updating one instance keep every increment', async () => {
        const [a, b] = await pair()
        const inst = await withInstance(a)
        await Promise.all(Array.from({ length: 20 }, (_x, i) =>
          (i % 2 ? a : b).updateInstance(inst.id, (cur) => ({ instance: { ...cur!, generation: cur!.generation + 1 } }))))
        assert.equal((await a.getInstance(inst.id))?.generation, 21)
      })

      it('with the instance the caller saw: a stale one is decided again on the stored row, on two servers every increment is kept', async () => {
        const [a, b] = await pair()
        const inst = await withInstance(a)
        const bump = (cur: BotInstance | undefined) => ({ instance: { ...cur!, generation: cur!.generation + 1 }, audit: [{ type: 'renew', success: true, instance: cur!.id, fields: { from: cur!.generation } }] })
        await Promise.all(Array.from({ length: 20 }, (_x, i) => (i % 2 ? a : b).updateInstance(inst.id, bump, inst)))
        assert.equal((await a.getInstance(inst.id))?.generation, 21)
        const audit = await a.queryAudit({ type: 'renew' })
        assert.deepEqual(audit.map((e) => e.fields.from).sort((x, y) => Number(x) - Number(y)), Array.from({ length: 20 }, (_x, i) => i + 1), 'one audit row per kept move, none for a discarded one')
      })

      it('with the instance the caller saw: locks committed since are still seen, and a refusal writes nothing', async () => {
        const s = await store()
        const inst = await withInstance(s)
        await s.createLock({ id: 'l-late', bot: 'ci', reason: 'late', createdAt: T0 })
        await rejectsWith(s.updateInstance(inst.id, (cur, locks) => {
          if (locks.length > 0) throw new MemidError('ERR_LOCKED', 'locked')
          return { instance: { ...cur!, generation: 7 }, audit: [{ type: 'renew', success: true, fields: {} }] }
        }, inst), 'ERR_LOCKED')
        assert.deepEqual(await s.getInstance(inst.id), inst)
        assert.deepEqual(await s.queryAudit({}), [])
      })

      it('getBotAndInstance reads both, either or neither', async () => {
        const s = await store()
        await s.createBot(bot('ci'))
        const inst = await withInstance(s)
        assert.deepEqual(await s.getBotAndInstance('ci', inst.id), { bot: await s.getBot('ci'), instance: inst })
        assert.deepEqual(await s.getBotAndInstance('nobody', inst.id), { instance: inst })
        assert.deepEqual(await s.getBotAndInstance('ci', 'no-such-instance'), { bot: await s.getBot('ci') })
        assert.deepEqual(await s.getBotAndInstance('nobody', 'no-such-instance'), {})
      })

      it('decide is told when the instance does not exist', async () => {
        const s = await store()
        let seen: BotInstance | undefined | 'not called' = 'not called'
        await rejectsWith(s.updateInstance('missing', (cur) => {
          seen = cur
          throw new MemidError('ERR_INSTANCE_NOT_FOUND', 'gone')
        }), 'ERR_INSTANCE_NOT_FOUND')
        assert.equal(seen, undefined)
      })

      it('keeps the first authentication and caps latest authentications and heartbeats', async () => {
        const s = await store()
        const inst = await withInstance(s)
        for (let g = 2; g <= INSTANCE_HISTORY + 8; g++) {
          await s.updateInstance(inst.id, (cur) => ({
            instance: { ...cur!, generation: g, latestAuthentications: [...cur!.latestAuthentications, auth(g)], heartbeats: [...cur!.heartbeats, heartbeat(g)] },
          }))
        }
        const read = (await s.getInstance(inst.id))!
        assert.equal(read.latestAuthentications.length, INSTANCE_HISTORY)
        assert.equal(read.heartbeats.length, INSTANCE_HISTORY)
        assert.equal(read.latestAuthentications.at(-1)?.generation, INSTANCE_HISTORY + 8, 'the newest are kept')
        assert.equal(read.heartbeats.at(-1)?.hostname, `h${INSTANCE_HISTORY + 8}`)
        assert.deepEqual(read.initialAuthentication, auth(1))
      })

      it('caps history already on creation', async () => {
        const s = await store()
        await s.createToken(token('tok-0000000000bb'))
        const long = instance('tok-0000000000bb', { latestAuthentications: Array.from({ length: 30 }, (_x, i) => auth(i)) })
        await s.consumeToken('tok-0000000000bb', acceptUnused(long))
        assert.equal((await s.getInstance(long.id))?.latestAuthentications.length, INSTANCE_HISTORY)
      })

      it('lists instances, optionally by bot', async () => {
        const s = await store()
        await s.createToken(token('tok-0000000000c1'))
        await s.createToken(token('tok-0000000000c2', 'other'))
        await s.consumeToken('tok-0000000000c1', acceptUnused(instance('tok-0000000000c1')))
        await s.consumeToken('tok-0000000000c2', acceptUnused(instance('tok-0000000000c2', { bot: 'other' })))
        assert.equal((await s.listInstances()).length, 2)
        assert.deepEqual((await s.listInstances('other')).map((i) => i.bot), ['other'])
        assert.deepEqual(await s.listInstances('nobody'), [])
      })
    })

    describe('audit', () => {
      it('appends and filters by since, type and bot, oldest first', async () => {
        const s = await store()
        const at = (min: number) => new Date(Date.parse(T0) + min * 60_000).toISOString()
        await s.appendAudit({ time: at(0), type: 'join', success: true, bot: 'ci', instance: 'i1', remoteAddr: '10.0.0.1', fields: { token: 'tok-1' } })
        await s.appendAudit({ time: at(1), type: 'join.failed', success: false, code: 'ERR_TOKEN_USED', message: 'used', fields: {} })
        await s.appendAudit({ time: at(2), type: 'renew', success: true, bot: 'ci', fields: { generation: 2 } })
        await s.appendAudit({ time: at(3), type: 'renew', success: true, bot: 'web', fields: {} })
        await s.appendAudit({ time: at(4), type: 'role.create', success: true, fields: { name: 'ops' } })

        const all = await s.queryAudit({})
        assert.deepEqual(all.map((e) => e.type), ['join', 'join.failed', 'renew', 'renew', 'role.create'])
        assert.deepEqual(all[0], {
          id: all[0]!.id, time: at(0), type: 'join', success: true, bot: 'ci', instance: 'i1', remoteAddr: '10.0.0.1', fields: { token: 'tok-1' },
        })
        assert.deepEqual(all[1], { id: all[1]!.id, time: at(1), type: 'join.failed', success: false, code: 'ERR_TOKEN_USED', message: 'used', fields: {} })
        assert.ok(all.every((e, i) => i === 0 || e.id > all[i - 1]!.id))

        assert.deepEqual((await s.queryAudit({ since: at(2) })).map((e) => e.time), [at(2), at(3), at(4)])
        assert.deepEqual((await s.queryAudit({ type: 'renew' })).map((e) => e.bot), ['ci', 'web'])
        assert.deepEqual((await s.queryAudit({ bot: 'ci' })).map((e) => e.type), ['join', 'renew'])
        assert.deepEqual((await s.queryAudit({ bot: 'ci', type: 'renew', since: at(1) })).map((e) => e.time), [at(2)])
        assert.deepEqual(await s.queryAudit({ type: 'nothing' }), [])
        assert.deepEqual((await s.queryAudit({ limit: 2 })).map((e) => e.type), ['renew', 'role.create'], 'a limit keeps the newest')
      })

      it('appendAudits writes several events at once, in order', async () => {
        const s = await store()
        await s.appendAudit({ type: 'before', success: true, fields: {} })
        await s.appendAudits([
          { type: 'join', success: true, bot: 'ci', instance: 'i1', remoteAddr: '10.0.0.1', fields: { tokenName: 'tok-1' } },
          { type: 'cert.issued', success: true, bot: 'ci', instance: 'i1', fields: { kind: 'bot', generation: 1 } },
        ])
        await s.appendAudits([])
        const all = await s.queryAudit({})
        assert.deepEqual(all.map((e) => e.type), ['before', 'join', 'cert.issued'])
        assert.ok(all[0]!.id < all[1]!.id && all[1]!.id < all[2]!.id, 'ids in order')
        assert.deepEqual([all[1]!.remoteAddr, all[1]!.fields, all[2]!.fields], ['10.0.0.1', { tokenName: 'tok-1' }, { kind: 'bot', generation: 1 }])
        assert.ok(Math.abs(Date.parse(all[2]!.time) - Date.now()) < 60_000, 'time filled in')
      })

      it('fills in the time and treats filter values as data, not SQL', async () => {
        const s = await store()
        const ev = await s.appendAudit({ type: 'x', success: true, fields: {} })
        assert.ok(Math.abs(Date.parse(ev.time) - Date.now()) < 60_000)
        assert.deepEqual(await s.queryAudit({ type: "x' OR '1'='1" }), [])
        assert.deepEqual(await s.queryAudit({ bot: "' OR 1=1 --" }), [])
        assert.equal((await s.queryAudit({ limit: -5 })).length, 1, 'a silly limit is clamped, not passed through')
      })
    })

    describe('paging, retention, idempotent locks (fleet)', () => {
      const at = (ms: number) => new Date(Date.parse(T0) + ms).toISOString()
      const newInstance = async (s: Store, n: number, bot = 'ci', createdAt = at(n)): Promise<BotInstance> => {
        const name = `tok-${String(n).padStart(12, '0')}`
        await s.createToken(token(name, bot))
        return s.consumeToken(name, acceptUnused(instance(name, { bot, createdAt })))
      }

      it('pages instances newest first; every instance exactly once while others are being added', async () => {
        const [a, b] = await pair()
        const before: string[] = []
        // Same creation time for some: the id breaks the tie.
        for (let n = 0; n < 23; n++) before.push((await newInstance(a, n, 'ci', at(Math.floor(n / 3)))).id)
        const seen: string[] = []
        let after: string | undefined
        let added = 100
        let pages = 0
        do {
          const page = await b.pageInstances({ limit: 4, ...(after !== undefined ? { after } : {}) })
          assert.ok(page.items.length <= 4)
          seen.push(...page.items.map((i) => i.id))
          after = page.next
          pages++
          // The other server keeps adding instances (newer ones, as real joins are) between pages.
          await newInstance(a, added++, 'ci', at(1000 + added))
        } while (after !== undefined)
        assert.equal(pages, 6)
        assert.equal(new Set(seen).size, seen.length, 'no instance twice')
        for (const id of before) assert.ok(seen.includes(id), `instance ${id} listed`)
        const created = seen.map((id) => id)
        assert.deepEqual(created.slice(0, 1), [seen[0]])
        const all = await a.pageInstances({ limit: 1000 })
        assert.equal(all.next, undefined)
        assert.ok(all.items.every((x, i) => i === 0 || `${all.items[i - 1]!.createdAt}${all.items[i - 1]!.id}` > `${x.createdAt}${x.id}`), 'newest first')
        assert.deepEqual((await a.pageInstances({ limit: 5, bot: 'nobody' })).items, [])
      })

      it('pageInstancesJson gives each instance as the JSON text JSON.stringify makes of pageInstances\' item, same pages', async () => {
        const s = await store()
        const plain = await newInstance(s, 1, 'ci', at(1))
        const pending = await newInstance(s, 2, 'ci', at(2))
        await s.updateInstance(pending.id, (cur) => ({ instance: { ...cur!, pendingGeneration: 2, pendingRetries: 1, pendingKey: 'cd'.repeat(32), claims: { repository: 'acme/"quoted"', n: 1 } } }))
        await newInstance(s, 3, 'web', at(3))
        await s.createBot(bot('web'))
        assert.deepEqual(await s.deleteBot('web', at(4)), { endedInstances: 1 })
        for (const req of [{ limit: 2 }, { limit: 10 }, { limit: 10, bot: 'ci' }]) {
          const objects = await s.pageInstances(req)
          const texts = await s.pageInstancesJson(req)
          assert.deepEqual(texts.items, objects.items.map((i) => JSON.stringify(i)))
          assert.equal(texts.next, objects.next)
        }
        assert.ok((await s.pageInstancesJson({ limit: 10 })).items.some((t) => t.includes(plain.id)))
      })

      it('pages bots, tokens and the audit log; a bad cursor or limit is ERR_BAD_REQUEST', async () => {
        const s = await store()
        for (let n = 0; n < 5; n++) await s.createBot({ id: randomUUID(), name: `bot-${n}`, roles: ['r'], maxTtlMs: 3_600_000, createdAt: at(n) })
        for (let n = 0; n < 5; n++) await s.createToken(token(`tok-00000000000${n}`, 'bot-0', { createdAt: at(n) }))
        for (let n = 0; n < 5; n++) await s.appendAudit({ time: at(n), type: n % 2 ? 'odd' : 'even', success: true, fields: { n } })
        const p1 = await s.pageBots({ limit: 3 })
        assert.deepEqual(p1.items.map((b) => b.name), ['bot-4', 'bot-3', 'bot-2'])
        const p2 = await s.pageBots({ limit: 3, after: p1.next as string })
        assert.deepEqual(p2.items.map((b) => b.name), ['bot-1', 'bot-0'])
        assert.equal(p2.next, undefined)
        const t1 = await s.pageTokens({ limit: 5 })
        assert.deepEqual(t1.items.map((t) => t.name.slice(-1)), ['4', '3', '2', '1', '0'])
        assert.equal(t1.next, undefined, 'exactly limit items left: no next')
        const e1 = await s.pageAudit({ limit: 2 })
        assert.deepEqual(e1.items.map((e) => e.fields.n), [4, 3])
        const e2 = await s.pageAudit({ limit: 2, after: e1.next as string })
        assert.deepEqual(e2.items.map((e) => e.fields.n), [2, 1])
        assert.deepEqual((await s.pageAudit({ limit: 10, type: 'even', after: e1.next as string })).items.map((e) => e.fields.n), [2, 0])
        await rejectsWith(s.pageBots({ limit: 3, after: 'not-a-cursor' }), 'ERR_BAD_REQUEST')
        await rejectsWith(s.pageAudit({ limit: 3, after: p1.next as string }), 'ERR_BAD_REQUEST')
        await rejectsWith(s.pageInstances({ limit: 0 }), 'ERR_BAD_REQUEST')
        await rejectsWith(s.pageInstances({ limit: 10_001 }), 'ERR_BAD_REQUEST')
        const injection = Buffer.from(JSON.stringify(["' OR 1=1 --", "') OR ('1'='1"])).toString('base64url')
        assert.deepEqual((await s.pageBots({ limit: 3, after: injection })).items, [], 'a cursor is data, not SQL')
      })

      it('prunes audit events older than a time, in batches', async () => {
        const s = await store()
        for (let n = 0; n < 7; n++) await s.appendAudit({ time: at(n * 1000), type: 't', success: true, fields: { n } })
        assert.equal(await s.pruneAudit(at(5000), 3), 3)
        assert.equal(await s.pruneAudit(at(5000), 3), 2)
        assert.equal(await s.pruneAudit(at(5000), 3), 0)
        assert.deepEqual((await s.queryAudit({})).map((e) => e.fields.n), [5, 6])
      })

      it('deletes an instance only if nothing changed it since it was read', async () => {
        const s = await store()
        const i = await newInstance(s, 1)
        const seen = await s.getInstance(i.id) as BotInstance
        await s.updateInstance(i.id, (x) => ({ instance: { ...x!, heartbeats: [{ time: at(5), hostname: 'h', version: '0', os: 'linux', arch: 'x64', uptimeSeconds: 1, services: [] }] } }))
        assert.equal(await s.deleteInstanceIfUnchanged(seen), false, 'a heartbeat since the read keeps it')
        assert.equal(await s.deleteInstanceIfUnchanged(await s.getInstance(i.id) as BotInstance), true)
        assert.equal(await s.getInstance(i.id), undefined)
      })

      it('one lock per (target, cause), also when two servers race; admin locks without a cause stay separate', async () => {
        const [a, b] = await pair()
        const target = randomUUID()
        const results = await Promise.all(Array.from({ length: 12 }, (_, n) => (n % 2 ? a : b).createLock({
          id: randomUUID(), instance: target, reason: 'stale generation', createdAt: at(n), cause: 'generation.mismatch',
        })))
        assert.equal(results.filter(Boolean).length, 1, 'exactly one copy created the lock')
        assert.equal(await a.createLock({ id: randomUUID(), instance: target, reason: 'other cause', createdAt: at(0), cause: 'other' }), true)
        assert.equal(await a.createLock({ id: randomUUID(), bot: 'ci', reason: 'same cause, other target', createdAt: at(0), cause: 'generation.mismatch' }), true)
        assert.equal(await a.createLock({ id: randomUUID(), instance: target, reason: 'admin', createdAt: at(0) }), true)
        assert.equal(await a.createLock({ id: randomUUID(), instance: target, reason: 'admin again', createdAt: at(0) }), true)
        const locks = await b.locksFor('nobody', target)
        assert.equal(locks.filter((l) => l.cause === 'generation.mismatch').length, 1)
        assert.equal(locks.length, 4)
      })
    })
  })
}
