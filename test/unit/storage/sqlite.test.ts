import { after, afterEach, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import { SqliteStore, openStore } from '../../../src/storage/sqlite.ts'
import { INSTANCE_HISTORY, type Authentication, type BotInstance, type Heartbeat, type JoinToken, type Role } from '../../../src/storage/store.ts'
import { MemidError } from '../../../src/core/errors.ts'

const T0 = '2030-01-01T00:00:00.000Z'

function role(name: string, over: Partial<Role> = {}): Role {
  return {
    name, logins: ['deploy'], kubeClusters: ['prod'], kubeUsers: ['ci'], kubeGroups: ['viewers'], databases: ['orders'],
    dbUsers: ['app'], dbNames: ['*'], createdAt: T0, ...over,
  }
}

function token(name: string, bot = 'ci', over: Partial<JoinToken> = {}): JoinToken {
  return { name, bot, joinMethod: 'token', secretHash: 'ab'.repeat(32), createdAt: T0, expiresAt: '2030-01-01T00:30:00.000Z', ...over }
}

function auth(generation: number, time = T0): Authentication {
  return { time, joinMethod: 'token', remoteAddr: '127.0.0.1', generation }
}

function heartbeat(i: number): Heartbeat {
  return { time: T0, hostname: `h${i}`, version: '0.1.0', os: 'linux', arch: 'x64', uptimeSeconds: i, services: [] }
}

function instance(tokenName: string, over: Partial<BotInstance> = {}): BotInstance {
  return {
    id: randomUUID(), bot: 'ci', joinMethod: 'token', tokenName, createdAt: T0, generation: 1, pendingGeneration: null,
    pendingRetries: 0, initialAuthentication: auth(1), latestAuthentications: [auth(1)], heartbeats: [], ...over,
  }
}

/** What the auth service's join does: refuse unknown or used tokens by throwing. */
function acceptUnused(inst: BotInstance) {
  return (t: JoinToken | undefined): BotInstance => {
    if (t === undefined) throw new MemidError('ERR_TOKEN_INVALID', 'no such token')
    if (t.usedAt !== undefined) throw new MemidError('ERR_TOKEN_USED', 'token already used')
    return inst
  }
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => err instanceof MemidError && err.code === code)
}

let dir: string
const open: SqliteStore[] = []
function store(file = ':memory:'): SqliteStore {
  const s = SqliteStore.open(file)
  open.push(s)
  return s
}

before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'memid-sqlite-'))
})
afterEach(async () => {
  for (const s of open.splice(0)) await s.close()
})
after(() => rmSync(dir, { recursive: true, force: true }))

