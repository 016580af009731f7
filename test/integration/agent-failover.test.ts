import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { startPostgres, type PostgresFixture } from '../fixtures/postgres.ts'
import { testCa } from '../fixtures/db-tunnel.ts'
import { startAgent, startAuth, type AgentFixture, type AuthFixture } from '../fixtures/memid.ts'

const PASSWORD = randomBytes(12).toString('hex')

let pgServer: PostgresFixture
const replicas: AuthFixture[] = []
/** Agents in the storm: enough to overlap on 2 shared cores, few enough to start quickly. */
const AGENTS = 4
const agents: AgentFixture[] = []

before(async () => {
  pgServer = await startPostgres({
    clientCaPem: (await testCa('unused client CA')).certPem, roles: [], databases: {},
    passwordRole: { name: 'memid', password: PASSWORD },
  })
})
after(async () => {
  await Promise.all(agents.map((x) => x.stop()))
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
  it('kill -9 of the replica in use, between and during a renewal storm: every renewal succeeds on the next one, no lock, no generation.mismatch', async () => {
    await pgServer.sql('CREATE DATABASE failover OWNER memid')
    const storage = `postgres://memid:${PASSWORD}@127.0.0.1:${pgServer.port}/failover`
    // The first creates the CAs; the others find them (one cluster, one pin).
    replicas.push(await startAuth({ storage }))
    replicas.push(...await Promise.all([startAuth({ storage }), startAuth({ storage })]))
    const [a, b, c] = replicas as [AuthFixture, AuthFixture, AuthFixture]
    assert.equal(b.caPin, a.caPin)
    assert.equal(c.caPin, a.caPin)

    // A small fleet: every agent given all three addresses, a first.
    const tokens = await Promise.all(Array.from({ length: AGENTS }, (_, i) => a.bot(`fleet${i}`)))
    agents.push(...tokens.map((token) => startAgent({ auth: { addr: [a.addr, b.addr, c.addr].join(','), caPin: a.caPin }, token })))
    await Promise.all(agents.map((x) => x.ready))
    const first = await Promise.all(agents.map((x) => x.status()))
    for (const s of first) {
      assert.equal(s.authServer, a.addr, 'keeps to the first server while it answers')
      assert.deepEqual(s.authServers, [a.addr, b.addr, c.addr])
    }
    /** SIGHUP to every agent; resolves with each one's next renewal record. */
    const storm = (): Promise<Record<string, unknown>[]> => {
      const renewed = agents.map((x) => x.process.waitFor('identity renewed', 60_000))
      for (const x of agents) x.process.signal('SIGHUP')
      return Promise.all(renewed)
    }
    const generations = (recs: Record<string, unknown>[], step: number) =>
      assert.deepEqual(recs.map((r) => r.generation), first.map((s) => s.generation + step), `every agent renewed once more (step ${step})`)

    // The replica in use dies between renewals: the next renewals go to b.
    a.process.signal('SIGKILL')
    await a.process.exited
    generations(await storm(), 1)
    for (const x of agents) assert.equal((await x.status()).authServer, b.addr, 'moved to the next replica and stays there')

    // The replica in use dies during a renewal storm: whichever of b (before the kill) or c
    // (the retry with the same key) answers each agent, it is one renewal, never a copy.
    const during = storm()
    b.process.signal('SIGKILL')
    await b.process.exited
    generations(await during, 2)

    // And the next renewals land on c, the one replica left.
    generations(await storm(), 3)
    for (const x of agents) assert.equal((await x.status()).authServer, c.addr)
    const text = await agents[0]!.cli(['status'])
    assert.ok(text.stdout.includes(`Auth server:    ${c.addr} (in use; configured: ${a.addr}, ${b.addr}, ${c.addr})`), text.stdout)

    // A renewal b committed just before its kill reaches c again as a retry with the same key
    // (its answer was lost): the same generation again, audited with retry: true.
    const renewals = await auditOf(c, 'renew') as { instance: string; fields: { generation: number; retry: boolean } }[]
    const firsts = renewals.filter((e) => !e.fields.retry)
    assert.equal(firsts.length, 3 * AGENTS, 'three renewals per agent, each recorded once (the filter works)')
    for (const r of renewals.filter((e) => e.fields.retry)) {
      assert.ok(firsts.some((f) => f.instance === r.instance && f.fields.generation === r.fields.generation), 'a retry repeats a renewal already made')
    }
    assert.deepEqual(await auditOf(c, 'generation.mismatch'), [], 'no generation.mismatch audit event')
    const locks = await c.cli(['locks', 'ls', '--format', 'json'])
    assert.equal(locks.code, 0, locks.stderr)
    assert.deepEqual(JSON.parse(locks.stdout), [], 'no lock')
    assert.equal(await pgServer.sql('SELECT count(*) FROM locks', 'failover'), '0\n')
    for (const x of agents) {
      assert.equal(x.process.proc.exitCode, null, 'every agent is still running')
      assert.equal((await x.status()).renewal.failed, 0, 'no renewal failed')
    }
  })
})
