import 'reflect-metadata'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, generateKeyPairSync, X509Certificate, type KeyObject } from 'node:crypto'
import tls from 'node:tls'
import type net from 'node:net'
import * as x509 from '@peculiar/x509'
import {
  BACKDATE_MS, certificateSerial, createCaCertificate, issueLeaf, newSerial, spkiDer, spkiPin, type IssuedX509, type LeafOptions, type X509Authority,
} from '../../../src/pki/x509.ts'

const EKU_SERVER = '1.3.6.1.5.5.7.3.1'
const EKU_CLIENT = '1.3.6.1.5.5.7.3.2'

interface Ca extends X509Authority {
  publicKey: KeyObject
}

async function newCa(name: string): Promise<Ca> {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  return { key: privateKey, publicKey, certPem: await createCaCertificate(privateKey, publicKey, name, 24 * 3_600_000) }
}

let ca: Ca
let otherCa: Ca
before(async () => {
  ca = await newCa('memid test ca')
  otherCa = await newCa('another ca')
})

function leaf(over: Partial<LeafOptions> & { publicKey: KeyObject }): Promise<IssuedX509> {
  return issueLeaf({ ca, commonName: 'bot-ci', ttlMs: 3_600_000, usage: 'client', ...over })
}

function ecPair() {
  return generateKeyPairSync('ec', { namedCurve: 'P-256' })
}

describe('createCaCertificate', () => {
  it('is a self-signed CA: basicConstraints CA:TRUE, keyCertSign, verifies with its own key', () => {
    const cert = new X509Certificate(ca.certPem)
    assert.equal(cert.ca, true)
    assert.ok(cert.verify(ca.publicKey))
    assert.ok(cert.checkIssued(cert))
    assert.match(cert.subject, /CN=memid test ca/)
    assert.match(cert.subject, /O=memid/)
    assert.ok(cert.publicKey.equals(ca.publicKey))
    const parsed = new x509.X509Certificate(ca.certPem)
    const bc = parsed.getExtension(x509.BasicConstraintsExtension)
    assert.ok(bc?.ca && bc.critical)
    const ku = parsed.getExtension(x509.KeyUsagesExtension)
    assert.ok(ku && (ku.usages & x509.KeyUsageFlags.keyCertSign) !== 0)
    assert.ok(ca.certPem.endsWith('-----END CERTIFICATE-----\n'))
  })

  it('is valid from a minute ago until the TTL', () => {
    const cert = new X509Certificate(ca.certPem)
    const now = Date.now()
    assert.ok(Math.abs(Date.parse(cert.validFrom) - (now - BACKDATE_MS)) < 5_000)
    assert.ok(Math.abs(Date.parse(cert.validTo) - (now + 24 * 3_600_000)) < 5_000)
  })
})