describe('SqliteStore file', () => {
  it('creates the store 0600 whatever the umask, and keeps WAL files private too', async () => {
    const file = path.join(dir, 'mode.db')
    const old = process.umask(0)
    let s: SqliteStore
    try {
      s = store(file)
    } finally {
      process.umask(old)
    }
    await s.createRole(role('ops'))
    assert.equal(statSync(file).mode & 0o777, 0o600)
    // WAL journal files hold recent writes (CA keys included) and must be as private as the store.
    for (const side of [`${file}-wal`, `${file}-shm`]) {
      assert.ok(existsSync(side), `${side} exists while the store is open in WAL mode`)
      assert.equal(statSync(side).mode & 0o777, 0o600, side)
    }
  })

  it('tightens an existing store file to 0600', () => {
    const file = path.join(dir, 'loose.db')
    writeFileSync(file, '')
    chmodSync(file, 0o644)
    store(file)
    assert.equal(statSync(file).mode & 0o777, 0o600)
  })

  it('migrations run once: reopening keeps data and applies nothing twice', async () => {
    const file = path.join(dir, 'migrate.db')
    const a = SqliteStore.open(file)
    await a.createRole(role('ops'))
    await a.close()
    const b = SqliteStore.open(file)
    assert.deepEqual(await b.getRole('ops'), role('ops'))
    await b.close()
    const c = SqliteStore.open(file)
    await c.close()
    const db = new DatabaseSync(file)
    try {
      const rows = db.prepare('SELECT version FROM schema_migrations ORDER BY version').all() as { version: number }[]
      assert.ok(rows.length >= 1)
      assert.deepEqual(rows.map((r) => r.version), rows.map((_r, i) => i + 1), 'one row per version, no repeats')
    } finally {
      db.close()
    }
  })

  it('refuses a store written by a newer memid', () => {
    const file = path.join(dir, 'newer.db')
    SqliteStore.open(file).close()
    const db = new DatabaseSync(file)
    db.prepare('INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)').run(999, T0)
    db.close()
    assert.throws(() => SqliteStore.open(file), (err: unknown) => err instanceof MemidError && err.code === 'ERR_STORAGE' && /upgrade memid/.test(err.message))
  })

  it('a file that is not a database is ERR_STORAGE, not a crash', () => {
    const file = path.join(dir, 'garbage.db')
    writeFileSync(file, Buffer.alloc(4096, 0x41))
    assert.throws(() => SqliteStore.open(file), (err: unknown) => err instanceof MemidError && err.code === 'ERR_STORAGE' && /not a database/.test(err.message))
  })

  it('close is idempotent', async () => {
    const s = SqliteStore.open(':memory:')
    await s.close()
    await s.close()
  })
})

describe('openStore', () => {
  it('opens sqlite specs and refuses the rest with ERR_CONFIG', async () => {
    const s = openStore('sqlite::memory:')
    assert.deepEqual(await s.listRoles(), [])
    await s.close()
    assert.throws(() => openStore('postgres://db:5432/memid'), (e: unknown) => e instanceof MemidError && e.code === 'ERR_CONFIG')
    assert.throws(() => openStore('mysql://x'), (e: unknown) => e instanceof MemidError && e.code === 'ERR_CONFIG' && /mysql/.test(e.message))
  })
})

