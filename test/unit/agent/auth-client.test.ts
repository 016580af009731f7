import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto'
import type http from 'node:http'
import https from 'node:https'
import tls from 'node:tls'
import type { AddressInfo } from 'node:net'
import { AuthClient } from '../../../src/agent/auth-client.ts'
import { AUTH_SERVER_NAME } from '../../../src/api/types.ts'
import { MemidError } from '../../../src/core/errors.ts'
import { withPrivateKeyPem } from '../../../src/pki/pem.ts'
import { createCaCertificate, issueLeaf, spkiPin } from '../../../src/pki/x509.ts'

// The client checks every answer against the contract's schemas (api/schemas.ts): an
// auth server (or anything in its place) that answers with the wrong shape gets a typed
// ERR_AUTH_BAD_RESPONSE naming the field, never a half-typed object deeper in the agent.

/**
 * An HTTPS server standing in for the auth service (certificate for memid-auth from a
 * throwaway TLS CA): `/v1/cas` gets the CA bundle, every other request `answer(req, send)`.
 */
async function fakeAuthServer(answer: (req: http.IncomingMessage, send: (body: unknown) => void) => void): Promise<{ server: https.Server; caPem: string; port: number }> {
  const ca = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const caPem = await createCaCertificate(ca.privateKey, ca.publicKey, 'test tls CA', 3_600_000)
  const leafKey: KeyObject = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey
  const leaf = await issueLeaf({
    ca: { key: ca.privateKey, certPem: caPem }, publicKey: createPublicKey(leafKey), commonName: AUTH_SERVER_NAME,
    dnsNames: [AUTH_SERVER_NAME], ttlMs: 3_600_000, usage: 'server',
  })
  const cas = { clusterName: 't', tls: caPem, sshHost: 'ssh-ed25519 AAAA host', sshUser: 'ssh-ed25519 AAAA user' }
  const server = withPrivateKeyPem(leafKey, (key) => https.createServer({ key, cert: leaf.pem }, (req, res) => {
    req.resume()
    const send = (body: unknown) => {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify(body))
    }
    if (req.url === '/v1/cas') send(cas)
    else answer(req, send)
  }))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { server, caPem, port: (server.address() as AddressInfo).port }
}

describe('AuthClient checks answers with the contract schemas', () => {
  let server: https.Server
  let caPem: string
  let answer: unknown = {}
  let port = 0

  before(async () => {
    ;({ server, caPem, port } = await fakeAuthServer((_req, send) => send(answer)))
  })
  after(() => new Promise<void>((resolve) => server.close(() => resolve())))

  async function joinWith(body: unknown): Promise<unknown> {
    answer = body
    const client = new AuthClient({ server: `127.0.0.1:${port}`, caPins: [spkiPin(caPem)] })
    try {
      await client.bootstrap()
      return await client.join({ joinMethod: 'token', token: 't', publicKey: 'k' })
    } finally {
      client.close()
    }
  }

  const good = { certificate: 'PEM', bot: 'b', instanceId: 'i', generation: 1, serial: 's', notBefore: new Date().toISOString(), notAfter: new Date().toISOString() }

  it('a well-formed answer is returned (unknown extra fields dropped)', async () => {
    assert.deepEqual(await joinWith({ ...good, extra: 1 }), good)
  })

  for (const [what, body, field] of [
    ['a missing field', { ...good, certificate: undefined }, 'certificate'],
    ['a number as a string', { ...good, generation: '1' }, 'generation'],
    ['a time that is not one', { ...good, notAfter: 'tomorrow' }, 'notAfter'],
    ['not an object at all', [1, 2], ''],
  ] as const) {
    it(`${what} is ERR_AUTH_BAD_RESPONSE naming the field`, async () => {
      await assert.rejects(joinWith(body), (err: unknown) => {
        assert.ok(err instanceof MemidError)
        assert.equal(err.code, 'ERR_AUTH_BAD_RESPONSE')
        assert.match(err.message, /^join: the auth server sent a malformed answer: /)
        if (field) assert.match(err.message, new RegExp(`: ${field}: `))
        return true
      })
    })
  }
})

// Requests under one identity share its one connection (identityAgent): they queue, and a
// request's timeout counts from when it has the connection, so a slow server does not turn
// the last queued request into a timeout (and, with replicas, a needless move to the next).
describe('AuthClient: requests under one identity queue on one connection', () => {
  let server: https.Server
  let caPem: string
  let port = 0
  let connections = 0

  before(async () => {
    // Each answer takes 300 ms: three in a row take longer than one request's timeout.
    ;({ server, caPem, port } = await fakeAuthServer((_req, send) => setTimeout(() => send({ generation: 1 }), 300)))
    server.on('secureConnection', () => connections++)
  })
  after(() => new Promise<void>((resolve) => {
    server.closeAllConnections()
    server.close(() => resolve())
  }))

  it('three concurrent requests use one connection and none times out behind the others', async () => {
    const client = new AuthClient({ server: `127.0.0.1:${port}`, caPins: [spkiPin(caPem)], timeoutMs: 500 })
    await client.bootstrap()
    const before = connections
    const caller = { agent: client.identityAgent(tls.createSecureContext({ ca: caPem })) }
    const hb = { hostname: 'h', version: '0', os: 'linux', arch: 'x64', uptimeSeconds: 1, services: [] }
    try {
      const t0 = performance.now()
      const answers = await Promise.all([1, 2, 3].map(() => client.heartbeat(caller, hb)))
      assert.deepEqual(answers, [{ generation: 1 }, { generation: 1 }, { generation: 1 }])
      assert.ok(performance.now() - t0 >= 850, 'they were answered one after the other')
      assert.equal(connections - before, 1, 'one connection for the three')
    } finally {
      caller.agent.destroy()
      client.close()
    }
  })
})

// A runner's start is bootstrap (an unverified connection for the CA's claim, then one
// verified against the pinned CA) and its join. The join takes the verified connection
// rather than a third: every handshake is CPU on the auth service, and a fleet of
// ephemeral runners joins all day.
describe("AuthClient: a runner's join rides the bootstrap's verified connection", () => {
  let server: https.Server
  let caPem: string
  let port = 0
  const connections: tls.TLSSocket[] = []
  const served: { url: string | undefined; socket: number }[] = []
  const good = { certificate: 'PEM', bot: 'b', instanceId: 'i', generation: 1, serial: 's', notBefore: new Date().toISOString(), notAfter: new Date().toISOString() }

  before(async () => {
    ;({ server, caPem, port } = await fakeAuthServer((_req, send) => send(good)))
    server.on('secureConnection', (s: tls.TLSSocket) => connections.push(s))
    server.on('request', (req: http.IncomingMessage) => served.push({ url: req.url, socket: connections.indexOf(req.socket as tls.TLSSocket) }))
  })
  after(() => new Promise<void>((resolve) => {
    server.closeAllConnections()
    server.close(() => resolve())
  }))

  it('bootstrap and join open two connections, not three: the CA bundle read over the verified one and the join on the same', async () => {
    const client = new AuthClient({ server: `127.0.0.1:${port}`, caPins: [spkiPin(caPem)] })
    try {
      await client.bootstrap()
      await client.join({ joinMethod: 'token', token: 't', publicKey: 'k' })
    } finally {
      client.close()
    }
    assert.equal(connections.length, 2, `connections to the auth service: ${connections.length}`)
    assert.deepEqual(served, [{ url: '/v1/cas', socket: 0 }, { url: '/v1/cas', socket: 1 }, { url: '/v1/join', socket: 1 }])
  })
})
