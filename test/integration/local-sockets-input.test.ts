import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import net from 'node:net'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { startAgent, startAuth, type AgentFixture, type AuthFixture } from '../fixtures/memid.ts'

type Target = { socketPath: string } | { host: string; port: number }

/** Writes raw bytes, returns whatever came back before the server closed or 2 s passed. */
function raw(target: Target, bytes: Buffer | string): Promise<string> {
  return new Promise((resolve) => {
    const s = 'socketPath' in target ? net.connect(target.socketPath) : net.connect(target.port, target.host)
    let out = ''
    s.on('data', (d: Buffer) => (out += d.toString('latin1')))
    s.on('error', () => resolve(out))
    s.on('close', () => resolve(out))
    s.setTimeout(2000, () => s.destroy())
    s.end(bytes)
  })
}

function request(target: Target, method: string, p: string, body?: string | Buffer, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ ...target, method, path: p, headers: { 'content-type': 'application/json', ...headers } }, (res) => {
      let text = ''
      res.on('data', (d: Buffer) => (text += d.toString()))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }))
    })
    req.on('error', reject)
    req.end(body)
  })
}

const GARBAGE = [
  Buffer.from('\x00\x01\x02\x03 not http at all\r\n\r\n'),
  randomBytes(4096),
  Buffer.from(`GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(70_000)}\r\n\r\n`),
  Buffer.from('POST /v1/roles HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"name":'),
  Buffer.from('GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n'),
]

describe('local sockets survive malformed input (admin, control, diagnostics)', () => {
  let auth: AuthFixture
  let agent: AgentFixture
  let diag: { host: string; port: number }

  before(async () => {
    auth = await startAuth()
    const token = await auth.bot('fuzz')
    agent = startAgent({ auth, token, args: ['--diag-addr', '127.0.0.1:0'] })
    const ready = await agent.ready
    const [host, port] = String(ready.diagnostics).split(':') as [string, string]
    diag = { host, port: Number(port) }
  })
  after(async () => {
    await agent?.stop()
    await auth?.stop()
  })

  test('the admin socket answers bad bodies with specific errors and changes nothing', async () => {
    const admin = { socketPath: path.join(auth.dataDir, 'admin.sock') }
    const cases: [string, string | Buffer, number, string][] = [
      ['/v1/roles', '{nope', 400, 'ERR_INVALID_JSON'],
      ['/v1/roles', JSON.stringify({ name: 'x', logins: 'deploy' }), 400, 'ERR_BAD_REQUEST'],
      ['/v1/roles', JSON.stringify({ name: 'x', bogus: 1 }), 400, 'ERR_BAD_REQUEST'],
      ['/v1/roles', JSON.stringify({ name: 'a/b' }), 400, 'ERR_BAD_REQUEST'],
      ['/v1/bots', JSON.stringify({ name: 'b', roles: 'fuzz' }), 400, 'ERR_BAD_REQUEST'],
      ['/v1/tokens', JSON.stringify({ bot: 'fuzz', ttl: 'forever' }), 400, 'ERR_BAD_REQUEST'],
      ['/v1/kube', JSON.stringify({ name: 'k', uri: 'http://insecure:80' }), 400, 'ERR_BAD_REQUEST'],
      ['/v1/dbs', JSON.stringify({ name: 'd', uri: 'postgres://u:pw@h:5432/db' }), 400, 'ERR_BAD_REQUEST'],
      ['/v1/locks', JSON.stringify({ bot: 'fuzz', instance: '00000000-0000-0000-0000-000000000000' }), 400, 'ERR_BAD_REQUEST'],
      ['/v1/roles', Buffer.alloc(70 * 1024, 0x20), 413, 'ERR_BODY_TOO_LARGE'],
    ]
    for (const [p, body, status, code] of cases) {
      const r = await request(admin, 'POST', p, body)
      assert.equal(r.status, status, `${p} ${String(body).slice(0, 50)}`)
      assert.equal(JSON.parse(r.body).error.code, code)
    }
    const wrongType = await request(admin, 'POST', '/v1/roles', '{}', { 'content-type': 'text/plain' })
    assert.equal(wrongType.status, 415)
    for (const g of GARBAGE) await raw(admin, g)
    const roles = JSON.parse((await request(admin, 'GET', '/v1/roles')).body) as { name: string }[]
    assert.deepEqual(roles.map((r) => r.name), ['fuzz'], 'nothing was created by bad input')
    const locks = JSON.parse((await request(admin, 'GET', '/v1/locks')).body) as unknown[]
    assert.equal(locks.length, 0)
  })

  test('the control socket and diagnostics shrug off garbage; the agent keeps working', async () => {
    const control = { socketPath: agent.controlSocket }
    for (const g of GARBAGE) {
      await raw(control, g)
      await raw(diag, g)
    }
    assert.equal((await request(control, 'POST', '/v1/status', '{}')).status, 405)
    assert.equal((await request(control, 'GET', '/v1/nothing')).status, 404)
    assert.equal((await request(diag, 'POST', '/readyz', '{}')).status, 405)
    assert.equal((await request(diag, 'GET', '/readyz')).status, 200)
    const s = await agent.status()
    assert.equal(s.identity.status, 'valid')
    assert.equal(agent.process.proc.exitCode, null)
    assert.equal(auth.process.proc.exitCode, null)
  })
})
