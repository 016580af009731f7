import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { startAuth, type AuthFixture } from '../fixtures/memid.ts'
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
