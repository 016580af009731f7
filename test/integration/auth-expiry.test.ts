import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import https from 'node:https'
import tls from 'node:tls'
import type { AuthClient } from '../../src/agent/auth-client.ts'
import { AUTH_SERVER_NAME } from '../../src/api/types.ts'
import { withPrivateKeyPem } from '../../src/pki/pem.ts'
import { startAuth, type AuthFixture } from '../fixtures/memid.ts'
import { client, join, newKey, type TestIdentity } from '../helpers/identity.ts'

interface Answer {
  status: number
  code: string | undefined
  /** Whether the request went over a connection that had carried an earlier one. */
  reused: boolean
}

function contextFor(c: AuthClient, id: TestIdentity, maxVersion?: tls.SecureVersion): tls.SecureContext {
  return withPrivateKeyPem(id.key, (key) => tls.createSecureContext({ key, cert: id.res.certificate, ca: c.cas.tls, ...(maxVersion ? { maxVersion } : {}) }))
}

function call(agent: https.Agent, auth: AuthFixture, method: string, path: string, body?: unknown): Promise<Answer> {
  const [host, port] = auth.addr.split(':') as [string, string]
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body)
    const req = https.request({ host, port: Number(port), method, path, agent, headers: payload ? { 'content-type': 'application/json' } : {} }, (res) => {
      let text = ''
      res.on('data', (d: Buffer) => (text += d.toString()))
      res.on('end', () => {
        let code: string | undefined
        try { code = JSON.parse(text)?.error?.code } catch { /* not JSON */ }
        resolve({ status: res.statusCode ?? 0, code, reused: req.reusedSocket })
      })
    })
    req.on('error', reject)
    req.end(payload)
  })
}

/** One HTTP/1.1 request on a fresh TLS connection, offering `session` for resumption. */
function rawRequest(auth: AuthFixture, ctx: tls.SecureContext, method: string, path: string, body: unknown, session?: Buffer):
  Promise<{ status: number; code: string | undefined; resumed: boolean; session: Buffer | undefined; cipher: string }> {
  const [host, port] = auth.addr.split(':') as [string, string]
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ host, port: Number(port), secureContext: ctx, servername: AUTH_SERVER_NAME, ...(session ? { session } : {}) })
    let newSession: Buffer | undefined
    let resumed = false
    let cipher = ''
    let text = ''
    sock.on('session', (s: Buffer) => (newSession = s))
    sock.on('secureConnect', () => {
      resumed = sock.isSessionReused()
      cipher = sock.getCipher().name
      const payload = body === undefined ? '' : JSON.stringify(body)
      sock.write(`${method} ${path} HTTP/1.1\r\nhost: ${AUTH_SERVER_NAME}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(payload)}\r\n\r\n${payload}`)
    })
    sock.on('data', (d: Buffer) => (text += d.toString()))
    sock.on('error', reject)
    sock.on('close', () => {
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0)
      let code: string | undefined
      try { code = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4))?.error?.code } catch { /* not JSON */ }
      resolve({ status, code, resumed, session: newSession, cipher })
    })
  })
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe('auth service: expiry on every request', () => {
  let auth: AuthFixture
  let c: AuthClient

  before(async () => {
    auth = await startAuth()
    c = await client(auth)
  })
  after(async () => {
    c?.close()
    await auth?.stop()
  })

  test('the API never resumes a TLS session (client-certificate auth is a full handshake every time)', async () => {
    const id = await join(c, await auth.bot('resumer'))
    for (const v of ['TLSv1.2', 'TLSv1.3'] as const) {
      const ctx = contextFor(c, id, v)
      const first = await rawRequest(auth, ctx, 'POST', '/v1/heartbeat', { hostname: 'h', version: '0', os: 'linux', arch: 'x64', uptimeSeconds: 1, services: [] })
      assert.equal(first.status, 200)
      const second = await rawRequest(auth, ctx, 'GET', '/healthz', undefined, first.session)
      assert.equal(second.resumed, false, `${v}: no resumption`)
    }
  })

  test('the API picks AES-128-GCM (SHA-256), as Go servers do, also for a client that offers AES-256 first', async () => {
    const id = await join(c, await auth.bot('cipher'))
    const ctx = contextFor(c, id, 'TLSv1.3')
    const r = await rawRequest(auth, ctx, 'GET', '/healthz', undefined)
    assert.equal(r.cipher, 'TLS_AES_128_GCM_SHA256')
  })

  test('an expired identity is refused on a kept-alive connection and on a resumed TLS session', async () => {
    const id = await join(c, await auth.bot('shortlived'), '5s')
    const notAfter = Date.parse(id.res.notAfter)
    const keep = new https.Agent({ keepAlive: true, maxSockets: 1, secureContext: contextFor(c, id), servername: AUTH_SERVER_NAME })
    try {
      const hb = { hostname: 'h', version: '0', os: 'linux', arch: 'x64', uptimeSeconds: 1, services: [] }
      assert.equal((await call(keep, auth, 'POST', '/v1/heartbeat', hb)).status, 200)
      // Sessions to resume later, one per TLS version, taken while the identity was valid.
      const sessions: [string, tls.SecureContext, Buffer | undefined][] = []
      for (const v of ['TLSv1.2', 'TLSv1.3'] as const) {
        const ctx = contextFor(c, id, v)
        sessions.push([v, ctx, (await rawRequest(auth, ctx, 'GET', '/healthz', undefined)).session])
      }
      // Keep the one connection alive (the server closes idle ones after 5 s) past expiry.
      while (Date.now() < notAfter + 1000) {
        assert.equal((await call(keep, auth, 'GET', '/healthz')).reused, true, 'still the first connection')
        await sleep(800)
      }
      const late = await call(keep, auth, 'POST', '/v1/renew', { publicKey: newKey().publicKey, ttl: '1h' })
      assert.equal(late.reused, true, 'the renewal went over the connection made while the identity was valid')
      assert.equal(late.status, 401)
      assert.equal(late.code, 'ERR_CERT_EXPIRED')
      for (const [v, ctx, session] of sessions) {
        assert.ok(session, `${v}: the server offered a session`)
        const r = await rawRequest(auth, ctx, 'POST', '/v1/renew', { publicKey: newKey().publicKey, ttl: '1h' }, session)
        assert.equal(r.resumed, false, `${v}: not resumed`)
        assert.equal(r.status, 401, `${v}: refused`)
      }
    } finally {
      keep.destroy()
    }
  })
})