describe('issueLeaf', () => {
  it('issues a certificate that verifies against its CA and no other', async () => {
    const { publicKey } = ecPair()
    const issued = await leaf({ publicKey })
    const cert = new X509Certificate(issued.pem)
    const caCert = new X509Certificate(ca.certPem)
    assert.ok(cert.verify(ca.publicKey))
    assert.ok(cert.checkIssued(caCert))
    assert.equal(cert.verify(otherCa.publicKey), false)
    assert.equal(cert.checkIssued(new X509Certificate(otherCa.certPem)), false)
    assert.equal(cert.ca, false)
    assert.ok(cert.publicKey.equals(publicKey))
    assert.equal(cert.issuer, caCert.subject)
  })

  it('carries CN and O (kube user and groups)', async () => {
    const cert = new X509Certificate((await leaf({ publicKey: ecPair().publicKey, commonName: 'ci-bot', organizations: ['viewers', 'system:authenticated'] })).pem)
    assert.match(cert.subject, /^CN=ci-bot$/m)
    assert.match(cert.subject, /^O=viewers$/m)
    assert.match(cert.subject, /^O=system:authenticated$/m)
  })

  it('carries the requested SANs, and none when none are asked for', async () => {
    const issued = await leaf({
      publicKey: ecPair().publicKey, usage: 'server', dnsNames: ['localhost', 'auth.example.com'], ipAddresses: ['127.0.0.1', '::1'],
      uris: ['spiffe://memid/bot/ci'],
    })
    const cert = new X509Certificate(issued.pem)
    const san = cert.subjectAltName ?? ''
    for (const want of ['DNS:localhost', 'DNS:auth.example.com', 'IP Address:127.0.0.1', 'IP Address:0:0:0:0:0:0:0:1', 'URI:spiffe://memid/bot/ci']) {
      assert.ok(san.includes(want), `${want} in ${san}`)
    }
    assert.equal(cert.checkHost('auth.example.com'), 'auth.example.com')
    assert.equal(cert.checkIP('127.0.0.1'), '127.0.0.1')
    assert.equal(cert.checkHost('evil.example.com'), undefined)
    assert.equal(new X509Certificate((await leaf({ publicKey: ecPair().publicKey })).pem).subjectAltName, undefined)
  })

  it('sets the extended key usage for client, server or both', async () => {
    const eku = async (usage: LeafOptions['usage']) => new X509Certificate((await leaf({ publicKey: ecPair().publicKey, usage })).pem).keyUsage?.sort()
    assert.deepEqual(await eku('client'), [EKU_CLIENT])
    assert.deepEqual(await eku('server'), [EKU_SERVER])
    assert.deepEqual(await eku('client-server'), [EKU_SERVER, EKU_CLIENT].sort())
  })

  it('backdates a minute, ends at the TTL, on whole seconds', async () => {
    const now = Date.parse('2031-05-06T07:08:09.456Z')
    const issued = await leaf({ publicKey: ecPair().publicKey, ttlMs: 20_000, now })
    assert.equal(issued.notBefore.toISOString(), '2031-05-06T07:07:09.000Z')
    assert.equal(issued.notAfter.toISOString(), '2031-05-06T07:08:29.000Z')
    const cert = new X509Certificate(issued.pem)
    assert.equal(Date.parse(cert.validFrom), issued.notBefore.getTime())
    assert.equal(Date.parse(cert.validTo), issued.notAfter.getTime())
  })

  it('reports the serial that is in the certificate', async () => {
    const issued = await leaf({ publicKey: ecPair().publicKey })
    assert.match(issued.serial, /^[0-9a-f]{32}$/)
    assert.equal(certificateSerial(issued.pem), issued.serial)
    assert.notEqual((await leaf({ publicKey: ecPair().publicKey })).serial, issued.serial)
  })

  it('certifies ed25519 and RSA public keys too (signed by the ECDSA CA)', async () => {
    for (const pair of [generateKeyPairSync('ed25519'), generateKeyPairSync('rsa', { modulusLength: 2048 })]) {
      const cert = new X509Certificate((await leaf({ publicKey: pair.publicKey })).pem)
      assert.ok(cert.publicKey.equals(pair.publicKey))
      assert.ok(cert.verify(ca.publicKey))
    }
  })

  it('refuses key types it cannot certify', async () => {
    await assert.rejects(leaf({ publicKey: generateKeyPairSync('x448').publicKey }), TypeError)
  })
})

