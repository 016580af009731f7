import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createPublicKey, generateKeyPairSync } from 'node:crypto'
import https from 'node:https'
import net from 'node:net'
import type { AddressInfo } from 'node:net'
import { AuthClient } from '../../../src/agent/auth-client.ts'
import { AUTH_SERVER_NAME } from '../../../src/api/types.ts'
import { MemidError } from '../../../src/core/errors.ts'
import { withPrivateKeyPem } from '../../../src/pki/pem.ts'
import { createCaCertificate, issueLeaf, spkiPin } from '../../../src/pki/x509.ts'

// Replicas of one cluster (one TLS CA), each told how to answer the join: the client must
// move on for what says nothing about the request (refused, reset, 5xx) and take a 4xx
// as the cluster's answer.

type Mode = 'ok' | '503' | '401' | 'reset'

interface Replica {
  addr: string
  mode: Mode
  joins: number
}

const good = { certificate: 'PEM', bot: 'b', instanceId: 'i', generation: 1, serial: 's', notBefore: new Date().toISOString(), notAfter: new Date().toISOString() }

describe('AuthClient with several servers', () => {
  const servers: https.Server[] = []
  const replicas: Replica[] = []
  let pin = ''
  let closedAddr = ''

  before(async () => {
    const ca = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const caPem = await createCaCertificate(ca.privateKey, ca.publicKey, 'test tls CA', 3_600_000)
    pin = spkiPin(caPem)
    const leafKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey
    const leaf = await issueLeaf({
      ca: { key: ca.privateKey, certPem: caPem }, publicKey: createPublicKey(leafKey), commonName: AUTH_SERVER_NAME,
      dnsNames: [AUTH_SERVER_NAME], ttlMs: 3_600_000, usage: 'server',
    })
    const cas = { clusterName: 't', tls: caPem, sshHost: 'ssh-ed25519 AAAA host', sshUser: 'ssh-ed25519 AAAA user' }
    for (let i = 0; i < 3; i++) {
      const r: Replica = { addr: '', mode: 'ok', joins: 0 }
      const server = withPrivateKeyPem(leafKey, (key) => https.createServer({ key, cert: leaf.pem }, (req, res) => {
        if (req.url === '/v1/cas') {
          res.writeHead(200, { 'content-type': 'application/json' })
          return res.end(JSON.stringify(cas))
        }
        r.joins++
        if (r.mode === 'reset') return req.socket.destroy()
        const [status, body] = r.mode === 'ok' ? [200, good]
          : r.mode === '503' ? [503, { error: { code: 'ERR_STORAGE', message: 'store down' } }]
            : [401, { error: { code: 'ERR_TOKEN_INVALID', message: 'the join token is not valid' } }]
        res.writeHead(status, { 'content-type': 'application/json' })
        res.end(JSON.stringify(body))
      }))
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
      r.addr = `127.0.0.1:${(server.address() as AddressInfo).port}`
      servers.push(server)
      replicas.push(r)
    }
    // A port nothing listens on: connection refused.
    const probe = net.createServer()
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve))
    closedAddr = `127.0.0.1:${(probe.address() as AddressInfo).port}`
    await new Promise<void>((resolve) => probe.close(() => resolve()))
  })
  after(async () => {
    for (const s of servers) {
      s.closeAllConnections()
      await new Promise<void>((resolve) => s.close(() => resolve()))
    }
  })

  function client(addrs: string[]): AuthClient {
    return new AuthClient({ server: addrs.map((a) => ({ host: '127.0.0.1', port: Number(a.split(':')[1]) })), caPins: [pin], timeoutMs: 5_000 })
  }
  const join = (c: AuthClient) => c.join({ joinMethod: 'token', token: 't', publicKey: 'k' })
  function reset(...modes: Mode[]): void {
    modes.forEach((m, i) => Object.assign(replicas[i]!, { mode: m, joins: 0 }))
  }

  it('a refused connection, a reset and a 5xx each move to the next server, which is kept', async () => {
    const [a, b, c] = replicas as [Replica, Replica, Replica]
    reset('reset', '503', 'ok')
    const cl = client([closedAddr, a.addr, b.addr, c.addr])
    try {
      await cl.bootstrap()
      assert.deepEqual(await join(cl), good)
      assert.deepEqual([a.joins, b.joins, c.joins], [1, 1, 1])
      assert.equal(cl.server, c.addr, 'the server that answered is the one in use')
      await join(cl)
      assert.deepEqual([a.joins, b.joins, c.joins], [1, 1, 2], 'keeps to the healthy server')
      assert.deepEqual(cl.servers, [closedAddr, a.addr, b.addr, c.addr])
    } finally {
      cl.close()
    }
  })

  it('a 4xx (401) is the answer: no other server is asked', async () => {
    const [a, b] = replicas as [Replica, Replica]
    reset('401', 'ok')
    const cl = client([a.addr, b.addr])
    try {
      await cl.bootstrap()
      await assert.rejects(join(cl), (e: unknown) => e instanceof MemidError && e.code === 'ERR_TOKEN_INVALID')
      assert.deepEqual([a.joins, b.joins], [1, 0])
      assert.equal(cl.server, a.addr)
    } finally {
      cl.close()
    }
  })

  it('every server failing: each is tried once and the last failure is the error', async () => {
    const [a, b] = replicas as [Replica, Replica]
    reset('503', '503')
    const cl = client([a.addr, b.addr])
    try {
      await cl.bootstrap()
      await assert.rejects(join(cl), (e: unknown) => e instanceof MemidError && e.code === 'ERR_STORAGE')
      assert.deepEqual([a.joins, b.joins], [1, 1])
    } finally {
      cl.close()
    }
  })

  it('bootstrap itself fails over past a server that is down', async () => {
    const [a] = replicas as [Replica]
    reset('ok')
    const cl = client([closedAddr, a.addr])
    try {
      const cas = await cl.bootstrap()
      assert.equal(cas.clusterName, 't')
      assert.equal(cl.server, a.addr)
    } finally {
      cl.close()
    }
  })
})
