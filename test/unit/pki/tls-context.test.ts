import 'reflect-metadata'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import tls from 'node:tls'
import type net from 'node:net'
import { buildClientContext, keySharesSupported, keyShareGroups } from '../../../src/pki/tls-context.ts'
import { createCaCertificate, issueLeafSync, type X509Authority } from '../../../src/pki/x509.ts'

async function newCa(name: string): Promise<X509Authority> {
  const k = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  return { key: k.privateKey, certPem: await createCaCertificate(k.privateKey, k.publicKey, name, 3_600_000) }
}

function leaf(ca: X509Authority, usage: 'client' | 'server', commonName: string): { key: KeyObject; certPem: string } {
  const k = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const issued = issueLeafSync({ ca, publicKey: k.publicKey, commonName, ttlMs: 3_600_000, usage, ipAddresses: ['127.0.0.1'] })
  return { key: k.privateKey, certPem: issued.pem }
}

describe('buildClientContext', () => {
  let ca: X509Authority
  let otherCa: X509Authority
  let server: tls.Server
  let port: number
  before(async () => {
    ca = await newCa('memid tls-context test ca')
    otherCa = await newCa('another ca')
    const srv = leaf(ca, 'server', 'upstream')
    // The server insists on a client certificate from the memid CA and names the client back.
    server = tls.createServer({ key: srv.key.export({ format: 'pem', type: 'pkcs8' }), cert: srv.certPem, ca: ca.certPem, requestCert: true, rejectUnauthorized: true }, (s) => {
      s.end(`hello ${(s.getPeerCertificate().subject as { CN?: string } | undefined)?.CN ?? '?'}`)
    })
    server.on('tlsClientError', () => {})
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    port = (server.address() as net.AddressInfo).port
  })
  after(() => new Promise((resolve) => server.close(resolve)))

  function dial(secureContext: tls.SecureContext): Promise<string> {
    return new Promise((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port, secureContext })
      let got = ''
      s.on('data', (d) => (got += d))
      s.on('end', () => resolve(got))
      s.on('error', reject)
    })
  }

  it('presents the client certificate and verifies the server by the given CA: mutual TLS completes', async () => {
    const cli = leaf(ca, 'client', 'bot-ci')
    assert.equal(await dial(buildClientContext({ key: cli.key, certPem: cli.certPem, caPem: ca.certPem })), 'hello bot-ci')
    assert.equal(await dial(buildClientContext({ key: cli.key, certPem: cli.certPem, caPem: [otherCa.certPem, ca.certPem] })), 'hello bot-ci', 'a list of CAs')
  })

  it('a server the given CA did not sign is refused', async () => {
    const cli = leaf(ca, 'client', 'bot-ci')
    await assert.rejects(dial(buildClientContext({ key: cli.key, certPem: cli.certPem, caPem: otherCa.certPem })), /self[- ]signed|unable to (get|verify)/i)
  })

  it('without caPem the server is verified by the system roots, which do not know the memid CA', async () => {
    const cli = leaf(ca, 'client', 'bot-ci')
    await assert.rejects(dial(buildClientContext({ key: cli.key, certPem: cli.certPem })), /self[- ]signed|unable to (get|verify)/i)
  })

  it('never negotiates below TLS 1.2', async () => {
    const cli = leaf(ca, 'client', 'bot-ci')
    const ctx = buildClientContext({ key: cli.key, certPem: cli.certPem, caPem: ca.certPem })
    const version = await new Promise<string | null>((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port, secureContext: ctx }, () => {
        resolve(s.getProtocol())
        s.destroy()
      })
      s.on('error', reject)
    })
    assert.ok(version === 'TLSv1.2' || version === 'TLSv1.3', String(version))
  })

  it('offers AES-128-GCM first, as Go clients do: a server that follows the client picks it; one that insists on AES-256 still gets it', async () => {
    const cli = leaf(ca, 'client', 'bot-ci')
    const ctx = buildClientContext({ key: cli.key, certPem: cli.certPem, caPem: ca.certPem })
    const srv = leaf(ca, 'server', 'upstream')
    // Node's servers default to their own order (honorCipherOrder); nginx's follow the client's.
    const cipherWith = async (opts: tls.TlsOptions) => {
      const s = tls.createServer({ key: srv.key.export({ format: 'pem', type: 'pkcs8' }), cert: srv.certPem, ca: ca.certPem, requestCert: true, ...opts }, (c) => c.end())
      await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve))
      try {
        return await new Promise<string>((resolve, reject) => {
          const c = tls.connect({ host: '127.0.0.1', port: (s.address() as net.AddressInfo).port, secureContext: ctx }, () => {
            resolve(c.getCipher().name)
            c.destroy()
          })
          c.on('error', reject)
        })
      } finally {
        await new Promise((resolve) => s.close(resolve))
      }
    }
    assert.equal(await cipherWith({ honorCipherOrder: false }), 'TLS_AES_128_GCM_SHA256')
    assert.equal(await cipherWith({ honorCipherOrder: false, ciphers: 'TLS_AES_256_GCM_SHA384' }), 'TLS_AES_256_GCM_SHA384')
  })
})

describe('key-share groups lists', () => {
  it('are taken by the OpenSSL Node 24 bundles (3.5), so upstream key shares are learned here', () => {
    assert.match(process.versions.openssl, /^3\.([5-9]|\d\d)\./)
    assert.equal(keySharesSupported(), true)
    assert.equal(keyShareGroups('P-256'), '*P-256:X25519MLKEM768:X25519:X448:P-384:P-521:ffdhe2048:ffdhe3072')
  })
})