describe('SqliteStore records', () => {
  it('round-trips roles, bots, resources and locks', async () => {
    const s = store()
    await s.createRole(role('b-role', { dbNames: [] }))
    await s.createRole(role('a-role'))
    assert.deepEqual((await s.listRoles()).map((r) => r.name), ['a-role', 'b-role'])
    assert.deepEqual(await s.getRole('b-role'), role('b-role', { dbNames: [] }))
    assert.equal(await s.getRole('nope'), undefined)
    assert.equal(await s.deleteRole('a-role'), true)
    assert.equal(await s.deleteRole('a-role'), false)

    await s.createBot({ name: 'ci', roles: ['b-role'], maxTtlMs: 3_600_000, createdAt: T0 })
    assert.deepEqual(await s.getBot('ci'), { name: 'ci', roles: ['b-role'], maxTtlMs: 3_600_000, createdAt: T0 })

    await s.putResource({ kind: 'kube', name: 'prod', uri: 'https://10.0.0.1:6443', caPem: 'PEM', createdAt: T0 })
    await s.putResource({ kind: 'db', name: 'prod', uri: 'postgres://10.0.0.2:5432', createdAt: T0 })
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

  it('duplicate names are ERR_ALREADY_EXISTS and change nothing', async () => {
    const s = store()
    await s.createRole(role('ops'))
    await rejectsWith(s.createRole(role('ops', { logins: ['root'] })), 'ERR_ALREADY_EXISTS')
    assert.deepEqual((await s.getRole('ops'))?.logins, ['deploy'])

    await s.createBot({ name: 'ci', roles: [], maxTtlMs: 1, createdAt: T0 })
    await rejectsWith(s.createBot({ name: 'ci', roles: ['x'], maxTtlMs: 2, createdAt: T0 }), 'ERR_ALREADY_EXISTS')

    await s.createToken(token('tok-000000000001'))
    await rejectsWith(s.createToken(token('tok-000000000001')), 'ERR_ALREADY_EXISTS')

    await s.putResource({ kind: 'kube', name: 'prod', uri: 'https://a:1', createdAt: T0 })
    await rejectsWith(s.putResource({ kind: 'kube', name: 'prod', uri: 'https://b:1', createdAt: T0 }), 'ERR_ALREADY_EXISTS')
    assert.equal((await s.getResource('kube', 'prod'))?.uri, 'https://a:1')

    await s.createLock({ id: 'l', bot: 'ci', reason: 'r', createdAt: T0 })
    await rejectsWith(s.createLock({ id: 'l', bot: 'ci', reason: 'r', createdAt: T0 }), 'ERR_ALREADY_EXISTS')
  })

  it('putCaIfAbsent keeps the first CA of a kind', async () => {
    const s = store()
    const first = { kind: 'tls' as const, privateKeyDer: Buffer.from([1, 2, 3]), publicMaterial: 'PEM-1', createdAt: T0 }
    assert.deepEqual(await s.putCaIfAbsent(first), first)
    const second = await s.putCaIfAbsent({ ...first, privateKeyDer: Buffer.from([9]), publicMaterial: 'PEM-2' })
    assert.equal(second.publicMaterial, 'PEM-1')
    assert.deepEqual([...second.privateKeyDer], [1, 2, 3])
    const read = await s.getCa('tls')
    assert.deepEqual([...read!.privateKeyDer], [1, 2, 3])
    assert.equal(await s.getCa('ssh-user'), undefined)
  })

  it('deleting a bot removes its unused tokens but keeps used ones and its instances', async () => {
    const s = store()
    await s.createBot({ name: 'ci', roles: [], maxTtlMs: 1, createdAt: T0 })
    await s.createToken(token('tok-00000000000a'))
    await s.createToken(token('tok-00000000000b'))
    await s.createToken(token('tok-00000000000c', 'other'))
    const inst = await s.consumeToken('tok-00000000000a', acceptUnused(instance('tok-00000000000a')))
    assert.equal(await s.deleteBot('ci'), true)
    assert.equal(await s.getBot('ci'), undefined)
    assert.ok(await s.getToken('tok-00000000000a'), 'the used token stays as a record')
    assert.equal(await s.getToken('tok-00000000000b'), undefined)
    assert.ok(await s.getToken('tok-00000000000c'), "another bot's token is untouched")
    assert.ok(await s.getInstance(inst.id))
    assert.equal(await s.deleteBot('ci'), false)
  })
})

describe('SqliteStore.consumeToken', () => {
  it('marks the token used and creates the instance in one step', async () => {
    const s = store()
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
    const s = store()
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
    const s = store()
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
    const s = store()
    await s.createToken(token('tok-000000000004'))
    await s.createToken(token('tok-000000000005'))
    const inst = await s.consumeToken('tok-000000000004', acceptUnused(instance('tok-000000000004')))
    // The same instance id again: the INSERT fails after the token UPDATE ran.
    await assert.rejects(s.consumeToken('tok-000000000005', acceptUnused({ ...inst, tokenName: 'tok-000000000005' })))
    assert.equal((await s.getToken('tok-000000000005'))?.usedAt, undefined, 'rolled back with the instance')
  })

  it('a token can be used once even when joins race', async () => {
    const s = store()
    await s.createToken(token('tok-000000000006'))
    const results = await Promise.allSettled(
      Array.from({ length: 10 }, () => s.consumeToken('tok-000000000006', acceptUnused(instance('tok-000000000006')))),
    )
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1)
    assert.equal((await s.listInstances()).length, 1)
  })
})

describe('SqliteStore.updateInstance', () => {
  async function withInstance(s: SqliteStore): Promise<BotInstance> {
    await s.createToken(token('tok-0000000000aa'))
    return s.consumeToken('tok-0000000000aa', acceptUnused(instance('tok-0000000000aa')))
  }

  it('writes what decide returns', async () => {
    const s = store()
    const inst = await withInstance(s)
    const next = await s.updateInstance(inst.id, (cur) => ({ ...cur!, generation: 2, pendingGeneration: 3, pendingRetries: 1 }))
    assert.equal(next.generation, 2)
    const read = await s.getInstance(inst.id)
    assert.deepEqual([read?.generation, read?.pendingGeneration, read?.pendingRetries], [2, 3, 1])
  })

  it('decide throwing changes nothing', async () => {
    const s = store()
    const inst = await withInstance(s)
    await rejectsWith(s.updateInstance(inst.id, (cur) => {
      cur!.generation = 99
      throw new MemidError('ERR_STALE_GENERATION', 'stale')
    }), 'ERR_STALE_GENERATION')
    assert.deepEqual(await s.getInstance(inst.id), inst)
  })

  it('read-modify-write is atomic: concurrent increments are all kept', async () => {
    const s = store(path.join(dir, 'atomic.db'))
    const inst = await withInstance(s)
    await Promise.all(Array.from({ length: 25 }, () => s.updateInstance(inst.id, (cur) => ({ ...cur!, generation: cur!.generation + 1 }))))
    assert.equal((await s.getInstance(inst.id))?.generation, 26)
  })

  it('decide is told when the instance does not exist', async () => {
    const s = store()
    let seen: BotInstance | undefined | 'not called' = 'not called'
    await rejectsWith(s.updateInstance('missing', (cur) => {
      seen = cur
      throw new MemidError('ERR_INSTANCE_NOT_FOUND', 'gone')
    }), 'ERR_INSTANCE_NOT_FOUND')
    assert.equal(seen, undefined)
  })

  it('keeps the first authentication and caps latest authentications and heartbeats', async () => {
    const s = store()
    const inst = await withInstance(s)
    for (let g = 2; g <= INSTANCE_HISTORY + 8; g++) {
      await s.updateInstance(inst.id, (cur) => ({
        ...cur!, generation: g, latestAuthentications: [...cur!.latestAuthentications, auth(g)], heartbeats: [...cur!.heartbeats, heartbeat(g)],
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
    const s = store()
    await s.createToken(token('tok-0000000000bb'))
    const long = instance('tok-0000000000bb', { latestAuthentications: Array.from({ length: 30 }, (_x, i) => auth(i)) })
    await s.consumeToken('tok-0000000000bb', acceptUnused(long))
    assert.equal((await s.getInstance(long.id))?.latestAuthentications.length, INSTANCE_HISTORY)
  })

  it('lists instances, optionally by bot', async () => {
    const s = store()
    await s.createToken(token('tok-0000000000c1'))
    await s.createToken(token('tok-0000000000c2', 'other'))
    await s.consumeToken('tok-0000000000c1', acceptUnused(instance('tok-0000000000c1')))
    await s.consumeToken('tok-0000000000c2', acceptUnused(instance('tok-0000000000c2', { bot: 'other' })))
    assert.equal((await s.listInstances()).length, 2)
    assert.deepEqual((await s.listInstances('other')).map((i) => i.bot), ['other'])
    assert.deepEqual(await s.listInstances('nobody'), [])
  })
})

describe('SqliteStore audit', () => {
  it('appends and filters by since, type and bot, oldest first', async () => {
    const s = store()
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

  it('fills in the time and treats filter values as data, not SQL', async () => {
    const s = store()
    const ev = await s.appendAudit({ type: 'x', success: true, fields: {} })
    assert.ok(Math.abs(Date.parse(ev.time) - Date.now()) < 60_000)
    assert.deepEqual(await s.queryAudit({ type: "x' OR '1'='1" }), [])
    assert.deepEqual(await s.queryAudit({ bot: "' OR 1=1 --" }), [])
    assert.equal((await s.queryAudit({ limit: -5 })).length, 1, 'a silly limit is clamped, not passed through')
  })
})
