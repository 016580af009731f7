import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import path from 'node:path'
import { startAgent, type AgentHandle } from '../../src/agent/agent.ts'
import { startAuthServer, type AuthServer } from '../../src/auth/server.ts'
import { createLogger } from '../../src/core/log.ts'
import { SqliteStore } from '../../src/storage/sqlite.ts'
import { eventually, tempDir } from '../fixtures/memid.ts'

// The agent in-process against a real auth service on port 0: join, renewal, status and
// /readyz as each service's own health, and stop.

function get(url: string): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = ''
      res.on('data', (d: Buffer) => (body += d.toString()))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(body) }))
    }).on('error', reject)
  })
}

const quiet = () => createLogger({ sink: { write: () => undefined } })

describe('agent in-process against startAuthServer', () => {
  let auth: AuthServer
  let dir: string
  let cleanup: () => void

  before(async () => {
    ;({ dir, cleanup } = tempDir('memid-inproc-'))
    auth = await startAuthServer({ store: SqliteStore.open(':memory:'), listen: '127.0.0.1:0', clusterName: 'inproc', logger: quiet() })
    await auth.admin.addResource('db', { name: 'orders', uri: 'postgres://127.0.0.1:1' })
    await auth.admin.addRole({ name: 'r', logins: ['deploy'], databases: ['orders'], dbUsers: ['app'], dbNames: ['*'] })
  })
  after(async () => {
    await auth?.stop()
    cleanup?.()
  })

  async function agentFor(bot: string, services: Parameters<typeof startAgent>[0]['services']): Promise<AgentHandle> {
    const { token } = await auth.admin.addBot({ name: bot, roles: ['r'] })
    return startAgent({
      authServer: auth.address, caPins: [auth.caPin], token: token.token, certificateTtlMs: 6_000, renewalIntervalMs: 2_000,
      diagnostics: '127.0.0.1:0', controlSocket: path.join(dir, bot, 'control.sock'), services, logger: quiet(), drainMs: 1_000,
    })
  }

  it('joins, serves, renews (identity and service certificates), reports ready, and stops cleanly', async () => {
    const sock = path.join(dir, 'ok', 'agent.sock')
    const agent = await agentFor('ok', [
      { type: 'ssh-agent', path: sock },
      { type: 'database-tunnel', listen: '127.0.0.1:0', service: 'orders', username: 'app' },
    ])
    await agent.ready
    const s = agent.status()
    assert.equal(s.bot, 'ok')
    assert.equal(s.generation, 1)
    assert.deepEqual(s.services.map((x) => [x.name, x.status]), [['ssh-agent', 'ok'], ['db-tunnel:orders', 'ok']])
    const ready = await get(`http://${s.diagnostics}/readyz`)
    assert.equal(ready.status, 200)
    assert.deepEqual(ready.body.services, { identity: { status: 'ok' }, 'ssh-agent': { status: 'ok' }, 'db-tunnel:orders': { status: 'ok' } })

    const serials = s.services.map((x) => (x.credential.status === 'valid' ? x.credential.serial : ''))
    const [renewed] = (await once(agent, 'renewed')) as [{ generation: number }]
    assert.equal(renewed.generation, 2)
    const after = agent.status()
    assert.equal(after.generation, 2)
    after.services.forEach((x, i) => assert.notEqual(x.credential.status === 'valid' ? x.credential.serial : '', serials[i], `${x.name} renewed with the identity`))

    await agent.stop()
    assert.deepEqual(await agent.closed, { code: 0 })
    assert.ok(!existsSync(sock), 'socket removed')
    assert.ok(agent.status().services.every((x) => x.status === 'stopped'))
  })

  it("a service's own degraded or failed health shows through status and /readyz, not overridden", async () => {
    await auth.admin.addResource('db', { name: 'billing', uri: 'postgres://127.0.0.1:1' })
    await auth.admin.addRole({ name: 'billing', databases: ['billing'], dbUsers: ['app'], dbNames: ['*'] })
    const { token } = await auth.admin.addBot({ name: 'partial', roles: ['r', 'billing'] })
    const agent = startAgent({
      authServer: auth.address, caPins: [auth.caPin], token: token.token, certificateTtlMs: 6_000, renewalIntervalMs: 2_000,
      diagnostics: '127.0.0.1:0', logger: quiet(), drainMs: 1_000,
      services: [
        // Not in the role's logins: no certificate yet, renewal keeps trying: degraded.
        { type: 'ssh-agent', path: path.join(dir, 'partial', 'agent.sock'), principals: ['root'] },
        // Not a registered cluster: degraded too.
        { type: 'kube-proxy', listen: '127.0.0.1:0', cluster: 'nowhere' },
        { type: 'database-tunnel', listen: '127.0.0.1:0', service: 'orders', username: 'app' },
        // Issued once, then the resource goes away: it expires and the tunnel says failed.
        { type: 'database-tunnel', listen: '127.0.0.1:0', service: 'billing', username: 'app' },
      ],
    })
    try {
      await agent.ready
      const s = agent.status()
      const byName = Object.fromEntries(s.services.map((x) => [x.name, x]))
      assert.equal(byName['ssh-agent']?.status, 'degraded')
      assert.match(String(byName['ssh-agent']?.reason), /no ssh-agent credential yet: .*; sign requests get SSH_AGENT_FAILURE/)
      assert.equal(byName['kube-proxy:nowhere']?.status, 'degraded')
      assert.equal(byName['db-tunnel:orders']?.status, 'ok')
      assert.equal(byName['db-tunnel:billing']?.status, 'ok')
      const ready = await get(`http://${s.diagnostics}/readyz`)
      assert.equal(ready.status, 503)
      assert.equal(ready.body.services['ssh-agent'].status, 'degraded')
      assert.equal(ready.body.services['kube-proxy:nowhere'].status, 'degraded')
      assert.equal(ready.body.services['db-tunnel:orders'].status, 'ok')
      assert.equal(ready.body.services.identity.status, 'ok')

      await auth.admin.removeResource('db', 'billing')
      await eventually(() => agent.status().services.find((x) => x.name === 'db-tunnel:billing')?.status === 'failed', 15_000, 'the billing certificate to expire')
      const later = await get(`http://${s.diagnostics}/readyz`)
      assert.equal(later.body.services['db-tunnel:billing'].status, 'failed')
      assert.match(later.body.services['db-tunnel:billing'].reason, /expired at .* and could not be renewed/)
      assert.equal(later.body.services['db-tunnel:orders'].status, 'ok', 'the other tunnel is unaffected')
    } finally {
      await agent.stop()
    }
    assert.deepEqual(await agent.closed, { code: 0 })
  })

  it("after a renewal the services' certificates ride the heartbeat's connection: one new mutual-TLS handshake for the auth service, not one per service", async () => {
    await auth.admin.addResource('db', { name: 'ledger', uri: 'postgres://127.0.0.1:1' })
    await auth.admin.addRole({ name: 'ledger', databases: ['ledger'], dbUsers: ['app'], dbNames: ['*'] })
    const { token } = await auth.admin.addBot({ name: 'three', roles: ['r', 'ledger'] })
    // The agent reaches the auth service through a TCP relay that counts its connections
    // (the TLS session is end to end: the relay sees only bytes).
    const upstream = auth.address.split(':')
    const sockets = new Set<net.Socket>()
    let opened = 0
    const relay = net.createServer((c) => {
      opened++
      const u = net.connect(Number(upstream[1]), upstream[0])
      for (const [a, b] of [[c, u], [u, c]] as const) {
        sockets.add(a)
        a.pipe(b)
        a.on('error', () => b.destroy())
        a.on('close', () => (b.destroy(), sockets.delete(a)))
      }
    })
    await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve))
    const agent = startAgent({
      authServer: `127.0.0.1:${(relay.address() as net.AddressInfo).port}`, caPins: [auth.caPin], token: token.token, certificateTtlMs: 6_000, renewalIntervalMs: 2_000,
      diagnostics: '127.0.0.1:0', logger: quiet(), drainMs: 1_000,
      services: [
        { type: 'ssh-agent', path: path.join(dir, 'three', 'agent.sock') },
        { type: 'database-tunnel', listen: '127.0.0.1:0', service: 'orders', username: 'app' },
        { type: 'database-tunnel', listen: '127.0.0.1:0', service: 'ledger', username: 'app' },
      ],
    })
    try {
      await agent.ready
      const before = opened
      const serials = agent.status().services.map((x) => (x.credential.status === 'valid' ? x.credential.serial : ''))
      // 'renewed' comes once the three services have their certificates under the new identity.
      await once(agent, 'renewed')
      agent.status().services.forEach((x, i) => assert.notEqual(x.credential.status === 'valid' ? x.credential.serial : '', serials[i], `${x.name} renewed`))
      // The heartbeat under the new identity needs a connection of its own, and the renewal
      // one more if the old identity's connection had been closed meanwhile. With a
      // connection per concurrent request, the three certificate requests opened two more.
      const during = opened - before
      assert.ok(during >= 1 && during <= 2, `new connections to the auth service during one renewal with three services: ${during} (expected 1 or 2)`)
    } finally {
      await agent.stop()
      relay.close()
      for (const s of sockets) s.destroy()
    }
    assert.deepEqual(await agent.closed, { code: 0 })
  })
})