describe('issued certificates in a real TLS handshake', () => {
  const servers: tls.Server[] = []
  after(async () => {
    for (const s of servers) await new Promise((resolve) => s.close(resolve))
  })

  async function serve(certPem: string, key: KeyObject): Promise<number> {
    const server = tls.createServer({ key: key.export({ format: 'pem', type: 'pkcs8' }), cert: certPem, ca: ca.certPem, requestCert: true, rejectUnauthorized: true }, (s) => {
      s.end(`hello ${(s.getPeerCertificate().subject as { CN?: string } | undefined)?.CN ?? '?'}\n`)
    })
    server.on('tlsClientError', () => {})
    servers.push(server)
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    return (server.address() as net.AddressInfo).port
  }

  function dial(port: number, certPem: string, key: KeyObject, servername?: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port, ca: ca.certPem, cert: certPem, key: key.export({ format: 'pem', type: 'pkcs8' }), ...(servername ? { servername } : {}) })
      let got = ''
      s.on('data', (d) => (got += d))
      s.on('end', () => resolve(got))
      s.on('error', reject)
    })
  }

  it('a server and a client certificate from the same CA complete mutual TLS', async () => {
    const srv = ecPair()
    const cli = ecPair()
    const serverCert = await leaf({ publicKey: srv.publicKey, commonName: 'auth', usage: 'server', ipAddresses: ['127.0.0.1'], dnsNames: ['localhost'] })
    const clientCert = await leaf({ publicKey: cli.publicKey, commonName: 'bot-ci', usage: 'client' })
    const port = await serve(serverCert.pem, srv.privateKey)
    assert.equal(await dial(port, clientCert.pem, cli.privateKey), 'hello bot-ci\n')
    assert.equal(await dial(port, clientCert.pem, cli.privateKey, 'localhost'), 'hello bot-ci\n')
  })

  it('a client-only certificate is refused as a server certificate, and a wrong host name is refused', async () => {
    const srv = ecPair()
    const cli = ecPair()
    const clientOnly = await leaf({ publicKey: srv.publicKey, usage: 'client', ipAddresses: ['127.0.0.1'] })
    const clientCert = await leaf({ publicKey: cli.publicKey, usage: 'client' })
    const port = await serve(clientOnly.pem, srv.privateKey)
    await assert.rejects(dial(port, clientCert.pem, cli.privateKey), /purpose/i)
    const named = await leaf({ publicKey: srv.publicKey, usage: 'server', dnsNames: ['auth.internal'] })
    const port2 = await serve(named.pem, srv.privateKey)
    await assert.rejects(dial(port2, clientCert.pem, cli.privateKey, 'other.internal'), /altnames|Hostname/i)
  })
})

describe('spkiDer', () => {
  // The renewal's key id (a retried renewal with the same key must find its pending
  // generation) hashes these bytes; key ids stored before hashed OpenSSL's export.
  it('gives the bytes of OpenSSL\'s SPKI export for P-256 (also a point with leading zero bytes), Ed25519 and RSA', () => {
    const keys: KeyObject[] = [generateKeyPairSync('ed25519').publicKey, generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey]
    for (let i = 0; i < 300; i++) keys.push(generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey)
    for (const k of keys) assert.deepEqual(spkiDer(k), k.export({ type: 'spki', format: 'der' }))
  })
})

describe('spkiPin', () => {
  it('is sha256:<64 hex> of the SubjectPublicKeyInfo, the same for every certificate of one key', async () => {
    const pin = spkiPin(ca.certPem)
    assert.match(pin, /^sha256:[0-9a-f]{64}$/)
    const spki = ca.publicKey.export({ type: 'spki', format: 'der' })
    assert.equal(pin, `sha256:${createHash('sha256').update(spki).digest('hex')}`)
    const reissued = await createCaCertificate(ca.key, ca.publicKey, 'renamed', 3_600_000)
    assert.notEqual(reissued, ca.certPem)
    assert.equal(spkiPin(reissued), pin)
    assert.notEqual(spkiPin(otherCa.certPem), pin)
  })
})

describe('newSerial', () => {
  it('is 128-bit positive hex without a leading zero byte', () => {
    const seen = new Set<string>()
    for (let i = 0; i < 500; i++) {
      const s = newSerial()
      assert.match(s, /^[1-7][0-9a-f]{31}$/)
      seen.add(s)
    }
    assert.equal(seen.size, 500)
  })
})
