import { randomUUID } from 'node:crypto'
// Admin listings over the real admin socket: pages that stream, cursors that continue,
// and an event loop that keeps serving while a big listing runs.
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { LISTING_CHUNK } from '../../../src/auth/admin-socket.ts'
import { SqliteStore } from '../../../src/storage/sqlite.ts'
import type { BotInstance, Page, Store } from '../../../src/storage/store.ts'
import { acceptUnused, instance, token } from '../../helpers/store-contract.ts'
import { adminRaw, serveAdmin } from '../../helpers/admin-socket.ts'

let dir: string
let store: Store
let server: { close(): Promise<void> }
let sock: string
let made = 0
/** The page reads the admin API made of the store: method and limit. */
const reads: { method: string; limit: number }[] = []

async function addInstances(n: number, bot = 'ci'): Promise<string[]> {
  const ids: string[] = []
  for (let k = 0; k < n; k++) {
    const name = `tok-${(made++).toString(16).padStart(12, '0')}`
    await store.createToken(token(name, bot))
    const created = new Date(Date.UTC(2030, 0, 1) + made * 1000).toISOString()
    ids.push((await store.consumeToken(name, acceptUnused(instance(name, { bot, createdAt: created })))).id)
  }
  return ids
}

async function get(p: string, body?: unknown): Promise<{ status: number; json: any; bytes: number }> {
  const r = await getRaw(p, body)
  return { status: r.status, json: JSON.parse(r.text), bytes: r.text.length }
}

/** The response unparsed: parsing megabytes of JSON here would stall the loop being measured. */
const getRaw = (p: string, body?: unknown) => adminRaw(sock, p, body)

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'memid-admin-listing-'))
  const sqlite = SqliteStore.open(':memory:')
  store = new Proxy(sqlite, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver)
      if (typeof v !== 'function') return v
      return (...args: unknown[]) => {
        if (typeof prop === 'string' && prop.startsWith('page')) reads.push({ method: prop, limit: (args[0] as { limit: number }).limit })
        return (v as (...a: unknown[]) => unknown).apply(target, args)
      }
    },
  })
  sock = path.join(dir, 'admin.sock')
  server = await serveAdmin(store, sock)
})
after(async () => {
  await server.close()
  await store.close()
  rmSync(dir, { recursive: true, force: true })
})

