import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import tls from 'node:tls'
import type { TlsClientCredential } from '../../src/credentials/credentials.ts'
import type { X509Authority } from '../../src/pki/x509.ts'
import { UpstreamDialer } from '../../src/services/kube-proxy/upstream-dialer.ts'
import { serverCertificate, testCa } from '../fixtures/db-tunnel.ts'
import { issueKubeCredential } from '../fixtures/kube-client.ts'

const norm = (serial: string) => serial.toLowerCase().replace(/^0+/, '')

/**
 * Every kubectl connection (exec, attach, port-forward included) gets a fresh TLS connection
 * to the API server; they resume the session of the credential that made it, and a renewal
 * (the dialer is retired) never lets the new certificate resume the old session.
 */
describe('kube proxy upstream connections resume the upstream TLS session of their credential', () => {
  let server: tls.Server
  let ca: X509Authority
  let upstream: { url: string; host: string; port: number; caPem: string }
  const seen: { reused: boolean; serial: string }[] = []
  const sets: UpstreamDialer[] = []

  before(async () => {
    ca = await testCa('kube client CA')
    const serverCa = await testCa('kube server CA')
    const cert = await serverCertificate(serverCa)
    server = tls.createServer({ key: cert.keyPem, cert: cert.certPem, ca: ca.certPem, requestCert: true, rejectUnauthorized: true }, (s) => {
      seen.push({ reused: s.isSessionReused(), serial: norm(s.getPeerCertificate().serialNumber) })
      s.on('error', () => undefined)
      s.pipe(s)
    })
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const port = (server.address() as net.AddressInfo).port
    upstream = { url: `https://127.0.0.1:${port}`, host: '127.0.0.1', port, caPem: serverCa.certPem }
  })

  after(() => {
    for (const s of sets) s.retire()
    server?.close()
  })

  const connections = (cred: TlsClientCredential) => {
    const c = new UpstreamDialer(cred)
    sets.push(c)
    return c
  }

  /** One upgrade-style connection with a round trip (TLS 1.3 tickets come after the handshake). */
  const tunnel = async (conns: UpstreamDialer) => {
    const before = seen.length
    const s = conns.connect()
    await new Promise((r) => s.once('secureConnect', r))
    s.write('x')
    await new Promise((r) => s.once('data', r))
    s.destroy()
    assert.equal(seen.length, before + 1)
    return seen.at(-1)
  }

  test('the second upgrade resumes; after a renewal the first is a full handshake with the new certificate', async () => {
    const first = await issueKubeCredential({ ca, server: upstream })
    const a = connections(first)
    assert.deepEqual(await tunnel(a), { reused: false, serial: norm(first.serial) })
    assert.deepEqual(await tunnel(a), { reused: true, serial: norm(first.serial) })

    const renewed = await issueKubeCredential({ ca, server: upstream })
    a.retire()
    const b = connections(renewed)
    assert.deepEqual(await tunnel(b), { reused: false, serial: norm(renewed.serial) })
    assert.deepEqual(await tunnel(b), { reused: true, serial: norm(renewed.serial) })
  })
})
