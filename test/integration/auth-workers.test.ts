import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { startAuthServer, type AuthServer } from '../../src/auth/server.ts'
import { createLogger } from '../../src/core/log.ts'
import { SqliteStore } from '../../src/storage/sqlite.ts'
import { eventually, startAuth, tempDir, type AuthFixture } from '../fixtures/memid.ts'
import { client, heartbeat, join, renew, type TestIdentity } from '../helpers/identity.ts'

const PEM = /-----BEGIN [A-Z ]*(PRIVATE KEY|CERTIFICATE)-----/

describe('auth start --workers 2', () => {
  let auth: AuthFixture

  before(async () => {
    auth = await startAuth({ args: ['--workers', '2'] })
  })
  after(async () => {
    if (auth.process.proc.exitCode === null) await auth.stop()
  })

  test('two workers on one port serve joins and renewals from several clients, each worker answering, and SIGTERM drains both', async () => {
    const tokens = [await auth.bot('fleet')]
    for (let i = 0; i < 7; i++) {
      const t = await auth.cli(['tokens', 'add', '--bot', 'fleet'])
      assert.equal(t.code, 0, t.stderr)
      tokens.push(t.stdout.trim())
    }
    const clients = await Promise.all([0, 1, 2, 3].map(() => client(auth)))
    // Every join and renewal opens a new TLS connection (a new key each), which the
    // kernel hands to either worker.
    const ids = await Promise.all(tokens.map((tok, i) => join(clients[i % clients.length]!, tok)))
    let requests = 4 * 2 + ids.length // bootstrap (two calls per client) and joins
    await Promise.all(ids.map(async (first, i) => {
      const c = clients[i % clients.length]!
      let id: TestIdentity = first
      for (let n = 0; n < 6; n++) {
        id = await renew(c, id)
        await heartbeat(c, id)
        requests += 2
      }
      assert.equal(id.res.generation, first.res.generation + 6)
    }))

    const pid = auth.process.proc.pid!
    for (const f of ['cmdline', 'environ']) assert.doesNotMatch(readFileSync(`/proc/${pid}/${f}`, 'latin1'), PEM, `no key or certificate in ${f}`)

    auth.process.signal('SIGTERM')
    assert.equal(await auth.process.exited, 0)
    const recs = auth.process.stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>)
    assert.equal(recs.filter((r) => r.msg === 'auth service ready').length, 1, 'one ready line, from the main thread')
    assert.equal(recs.find((r) => r.msg === 'auth service ready')?.workers, 2)
    const stopped = recs.filter((r) => r.msg === 'auth worker stopped')
    assert.deepEqual(stopped.map((r) => r.worker).sort(), [0, 1])
    for (const r of stopped) assert.ok((r.served as number) > 0, `worker ${String(r.worker)} answered requests: ${JSON.stringify(stopped)}`)
    assert.equal(stopped.reduce((s, r) => s + (r.served as number), 0), requests, 'every request answered by one of the workers')
    assert.ok(recs.every((r) => r.level as number < 50), `no error logged: ${JSON.stringify(recs.filter((r) => (r.level as number) >= 50))}`)
    assert.doesNotMatch(auth.process.stderr, PEM, 'no key or certificate in the log')
    const files = readdirSync(auth.dataDir).filter((f) => !/^memid\.db(-wal|-shm)?$/.test(f))
    assert.deepEqual(files, [], 'the data dir holds only the store (admin.sock removed at stop)')
  })

  test('--workers is checked', async () => {
    const bad = await auth.cli(['auth', 'start', '--workers', '0'])
    assert.notEqual(bad.code, 0)
    assert.match(bad.stderr, /--workers: must be a whole number/)
  })
})

describe('an auth API worker that dies', () => {
  let server: AuthServer
  let cleanup: () => void
  const lines: Record<string, unknown>[] = []

  before(async () => {
    const tmp = tempDir('memid-auth-crash-')
    cleanup = tmp.cleanup
    const file = path.join(tmp.dir, 'memid.db')
    server = await startAuthServer({
      store: SqliteStore.open(file), listen: '127.0.0.1:0', clusterName: 'crash', joinRate: 1000,
      logger: createLogger({ sink: { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) } }),
      workers: { count: 2, storage: `sqlite:${file}`, logFormat: 'json' },
    })
  })
  after(async () => {
    await server?.stop(2_000)
    cleanup?.()
  })

  test('is logged and restarted on the same port; the other worker keeps serving its open connection and new ones meanwhile, and the restarted one serves again', async () => {
    const auth = { addr: server.address, caPin: server.caPin }
    const tokens: string[] = []
    await server.admin.addRole({ name: 'r', logins: ['deploy'] })
    for (let i = 0; i < 40; i++) tokens.push((await server.admin.addBot({ name: `b${i}`, roles: ['r'] })).token.token)
    const c = await client(auth)
    // A keep-alive connection opened before the crash; heartbeats reuse it.
    const kept = await join(c, tokens.pop()!)
    await heartbeat(c, kept)
    let failed: string | undefined
    void server.failed?.then((why) => (failed = why))

    await server.crashApiWorker!(1)
    const exited = await eventually(() => lines.find((l) => l.msg === 'auth worker 1 exited; restarting it'), 10_000, 'the crash logged')
    assert.equal(exited.level, 50)
    // While worker 1 is down, every new connection reaches worker 0; the kept one too if it was there.
    for (let i = 0; i < 4; i++) await join(await client(auth), tokens.pop()!)
    await eventually(() => lines.some((l) => l.msg === 'auth worker 1 serves again'), 10_000, 'the restart logged')
    // New connections (a fresh TLS connection per join) are spread over both workers again.
    const ids = await Promise.all(tokens.splice(0, 24).map(async (t) => join(await client(auth), t)))
    for (const id of ids) await renew(await client(auth), id)
    assert.equal(failed, undefined, 'one crash is not a reason to stop the service')

    await server.stop(5_000)
    const stopped = lines.filter((l) => l.msg === 'auth worker stopped')
    assert.deepEqual(stopped.map((l) => l.worker).sort(), [0, 1])
    for (const l of stopped) assert.ok((l.served as number) > 0, `worker ${String(l.worker)} answered after the restart: ${JSON.stringify(stopped)}`)
  })
})
