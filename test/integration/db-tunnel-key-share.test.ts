import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import tls from 'node:tls'
import type { CredentialSource, TlsClientCredential } from '../../src/credentials/credentials.ts'
import type { Service } from '../../src/services/service.ts'
import type { X509Authority } from '../../src/pki/x509.ts'
import { appTunnel, dbCredential, echoRoundTrip, serverCertificate, testCa } from '../fixtures/db-tunnel.ts'
import { GROUP, helloRecorder, type OfferedGroups } from '../helpers/client-hello.ts'

const norm = (serial: string) => serial.toLowerCase().replace(/^0+/, '')

/**
 * The tunnel's upstream handshakes send one key share once the upstream has agreed on a
 * group: OpenSSL 3.5's second share (ML-KEM, the costly one) is not generated for a
 * server that never uses it, a server that takes the post-quantum share keeps getting
 * it, and a server that changes its mind is asked again rather than failed. The
 * ClientHellos are read off the wire by a relay between the tunnel and the server.
 */
describe('db-tunnel upstream key shares', () => {
  let clientCa: X509Authority
  let serverCaPem: string
  let serverCert: { keyPem: string; certPem: string }
  let server: tls.Server | undefined
  let serverPort = 0
  let recorder: Awaited<ReturnType<typeof helloRecorder>>
  let source: CredentialSource<TlsClientCredential>
  let tunnel: Service
  let tunnelPort: number
  const serials: string[] = []

  /** (Re)starts the upstream on the same port, agreeing only on `groups` (OpenSSL's defaults when undefined). */
  const serve = async (groups: string | undefined) => {
    if (server !== undefined) await new Promise<void>((r) => (server as tls.Server).close(() => r()))
    server = tls.createServer({ key: serverCert.keyPem, cert: serverCert.certPem, ca: clientCa.certPem, requestCert: true, rejectUnauthorized: true, ...(groups !== undefined ? { ecdhCurve: groups } : {}) }, (s) => {
      serials.push(norm(s.getPeerCertificate().serialNumber))
      s.on('error', () => undefined)
      s.pipe(s)
    })
    await new Promise<void>((r) => (server as tls.Server).listen(serverPort, '127.0.0.1', r))
    serverPort = (server.address() as net.AddressInfo).port
  }
  const issue = () => dbCredential({ clientCa, serverCaPem, user: 'app', host: '127.0.0.1', port: recorder.port })

  before(async () => {
    clientCa = await testCa('key share client CA')
    const serverCa = await testCa('key share server CA')
    serverCaPem = serverCa.certPem
    serverCert = await serverCertificate(serverCa)
    await serve('X25519:P-256')
    recorder = await helloRecorder({ host: '127.0.0.1', port: serverPort })
    ;({ tunnel, port: tunnelPort, source } = await appTunnel(await issue()))
  })

  after(async () => {
    await tunnel?.stop(500)
    await recorder?.close()
    server?.close()
  })

  /** One client connection through the tunnel (a round trip, then close); what its ClientHello offered. */
  const roundTrip = async (): Promise<OfferedGroups> => {
    const offered = recorder.offers.length
    await echoRoundTrip(tunnelPort)
    assert.equal(recorder.offers.length, offered + 1)
    return recorder.offers.at(-1) as OfferedGroups
  }

  test('against an upstream without ML-KEM the hybrid key share is sent once, then only X25519, while every group is still offered', async () => {
    const first = await roundTrip()
    assert.deepEqual(first.keyShares, [GROUP.x25519mlkem768, GROUP.x25519])
    for (let i = 0; i < 2; i++) {
      const later = await roundTrip()
      assert.deepEqual(later.keyShares, [GROUP.x25519])
      assert.deepEqual(new Set(later.supported), new Set(first.supported))
    }
  })

  test('an upstream that agrees on X25519MLKEM768 keeps getting the post-quantum share', async () => {
    // OpenSSL 3.5's own preference, as on Debian 13: the hybrid first, asked for when not sent.
    await serve(undefined)
    // The share learned before (X25519) is what this server is offered first: it asks for the hybrid.
    assert.deepEqual((await roundTrip()).keyShares, [GROUP.x25519])
    assert.deepEqual((await roundTrip()).keyShares, [GROUP.x25519mlkem768])
  })

  test('an upstream that changes its group is asked again with a HelloRetryRequest, not failed', async () => {
    await serve('P-256')
    assert.deepEqual((await roundTrip()).keyShares, [GROUP.x25519mlkem768])
    assert.deepEqual((await roundTrip()).keyShares, [GROUP.secp256r1])
    await serve('X25519')
    assert.deepEqual((await roundTrip()).keyShares, [GROUP.secp256r1])
    assert.deepEqual((await roundTrip()).keyShares, [GROUP.x25519])
  })

  test('after a renewal the one-share handshake presents the new certificate, never the old one', async () => {
    await roundTrip()
    const old = norm(source.current().serial)
    source.set(await issue())
    const renewed = norm(source.current().serial)
    assert.notEqual(renewed, old)
    const seen = serials.length
    assert.deepEqual((await roundTrip()).keyShares, [GROUP.x25519])
    assert.deepEqual((await roundTrip()).keyShares, [GROUP.x25519])
    assert.deepEqual(serials.slice(seen), [renewed, renewed])
  })
})
