// How a leaf follows its CA: the CA's key kind, its key identifier, a CA object changed
// in place, and CA certificates that are not what they should be.
import 'reflect-metadata'
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, generateKeyPairSync, webcrypto, X509Certificate, type KeyObject } from 'node:crypto'
import * as x509 from '@peculiar/x509'
import { children, readTlv, seq, tlv, uint } from '../../../src/pki/der.ts'
import { createCaCertificate, issueLeafSync, type X509Authority } from '../../../src/pki/x509.ts'

x509.cryptoProvider.set(webcrypto as never)

const p256 = () => generateKeyPairSync('ec', { namedCurve: 'P-256' })

async function p256Ca(name = 'memid x509-ca test'): Promise<X509Authority & { publicKey: KeyObject }> {
  const k = p256()
  return { key: k.privateKey, publicKey: k.publicKey, certPem: await createCaCertificate(k.privateKey, k.publicKey, name, 3_600_000) }
}

/** A CA certificate made outside memid: any key kind, any (or no) subjectKeyIdentifier. */
async function foreignCa(pair: { privateKey: KeyObject; publicKey: KeyObject }, alg: { name: string; hash?: string }, ski: 'none' | string): Promise<X509Authority> {
  const importAlg = pair.privateKey.asymmetricKeyType === 'ed25519' ? { name: 'Ed25519' } : { name: 'ECDSA', namedCurve: pair.privateKey.asymmetricKeyDetails?.namedCurve === 'secp384r1' ? 'P-384' : 'P-256' }
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: 'CN=foreign ca',
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 3_600_000),
    keys: { privateKey: pair.privateKey.toCryptoKey(importAlg, false, ['sign']), publicKey: pair.publicKey.toCryptoKey(importAlg, true, ['verify']) },
    signingAlgorithm: alg,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
      ...(ski === 'none' ? [] : [new x509.SubjectKeyIdentifierExtension(ski)]),
    ],
  })
  return { key: pair.privateKey, certPem: cert.toString('pem') }
}

function leaf(ca: X509Authority, publicKey: KeyObject = p256().publicKey, commonName = 'bot') {
  return issueLeafSync({ ca, publicKey, commonName, ttlMs: 60_000, usage: 'client' })
}

function authorityKeyId(pem: string): string {
  const ext = new x509.X509Certificate(pem).getExtension(x509.AuthorityKeyIdentifierExtension)
  assert.ok(ext?.keyId, 'the leaf names its CA\'s key')
  return ext.keyId.toLowerCase()
}

describe('createCaCertificate', () => {
  it('marks keyUsage critical, as a CA must', async () => {
    const ku = new x509.X509Certificate((await p256Ca()).certPem).getExtension(x509.KeyUsagesExtension)
    assert.equal(ku?.critical, true)
  })

  it('certifies the public key it is given (P-256, Ed25519, RSA) with the CA key\'s signature, and refuses other kinds', async () => {
    const signer = p256()
    for (const pub of [generateKeyPairSync('ed25519').publicKey, generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey, signer.publicKey]) {
      const cert = new X509Certificate(await createCaCertificate(signer.privateKey, pub, 'x', 60_000))
      assert.ok(cert.publicKey.equals(pub), pub.asymmetricKeyType)
      assert.ok(cert.verify(signer.publicKey))
    }
    await assert.rejects(createCaCertificate(signer.privateKey, generateKeyPairSync('x448').publicKey, 'x', 60_000), /unsupported public key type x448/)
  })
})

