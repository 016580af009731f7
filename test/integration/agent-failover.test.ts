import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { startPostgres, type PostgresFixture } from '../fixtures/postgres.ts'
import { testCa } from '../fixtures/db-tunnel.ts'
import { startAgent, startAuth, type AgentFixture, type AuthFixture } from '../fixtures/memid.ts'

const PASSWORD = randomBytes(12).toString('hex')

let pgServer: PostgresFixture
const replicas: AuthFixture[] = []
let agent: AgentFixture | undefined

before(async () => {
  pgServer = await startPostgres({
    clientCaPem: (await testCa('unused client CA')).certPem, roles: [], databases: {},
    passwordRole: { name: 'memid', password: PASSWORD },
  })
})
after(async () => {
  await agent?.stop()
  for (const r of replicas) await r.stop()
  await pgServer?.stop()
})

/** Records of one type in the cluster's audit log, asked of a live replica. */
async function auditOf(r: AuthFixture, type: string): Promise<unknown[]> {
  const out = await r.cli(['audit', '--type', type, '--format', 'json'])
  assert.equal(out.code, 0, out.stderr)
  return JSON.parse(out.stdout).items as unknown[]
}

describe('an agent given several auth servers (three replicas on one PostgreSQL 15)', () => {
  it('kill -9 of the replica in use: the renewal succeeds on the next one, with no lock and no generation.mismatch', async () => {
    await pgServer.sql('CREATE DATABASE failover OWNER memid')
    const storage = `postgres://memid:${PASSWORD}@127.0.0.1:${pgServer.port}/failover`
    // The first creates the CAs; the others find them (one cluster, one pin).
    replicas.push(await startAuth({ storage }))
    replicas.push(...await Promise.all([startAuth({ storage }), startAuth({ storage })]))
    const [a, b, c] = replicas as [AuthFixture, AuthFixture, AuthFixture]
    assert.equal(b.caPin, a.caPin)
    assert.equal(c.caPin, a.caPin)

    const token = await a.bot('fleet')
    agent = startAgent({ auth: { addr: [a.addr, b.addr, c.addr].join(','), caPin: a.caPin }, token })
    await agent.ready
    const first = await agent.status()
    assert.equal(first.authServer, a.addr, 'keeps to the first server while it answers')
    assert.deepEqual(first.authServers, [a.addr, b.addr, c.addr])

    // The replica in use dies between renewals: the next renewal goes to b.
    a.process.signal('SIGKILL')
    await a.process.exited
    let renewed = agent.process.waitFor('identity renewed', 30_000)
    agent.process.signal('SIGHUP')
    const r1 = await renewed
    assert.equal(r1.generation, first.generation + 1)
    const afterA = await agent.status()
    assert.equal(afterA.authServer, b.addr, 'moved to the next replica and stays there')
    assert.equal(afterA.renewal.consecutiveFailures ?? 0, 0)

    // The replica in use dies while a renewal is on its way: whichever of b (before the
    // kill) or c (the retry with the same key) answers, it is one renewal, never a copy.
    renewed = agent.process.waitFor('identity renewed', 30_000)
    agent.process.signal('SIGHUP')
    b.process.signal('SIGKILL')
    await b.process.exited
    const r2 = await renewed
    assert.equal(r2.generation, first.generation + 2)

    // And the next renewal lands on c, the one replica left.
    renewed = agent.process.waitFor('identity renewed', 30_000)
    agent.process.signal('SIGHUP')
    const r3 = await renewed
    assert.equal(r3.generation, first.generation + 3)
    assert.equal((await agent.status()).authServer, c.addr)
    const text = await agent.cli(['status'])
    assert.ok(text.stdout.includes(`Auth server:    ${c.addr} (in use; configured: ${a.addr}, ${b.addr}, ${c.addr})`), text.stdout)

    assert.equal((await auditOf(c, 'renew')).length, 3, 'three renewals, each recorded once (the filter works)')
    assert.deepEqual(await auditOf(c, 'generation.mismatch'), [], 'no generation.mismatch audit event')
    const locks = await c.cli(['locks', 'ls', '--format', 'json'])
    assert.equal(locks.code, 0, locks.stderr)
    assert.deepEqual(JSON.parse(locks.stdout), [], 'no lock')
    assert.equal(await pgServer.sql('SELECT count(*) FROM locks', 'failover'), '0\n')
    assert.equal(agent.process.proc.exitCode, null, 'the agent is still running')
  })
})
