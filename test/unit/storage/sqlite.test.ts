import { after, afterEach, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import { SqliteStore } from '../../../src/storage/sqlite.ts'
import { openStore } from '../../../src/storage/open.ts'
import { MemidError } from '../../../src/core/errors.ts'
import { LEGACY_V1_ROWS, T0, acceptUnused, assertLegacyUpgraded, bot, instance, role, storeContract, token } from '../../helpers/store-contract.ts'
import { SQLITE, SCHEMA_MIGRATIONS_DDL, migrations } from '../../../src/storage/migrations.ts'

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

  it('upgrading a store from before bot ids gives bots ids and ends the instances of deleted bots', async () => {
    const file = path.join(dir, 'v1.db')
    const db = new DatabaseSync(file)
    db.exec(SCHEMA_MIGRATIONS_DDL)
    db.exec(migrations(SQLITE)[0] as string)
    db.prepare('INSERT INTO schema_migrations (version, applied_at) VALUES (1, ?)').run(T0)
    db.exec(LEGACY_V1_ROWS)
    db.close()
    await assertLegacyUpgraded(store(file))
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

describe('SqliteStore group commit', () => {
  it('writes queued in one turn share a commit, yet one that fails is undone alone and the next sees only the committed ones', async () => {
    const s = store(path.join(dir, 'group.db'))
    await s.createBot(bot('ci'))
    await s.createToken(token('tok-0000000000g1'))
    const inst = await s.consumeToken('tok-0000000000g1', acceptUnused(instance('tok-0000000000g1')))
    await s.createLock({ id: 'taken', bot: 'nobody', reason: 'x', createdAt: T0 })
    const seen: number[] = []
    // Queued in the same turn: the second writes its instance, then fails on its lock (the id exists).
    const [first, second, third] = await Promise.allSettled([
      s.updateInstance(inst.id, (cur) => ({ instance: { ...cur!, generation: 2 }, audit: [{ type: 'g', success: true, fields: { n: 1 } }] })),
      s.updateInstance(inst.id, (cur) => ({ instance: { ...cur!, generation: 99 }, audit: [{ type: 'g', success: true, fields: { n: 2 } }], locks: [{ id: 'taken', bot: 'ci', reason: 'y', createdAt: T0 }] })),
      s.updateInstance(inst.id, (cur) => {
        seen.push(cur!.generation)
        return { instance: { ...cur!, generation: 3 }, audit: [{ type: 'g', success: true, fields: { n: 3 } }] }
      }),
    ])
    assert.equal(first.status, 'fulfilled')
    assert.equal(second.status, 'rejected')
    assert.equal(third.status, 'fulfilled')
    assert.deepEqual(seen, [2], 'the third saw the first write, not the undone second')
    assert.equal((await s.getInstance(inst.id))?.generation, 3)
    assert.deepEqual((await s.queryAudit({ type: 'g', limit: 10 })).map((e) => e.fields.n), [1, 3])
    assert.deepEqual((await s.listLocks()).map((l) => l.bot), ['nobody'])
    // And durable: another connection reads the same.
    const other = new DatabaseSync(path.join(dir, 'group.db'))
    assert.equal((other.prepare('SELECT generation FROM bot_instances WHERE id = ?').get(inst.id) as { generation: number }).generation, 3)
    other.close()
  })
})

describe('openStore', () => {
  it('opens sqlite specs and refuses unknown schemes with ERR_CONFIG, without echoing a password', async () => {
    const s = await openStore('sqlite::memory:')
    assert.deepEqual(await s.listRoles(), [])
    await s.close()
    await assert.rejects(openStore('mysql://x'), (e: unknown) => e instanceof MemidError && e.code === 'ERR_CONFIG' && /mysql/.test(e.message))
    await assert.rejects(openStore('postgress://u:hunter2@db/memid'),
      (e: unknown) => e instanceof MemidError && e.code === 'ERR_CONFIG' && !e.message.includes('hunter2') && e.message.includes('u:***@'))
  })
})

// The behaviour every backend shares (also run against PostgreSQL in test/integration/storage-postgres.test.ts).
let contractDbs = 0
storeContract('SqliteStore', {
  newDatabase: async () => path.join(dir, `contract-${++contractDbs}.db`),
  open: async (file) => SqliteStore.open(file),
})
