// A CA certificate from OpenSSL without extensions is X.509 v1: no version field and no
// subjectKeyIdentifier, so every field of the tbsCertificate sits one place earlier.
import 'reflect-metadata'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, X509Certificate, type KeyObject } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import * as x509 from '@peculiar/x509'
import { issueLeafSync } from '../../../src/pki/x509.ts'

let dir: string
let key: KeyObject
let certPem: string
before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'memid-x509-v1-'))
  const k = path.join(dir, 'ca.key')
  writeFileSync(k, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'pem', type: 'pkcs8' }))
  const csr = execFileSync('openssl', ['req', '-new', '-key', k, '-subj', '/CN=v1 ca/O=elsewhere'])
  certPem = execFileSync('openssl', ['x509', '-req', '-signkey', k, '-days', '1'], { input: csr, encoding: 'utf8' })
  key = createPrivateKey(readFileSync(k))
})
after(() => rmSync(dir, { recursive: true, force: true }))

describe('a v1 CA certificate', () => {
  it('its leaves name its subject as issuer, verify against it, and carry the SHA-1 key id', () => {
    assert.equal(new X509Certificate(certPem).toLegacyObject().subject.CN, 'v1 ca')
    assert.match(execFileSync('openssl', ['x509', '-noout', '-text'], { input: certPem, encoding: 'utf8' }), /Version: 1 \(0x0\)/)
    const issued = issueLeafSync({ ca: { key, certPem }, publicKey: generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey, commonName: 'bot', ttlMs: 60_000, usage: 'client' })
    const leaf = new X509Certificate(issued.pem)
    assert.ok(leaf.verify(createPublicKey(key)))
    assert.ok(leaf.checkIssued(new X509Certificate(certPem)))
    const spki = createPublicKey(key).export({ type: 'spki', format: 'der' })
    const point = spki.subarray(spki.length - 65)
    const aki = new x509.X509Certificate(issued.pem).getExtension(x509.AuthorityKeyIdentifierExtension)
    assert.equal(aki?.keyId?.toLowerCase(), createHash('sha1').update(point).digest('hex'))
  })
})
