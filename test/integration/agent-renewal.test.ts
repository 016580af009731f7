import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import path from 'node:path'
import { startAuthServer, type AuthServer } from '../../src/auth/server.ts'
import { SqliteStore } from '../../src/storage/sqlite.ts'
import { MemidError } from '../../src/core/errors.ts'
import { silentLogger } from '../../src/core/log.ts'
import { eventually, startAgent, tempDir, type AgentFixture } from '../fixtures/memid.ts'

/**
 * The agent's side of renewal (issue 10 items 5 and 6): a real `memid start` against an
 * auth server running in this process, so a test can lose answers and slow requests down
 * at the server while the real service code decides.
 */

function get(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = ''
      res.on('data', (d: Buffer) => (body += d.toString()))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    }).on('error', reject)
  })
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

function logLines(agent: AgentFixture): Record<string, any>[] {
  return agent.process.stderr.split('\n').flatMap((l) => {
    try {
      return [JSON.parse(l) as Record<string, any>]
    } catch {
      return []
    }
  })
}

describe('agent renewal', () => {
  let dir: string
  let cleanup: () => void
  let srv: AuthServer
  const agents: AgentFixture[] = []

  before(async () => {
    ;({ dir, cleanup } = tempDir('memid-renewal-'))
    srv = await startAuthServer({ store: SqliteStore.open(path.join(dir, 'memid.db')), listen: '127.0.0.1:0', clusterName: 'memid', logger: silentLogger(), joinRate: 1000 })
    await srv.admin.addRole({ name: 'deployers', logins: ['deploy'] })
  })
  after(async () => {
    for (const a of agents) await a.stop()
    await srv?.stop()
    cleanup?.()
  })

  async function agentFor(bot: string, args: string[], maxTtl?: string): Promise<AgentFixture> {
    const { token } = await srv.admin.addBot({ name: bot, roles: ['deployers'], ...(maxTtl ? { maxTtl } : {}) })
    const agent = startAgent({ auth: { addr: srv.address, caPin: srv.caPin }, token: token.token, args })
    agents.push(agent)
    await agent.ready
    return agent
  }

  test('a bot max TTL shorter than the renewal interval: the agent renews at half the lifetime it was given', async () => {
    // The server clamps the 30 s asked for to 5 s; an 8 s interval alone would let it expire.
    const agent = await agentFor('clamped', ['--certificate-ttl', '30s', '--renewal-interval', '8s'], '5s')
    const until = Date.now() + 12_000
    let last = await agent.status()
    while (Date.now() < until) {
      last = await agent.status()
      assert.equal(last.identity.status, 'valid', `the identity stays valid (generation ${last.generation})`)
      await sleep(400)
    }
    assert.ok(last.generation >= 4, `renewed at least three times in 12 s, got generation ${last.generation}`)
    assert.equal(last.renewal.failed, 0)
    // Read between runs: while a renewal is in flight no next run is scheduled yet.
    const scheduled = await eventually(async () => {
      const st = await agent.status()
      return st.renewal.nextRunAt !== undefined ? st : undefined
    }, 5_000, 'a scheduled renewal')
    assert.ok(Date.parse(scheduled.renewal.nextRunAt as string) - Date.now() < 3_000, 'the next renewal is due within half of the 5 s lifetime')
    await agent.stop()
  })

  test('renewal answers lost: the agent retries with the same key and is neither locked nor stopped', async () => {
    const agent = await agentFor('unlucky', ['--certificate-ttl', '1h', '--renewal-interval', '30m'])
    const orig = srv.auth.renew.bind(srv.auth)
    let lose = 3
    srv.auth.renew = async (req, peer) => {
      const res = await orig(req, peer)
      // The server committed the renewal; the agent never hears of it.
      if (res.bot === 'unlucky' && lose-- > 0) throw new MemidError('ERR_INTERNAL', 'answer lost')
      return res
    }
    try {
      agent.process.signal('SIGHUP')
      const s = await eventually(async () => {
        const st = await agent.status()
        return st.generation === 2 && st.renewal.consecutiveFailures === 0 ? st : undefined
      }, 30_000, 'renewal after three lost answers')
      assert.equal(s.renewal.failed, 3)
      assert.equal(agent.process.proc.exitCode, null, 'still running')
      const instance = s.instanceId as string
      const renewals = (await srv.admin.pageAudit({ type: 'renew', limit: 10_000 })).items.reverse().filter((e) => e.instance === instance)
      assert.deepEqual(renewals.map((e) => [e.fields.generation, e.fields.retry]), [[2, false], [2, true], [2, true], [2, true]])
      assert.ok(!(await srv.admin.listLocks()).some((l) => l.instance === instance), 'no lock')
    } finally {
      srv.auth.renew = orig
    }
    await agent.stop()
  })

  test('a request in flight under the old generation finishes before the new generation is used', async () => {
    const sock = path.join(dir, `ssh-${Date.now()}`, 'agent.sock')
    const agent = await agentFor('overlap', ['--certificate-ttl', '1h', '--renewal-interval', '30m', '--ssh-agent', sock])
    const orig = srv.auth.issueSsh.bind(srv.auth)
    let calls = 0
    let arrived!: () => void
    const slowOneArrived = new Promise<void>((r) => (arrived = r))
    srv.auth.issueSsh = async (req, peer) => {
      if (++calls > 2) return orig(req, peer)
      // After the first renewal: one fast failure (the service loop retries on its own
      // timer), then a retry that takes 2 s at the server.
      if (calls === 1) throw new MemidError('ERR_INTERNAL', 'try again')
      arrived()
      await sleep(2_000)
      return orig(req, peer)
    }
    try {
      agent.process.signal('SIGHUP')
      await eventually(async () => (await agent.status()).generation === 2, 10_000, 'first renewal')
      await slowOneArrived
      // The service's retry is in flight under generation 2; renew now.
      agent.process.signal('SIGHUP')
      const s = await eventually(async () => {
        const st = await agent.status()
        return st.generation === 3 && st.services[0]?.credential.status === 'valid' && calls >= 3 ? st : undefined
      }, 15_000, 'second renewal and a fresh ssh certificate')
      await sleep(500)
      assert.equal(agent.process.proc.exitCode, null, `still running:\n${agent.process.stderr.slice(-1500)}`)
      assert.ok(!(await srv.admin.listLocks()).some((l) => l.instance === s.instanceId), 'no lock')
      assert.equal((await srv.admin.pageAudit({ type: 'generation.mismatch', limit: 10_000 })).items.length, 0)
    } finally {
      srv.auth.issueSsh = orig
    }
    await agent.stop()
  })

  test('an identity that expired while the auth service was away: reported once, error text that never grows', async () => {
    const agent = await agentFor('stranded', ['--certificate-ttl', '30s', '--renewal-interval', '8s', '--diag-addr', '127.0.0.1:0'], '5s')
    const diag = String((await agent.ready).diagnostics)
    const lost = srv
    srv = undefined as unknown as AuthServer
    await lost.stop()
    // Expired, and the renewal loop has run into it once since.
    const first = await eventually(async () => {
      const st = await agent.status()
      return st.identity.status === 'expired' && /expired/.test(st.renewal.lastError ?? '') ? st : undefined
    }, 20_000, 'expiry')
    const readyA = await get(`http://${diag}/readyz`)
    await sleep(10_000)
    const second = await agent.status()
    const readyB = await get(`http://${diag}/readyz`)
    assert.equal(second.identity.status, 'expired')
    assert.ok(second.renewal.failed > first.renewal.failed, 'it kept trying')
    assert.equal(second.renewal.lastError, first.renewal.lastError, 'the renewal error stays the same')
    assert.equal(second.identity.lastError, first.identity.lastError, 'the identity error stays the same')
    assert.match(second.identity.lastError ?? '', /auth server/, 'the cause is the auth service being away')
    assert.equal(readyA.status, 503)
    assert.equal(readyB.body, readyA.body, '/readyz says the same thing')
    assert.equal(JSON.parse(readyB.body).services.identity.status, 'expired')
    for (const text of [second.renewal.lastError, second.identity.lastError, readyB.body]) {
      assert.ok((String(text).match(/expired/g) ?? []).length <= 2, `no nesting: ${text}`)
      assert.ok(String(text).length < 400, `bounded: ${text}`)
    }
    // One log line per state change, not one per retry.
    const warnings = logLines(agent).filter((r) => r.level >= 40)
    const byMsg = new Map<string, number>()
    for (const r of warnings) byMsg.set(`${r.msg}|${r.reason ?? ''}`, (byMsg.get(`${r.msg}|${r.reason ?? ''}`) ?? 0) + 1)
    for (const [k, n] of byMsg) assert.equal(n, 1, `logged once: ${k}`)
    assert.ok(warnings.some((r) => /expired/.test(r.reason ?? '')), 'the expiry is logged')
  })
})