describe('leaves of a CA', () => {
  it('an Ed25519 CA signs leaves with Ed25519, and they verify', async () => {
    const pair = generateKeyPairSync('ed25519')
    const ca = await foreignCa(pair, { name: 'Ed25519' }, 'none')
    const cert = new X509Certificate(leaf(ca).pem)
    assert.ok(cert.verify(pair.publicKey))
    assert.ok(cert.checkIssued(new X509Certificate(ca.certPem)))
    assert.equal((new x509.X509Certificate(cert.raw).signatureAlgorithm as unknown as { name: string }).name, 'Ed25519')
  })

  it('a CA key other than P-256 or Ed25519 is refused, naming its kind', async () => {
    const ca = await foreignCa(generateKeyPairSync('ec', { namedCurve: 'P-384' }), { name: 'ECDSA', hash: 'SHA-384' }, 'none')
    assert.throws(() => leaf(ca), /unsupported CA key type ec \(P-256 or Ed25519\)/)
  })

  it('name the CA\'s subjectKeyIdentifier, whatever it is, or else the SHA-1 of its key', async () => {
    const pair = p256()
    const custom = await foreignCa(pair, { name: 'ECDSA', hash: 'SHA-256' }, '0102030405060708')
    assert.equal(authorityKeyId(leaf(custom).pem), '0102030405060708')
    const bare = await foreignCa(pair, { name: 'ECDSA', hash: 'SHA-256' }, 'none')
    const spki = pair.publicKey.export({ type: 'spki', format: 'der' })
    const bits = children(spki, readTlv(spki, 0))[1] as { body: number; end: number }
    assert.equal(authorityKeyId(leaf(bare).pem), createHash('sha1').update(spki.subarray(bits.body + 1, bits.end)).digest('hex'))
    const made = await p256Ca()
    const ski = new x509.X509Certificate(made.certPem).getExtension(x509.SubjectKeyIdentifierExtension)
    assert.equal(authorityKeyId(leaf(made).pem), ski?.keyId.toLowerCase())
  })

  it('follow a CA object whose certificate and key were replaced in place', async () => {
    const ca = await p256Ca('first')
    assert.ok(new X509Certificate(leaf(ca).pem).verify(ca.publicKey))
    const next = await p256Ca('second')
    ca.certPem = next.certPem
    ca.key = next.key
    const cert = new X509Certificate(leaf(ca).pem)
    assert.ok(cert.verify(next.publicKey))
    assert.match(cert.issuer, /CN=second/)
    // Only the key replaced: the pair no longer matches and nothing is issued.
    ca.key = p256().privateKey
    assert.throws(() => leaf(ca), /CA key does not match the CA certificate/)
  })

  it('a CA certificate that is not PEM, has no tbsCertificate or is cut short is refused, saying which', () => {
    const key = p256().privateKey
    const pem = (der: Buffer) => `-----BEGIN CERTIFICATE-----\n${der.toString('base64')}\n-----END CERTIFICATE-----\n`
    assert.throws(() => leaf({ key, certPem: 'not a certificate' }), /^TypeError: CA certificate is not PEM$/)
    assert.throws(() => leaf({ key, certPem: pem(seq()) }), /^TypeError: CA certificate has no tbsCertificate$/)
    // version, serial, signature algorithm, issuer, validity, subject: no key.
    const tbs = seq(tlv(0xa0, uint(Buffer.of(2))), uint(Buffer.of(1)), seq(), seq(), seq(), seq())
    assert.throws(() => leaf({ key, certPem: pem(seq(tbs, seq(), tlv(0x03, Buffer.of(0)))) }), /^TypeError: CA certificate is truncated$/)
  })
})

describe('leaf inputs', () => {
  it('refuses public keys it cannot certify, naming the kind', async () => {
    const ca = await p256Ca()
    assert.throws(() => leaf(ca, generateKeyPairSync('ec', { namedCurve: 'P-384' }).publicKey), /^TypeError: unsupported public key type ec$/)
    assert.throws(() => leaf(ca, generateKeyPairSync('x448').publicKey), /^TypeError: unsupported public key type x448$/)
  })

  it('a SAN that is not printable ASCII is refused with a printable, short rendering of it', async () => {
    const ca = await p256Ca()
    assert.throws(() => issueLeafSync({ ca, publicKey: p256().publicKey, commonName: 'x', ttlMs: 60_000, usage: 'client', uris: [`bad\nname${'y'.repeat(100)}`] }), (err: Error) => {
      assert.match(err.message, /^subject alternative name "bad\?namey+" is not printable ASCII$/)
      assert.equal(/"(.*)"/.exec(err.message)?.[1]?.length, 60)
      return true
    })
  })

  it('an extra extension can be marked critical', async () => {
    const ca = await p256Ca()
    const issued = issueLeafSync({ ca, publicKey: p256().publicKey, commonName: 'x', ttlMs: 60_000, usage: 'client', extensions: [{ oid: '1.3.6.1.4.1.99999.2', critical: true, value: Buffer.of(5, 0) }] })
    assert.equal(new x509.X509Certificate(issued.pem).extensions.at(-1)?.critical, true)
  })

  it('PEM lines are 64 columns with no blank line, whatever the certificate\'s length', async () => {
    const ca = await p256Ca()
    const lengths = new Set<number>()
    for (let n = 1; n <= 60; n++) {
      const pem = leaf(ca, p256().publicKey, 'c'.repeat(n)).pem
      const body = pem.split('\n').slice(1, -2)
      lengths.add(body.join('').length % 64)
      assert.ok(!pem.includes('\n\n'), `common name of ${n}`)
      assert.ok(body.slice(0, -1).every((l) => l.length === 64) && (body.at(-1)?.length ?? 0) > 0, `common name of ${n}`)
    }
    assert.ok(lengths.has(0), 'some certificate filled its last line exactly')
  })
})
