// A CA certificate renewed for the same key, put into the same CA object: its leaves must
// follow the new certificate (its subject is their issuer), not what was read from the old.
import 'reflect-metadata'
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPairSync, X509Certificate } from 'node:crypto'
import { createCaCertificate, issueLeafSync, type X509Authority } from '../../../src/pki/x509.ts'

describe('a CA certificate renewed for the same key', () => {
  it('is the issuer of the next leaf', async () => {
    const k = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const ca: X509Authority = { key: k.privateKey, certPem: await createCaCertificate(k.privateKey, k.publicKey, 'before renewal', 3_600_000) }
    const leaf = () => new X509Certificate(issueLeafSync({ ca, publicKey: generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey, commonName: 'bot', ttlMs: 60_000, usage: 'client' }).pem)
    assert.match(leaf().issuer, /CN=before renewal/)
    ca.certPem = await createCaCertificate(k.privateKey, k.publicKey, 'after renewal', 3_600_000)
    const next = leaf()
    assert.match(next.issuer, /CN=after renewal/)
    assert.ok(next.checkIssued(new X509Certificate(ca.certPem)))
  })
})
