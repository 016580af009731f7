import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import net from 'node:net'
import tls from 'node:tls'
import type { CredentialSource, TlsClientCredential } from '../../src/credentials/credentials.ts'
import type { Service } from '../../src/services/service.ts'
import type { X509Authority } from '../../src/pki/x509.ts'
import { appTunnel, dbCredential, echoRoundTrip, serverCertificate, testCa } from '../fixtures/db-tunnel.ts'

/** What the upstream saw on each connection: did it resume, and whose certificate. */
interface Seen {
  reused: boolean
  serial: string
  protocol: string | null
}

const norm = (serial: string) => serial.toLowerCase().replace(/^0+/, '')

/**
 * TLS session resumption on the tunnel's upstream leg, against a TLS server that requires
 * client certificates: later connections resume, and a renewed credential never resumes a
 * session made with the old certificate.
 */
for (const maxVersion of ['TLSv1.3', 'TLSv1.2'] as const) {
  describe(`db-tunnel upstream TLS session resumption (${maxVersion})`, () => {
    let server: tls.Server
    let clientCa: X509Authority
    let serverCaPem: string
    let port: number
    let source: CredentialSource<TlsClientCredential>
    let tunnel: Service
    let tunnelPort: number
    const seen: Seen[] = []
    const issue = () => dbCredential({ clientCa, serverCaPem, user: 'app', host: '127.0.0.1', port })

    before(async () => {
      clientCa = await testCa('resumption client CA')
      const serverCa = await testCa('resumption server CA')
      serverCaPem = serverCa.certPem
      const cert = await serverCertificate(serverCa)
      server = tls.createServer({ key: cert.keyPem, cert: cert.certPem, ca: clientCa.certPem, requestCert: true, rejectUnauthorized: true, maxVersion }, (s) => {
        seen.push({ reused: s.isSessionReused(), serial: norm(s.getPeerCertificate().serialNumber), protocol: s.getProtocol() })
        s.on('error', () => undefined)
        s.pipe(s)
      })
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
      port = (server.address() as net.AddressInfo).port
      ;({ tunnel, port: tunnelPort, source } = await appTunnel(await issue()))
    })

    after(async () => {
      await tunnel?.stop(500)
      server?.close()
    })

    /** One client connection through the tunnel: a round trip, then close; returns what the upstream saw. */
    const roundTrip = async (): Promise<Seen> => {
      const before = seen.length
      await echoRoundTrip(tunnelPort)
      assert.equal(seen.length, before + 1)
      return seen.at(-1) as Seen
    }

    test('the second connection resumes the session of the first, with the same certificate', async () => {
      const serial = norm(source.current().serial)
      const first = await roundTrip()
      assert.equal(first.protocol, maxVersion)
      assert.deepEqual({ reused: first.reused, serial: first.serial }, { reused: false, serial })
      const second = await roundTrip()
      assert.deepEqual({ reused: second.reused, serial: second.serial }, { reused: true, serial })
    })

    test('a session the upstream stops accepting (its ticket keys rotated) costs one full handshake, then connections resume again', async () => {
      await roundTrip()
      assert.equal((await roundTrip()).reused, true)
      server.setTicketKeys(randomBytes(48))
      assert.equal((await roundTrip()).reused, false)
      assert.equal((await roundTrip()).reused, true)
      assert.equal((await roundTrip()).reused, true)
    })

    test('after a renewal the first new connection does a full handshake with the new certificate, then resumes that one', async () => {
      const old = norm(source.current().serial)
      await roundTrip()
      source.set(await issue())
      const renewed = norm(source.current().serial)
      assert.notEqual(renewed, old)
      const first = await roundTrip()
      assert.deepEqual({ reused: first.reused, serial: first.serial }, { reused: false, serial: renewed })
      const second = await roundTrip()
      assert.deepEqual({ reused: second.reused, serial: second.serial }, { reused: true, serial: renewed })
    })
  })
}