describe('admin listings page', () => {
  it('every instance exactly once across pages while instances are being added', async () => {
    const existing = await addInstances(450)
    const seen: string[] = []
    let after: string | undefined
    let pages = 0
    do {
      const q = new URLSearchParams({ limit: '100' })
      if (after !== undefined) q.set('after', after)
      const [r] = await Promise.all([get(`/v1/instances?${q}`), addInstances(7)])
      assert.equal(r.status, 200)
      const page = r.json as Page<BotInstance>
      assert.ok(page.items.length <= 100)
      seen.push(...page.items.map((i) => i.id))
      after = page.next
      pages++
    } while (after !== undefined)
    assert.equal(new Set(seen).size, seen.length, 'no instance listed twice')
    for (const id of existing) assert.ok(seen.includes(id), `${id} listed`)
    assert.ok(pages >= 5)
  })

  it('the default page is the newest 100 with next; a bot filter and an exact last page carry no next', async () => {
    const r = await get('/v1/instances')
    assert.equal(r.json.items.length, 100)
    assert.equal(typeof r.json.next, 'string')
    const newest = await store.pageInstances({ limit: 1 })
    assert.equal(r.json.items[0].id, newest.items[0]?.id)
    const other = await addInstances(3, 'other')
    const mine = await get('/v1/instances?bot=other&limit=3')
    assert.deepEqual(new Set(mine.json.items.map((i: BotInstance) => i.id)), new Set(other))
    assert.equal(mine.json.next, undefined)
  })

  it('bots, tokens and audit page the same way; tokens never carry the secret hash', async () => {
    for (let n = 0; n < 5; n++) await store.createBot({ id: randomUUID(), name: `b${n}`, roles: ['r'], maxTtlMs: 60_000, createdAt: new Date(Date.UTC(2030, 0, 1, 0, 0, n)).toISOString() })
    const b1 = await get('/v1/bots?limit=3')
    assert.deepEqual(b1.json.items.map((b: { name: string }) => b.name), ['b4', 'b3', 'b2'])
    const b2 = await get(`/v1/bots?limit=3&after=${b1.json.next}`)
    assert.deepEqual(b2.json.items.map((b: { name: string }) => b.name), ['b1', 'b0'])
    const t = await get('/v1/tokens?limit=2')
    assert.equal(t.json.items.length, 2)
    assert.ok(!JSON.stringify(t.json).includes('secretHash'))
    for (let n = 0; n < 3; n++) await store.appendAudit({ type: 'x', success: true, fields: { n } })
    const a = await get('/v1/audit', { type: 'x', limit: 2 })
    assert.deepEqual(a.json.items.map((e: { fields: { n: number } }) => e.fields.n), [2, 1])
    const a2 = await get('/v1/audit', { type: 'x', limit: 2, after: a.json.next })
    assert.deepEqual(a2.json.items.map((e: { fields: { n: number } }) => e.fields.n), [0])
  })

  it('bad limits and cursors are one-line ERR_BAD_REQUEST naming the field', async () => {
    for (const q of ['limit=0', 'limit=10001', 'limit=abc', 'after=zzz', 'color=red']) {
      const r = await get(`/v1/instances?${q}`)
      assert.equal(r.status, 400, q)
      assert.equal(r.json.error.code, 'ERR_BAD_REQUEST')
      assert.match(r.json.error.message, /limit|after|color/)
    }
  })

  it('a listing reads the store in chunks of at most LISTING_CHUNK instances, as JSON text (no parse and re-serialize per instance)', async () => {
    await addInstances(Math.max(0, 1000 - made))
    reads.length = 0
    const r = await get('/v1/instances?limit=1000')
    assert.equal(r.json.items.length, 1000)
    assert.ok(reads.length >= 1000 / LISTING_CHUNK)
    for (const x of reads) {
      assert.equal(x.method, 'pageInstancesJson')
      assert.ok(x.limit <= LISTING_CHUNK, `one read of ${x.limit} rows`)
    }
    assert.deepEqual(r.json.items.slice(0, 3), (await store.pageInstances({ limit: 3 })).items, 'the same instances as the store gives')
  })

  it('a 10,000-instance listing streams in chunks: the event loop is never held for long', async () => {
    await addInstances(10_000 - made)
    await getRaw('/v1/instances?limit=10000') // warm up: the first run compiles the code paths
    let worst = 0
    let started = performance.now()
    let last = performance.now()
    let ticking = true
    const tick = () => {
      if (!ticking) return
      const now = performance.now()
      worst = Math.max(worst, now - last)
      last = now
      setImmediate(tick)
    }
    setImmediate(tick)
    started = performance.now()
    let raw: { text: string }
    try {
      raw = await getRaw('/v1/instances?limit=10000')
    } finally {
      ticking = false
    }
    const took = performance.now() - started
    const r = { json: JSON.parse(raw.text), bytes: raw.text.length }
    assert.equal(r.json.items.length, 10_000)
    // A chunk of rows takes a few ms; unchunked, the whole listing would hold the loop for
    // all of `took`. Relative, because on a shared machine a GC pause or a descheduling
    // can by itself exceed any absolute bound.
    console.log(`# 10,000 instances (${(r.bytes / 1e6).toFixed(1)} MB) in ${took.toFixed(0)} ms: longest event-loop stall ${worst.toFixed(1)} ms`)
    assert.ok(worst < took / 5, `event loop held for ${worst.toFixed(1)} ms of ${took.toFixed(0)} ms`)
  })
})
