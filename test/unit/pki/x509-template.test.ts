// The DER-template encoder against two references: @peculiar/x509 (the encoder it
// replaced, given the same serial, validity and inputs, must produce the same
// tbsCertificate byte for byte) and OpenSSL (`x509 -text` reads every field back,
// `verify` chains the leaf to its CA with the right purpose).
import 'reflect-metadata'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createPublicKey, generateKeyPairSync, X509Certificate, webcrypto, type KeyObject } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import * as x509 from '@peculiar/x509'
import { createCaCertificate, issueLeaf, issueLeafSync, spkiDer, type IssuedX509, type LeafOptions, type X509Authority } from '../../../src/pki/x509.ts'
import { ipBytes, utf8String } from '../../../src/pki/der.ts'
import { issueBotIdentity, readBotClaims } from '../../../src/auth/bot-identity.ts'

x509.cryptoProvider.set(webcrypto as never)

let dir: string
let ca: X509Authority & { file: string }
before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'memid-x509-template-'))
  const k = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const certPem = await createCaCertificate(k.privateKey, k.publicKey, 'memid test bot CA', 3_600_000)
  const file = path.join(dir, 'ca.pem')
  writeFileSync(file, certPem)
  ca = { key: k.privateKey, certPem, file }
})
after(() => rmSync(dir, { recursive: true, force: true }))

/** What the encoder this replaced produced for the same inputs, serial and validity. */
async function peculiarLeaf(opts: LeafOptions, issued: IssuedX509): Promise<x509.X509Certificate> {
  const caCert = new x509.X509Certificate(opts.ca.certPem)
  const usages = { client: ['1.3.6.1.5.5.7.3.2'], server: ['1.3.6.1.5.5.7.3.1'], 'client-server': ['1.3.6.1.5.5.7.3.2', '1.3.6.1.5.5.7.3.1'] }[opts.usage]
  const san: x509.JsonGeneralName[] = [
    ...(opts.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
    ...(opts.ipAddresses ?? []).map((value) => ({ type: 'ip' as const, value })),
    ...(opts.uris ?? []).map((value) => ({ type: 'url' as const, value })),
  ]
  const spki = spkiDer(opts.publicKey)
  return x509.X509CertificateGenerator.create({
    serialNumber: issued.serial,
    subject: new x509.Name([{ CN: [opts.commonName] }, ...(opts.organizations ?? []).map((o) => ({ O: [o] }))]),
    issuer: caCert.subjectName,
    notBefore: issued.notBefore,
    notAfter: issued.notAfter,
    publicKey: new x509.PublicKey(spki),
    signingKey: opts.ca.key.toCryptoKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']),
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
      new x509.ExtendedKeyUsageExtension(usages, false),
      await x509.AuthorityKeyIdentifierExtension.create(caCert, false),
      ...(san.length > 0 ? [new x509.SubjectAlternativeNameExtension(san, false)] : []),
    ],
  })
}

function tbsOf(der: ArrayBuffer | Buffer): Buffer {
  const b = Buffer.from(der as ArrayBuffer)
  // Certificate ::= SEQUENCE { tbsCertificate, … }: the first element after the outer header.
  const outerHeader = (b[1] as number) & 0x80 ? 2 + ((b[1] as number) & 0x7f) : 2
  const lenByte = b[outerHeader + 1] as number
  const innerHeader = lenByte & 0x80 ? 2 + (lenByte & 0x7f) : 2
  let len = lenByte
  if (lenByte & 0x80) {
    len = 0
    for (let i = 0; i < (lenByte & 0x7f); i++) len = len * 256 + (b[outerHeader + 2 + i] as number)
  }
  return b.subarray(outerHeader, outerHeader + innerHeader + len)
}

function opensslText(pem: string): string[] {
  const text = execFileSync('openssl', ['x509', '-noout', '-text'], { input: pem, encoding: 'utf8' })
  // Everything but the signature value, which differs with ECDSA's random nonce.
  return text.split('\n').slice(0, text.split('\n').findLastIndex((l) => /Signature Algorithm/.test(l)) + 1).map((l) => l.trimEnd())
}

function opensslVerify(pem: string, purpose: string): string {
  const leaf = path.join(dir, `leaf-${Math.random().toString(36).slice(2)}.pem`)
  writeFileSync(leaf, pem)
  try {
    return execFileSync('openssl', ['verify', '-CAfile', ca.file, '-purpose', purpose, leaf], { encoding: 'utf8' }).trim()
  } finally {
    rmSync(leaf)
  }
}

const ec = () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey

interface Kind {
  name: string
  purpose: string
  issue(publicKey: KeyObject): Promise<{ opts: LeafOptions; issued: IssuedX509 }>
  expect: RegExp[]
}

const KINDS: Kind[] = [
  {
    name: 'bot identity',
    purpose: 'sslclient',
    async issue(publicKey) {
      const now = Date.now()
      const issued = await issueBotIdentity(ca, publicKey, { bot: 'ci-runner', botId: 'b0000000-0000-4000-8000-000000000001', instanceId: '0b0c5f1e-9d7a-4c52-8f0e-2a1b3c4d5e6f', generation: 7 }, 3_600_000, now)
      const opts: LeafOptions = {
        ca, publicKey, commonName: 'ci-runner', organizations: ['memid-bot'], usage: 'client', ttlMs: 3_600_000, now,
        uris: ['memid://bot/ci-runner?id=b0000000-0000-4000-8000-000000000001&instance=0b0c5f1e-9d7a-4c52-8f0e-2a1b3c4d5e6f&generation=7'],
      }
      return { opts, issued }
    },
    expect: [/Subject: CN = ci-runner, O = memid-bot/, /URI:memid:\/\/bot\/ci-runner\?id=b0000000-0000-4000-8000-000000000001&instance=0b0c5f1e-9d7a-4c52-8f0e-2a1b3c4d5e6f&generation=7/, /TLS Web Client Authentication$/],
  },
  {
    name: 'kube client',
    purpose: 'sslclient',
    async issue(publicKey) {
      const opts: LeafOptions = { ca, publicKey, commonName: 'ci-deployer', organizations: ['system:masters', 'dev team'], ttlMs: 600_000, usage: 'client' }
      return { opts, issued: await issueLeaf(opts) }
    },
    expect: [/Subject: CN = ci-deployer, O = system:masters, O = dev team/, /TLS Web Client Authentication$/],
  },
  {
    name: 'db client',
    purpose: 'sslclient',
    async issue(publicKey) {
      const opts: LeafOptions = { ca, publicKey, commonName: 'app_rw', ttlMs: 600_000, usage: 'client' }
      return { opts, issued: await issueLeaf(opts) }
    },
    expect: [/Subject: CN = app_rw$/, /TLS Web Client Authentication$/],
  },
  {
    name: 'auth server',
    purpose: 'sslserver',
    async issue(publicKey) {
      const opts: LeafOptions = {
        ca, publicKey, commonName: 'memid-auth', ttlMs: 86_400_000, usage: 'server',
        dnsNames: ['memid-auth', 'localhost', 'auth.example.com'], ipAddresses: ['127.0.0.1', '::1', '10.1.2.3', 'fe80::1:2'],
      }
      return { opts, issued: await issueLeaf(opts) }
    },
    expect: [/DNS:memid-auth, DNS:localhost, DNS:auth.example.com, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, IP Address:10.1.2.3, IP Address:FE80:0:0:0:0:0:1:2/, /TLS Web Server Authentication$/],
  },
]

describe('DER-template leaf certificates', () => {
  for (const kind of KINDS) {
    it(`${kind.name}: same tbsCertificate as @peculiar/x509, same openssl -text, verifies against the CA`, async () => {
      const { opts, issued } = await kind.issue(ec())
      const mine = new X509Certificate(issued.pem)
      const theirs = await peculiarLeaf(opts, issued)
      assert.deepEqual(tbsOf(mine.raw), tbsOf(theirs.rawData), 'tbsCertificate bytes')
      const text = opensslText(issued.pem)
      assert.deepEqual(text, opensslText(theirs.toString('pem')))
      for (const re of kind.expect) assert.ok(text.some((l) => re.test(l)), `openssl -text shows ${re}`)
      assert.ok(text.some((l) => /Issuer: CN = memid test bot CA, O = memid/.test(l)))
      assert.ok(text.some((l) => /Basic Constraints: critical/.test(l)))
      assert.ok(text.some((l) => /Digital Signature, Key Encipherment/.test(l)))
      assert.equal(mine.serialNumber.toLowerCase(), issued.serial)
      assert.equal(new Date(mine.validFrom).getTime(), issued.notBefore.getTime())
      assert.equal(new Date(mine.validTo).getTime(), issued.notAfter.getTime())
      assert.match(opensslVerify(issued.pem, kind.purpose), /: OK$/)
      assert.ok(issued.pem.startsWith('-----BEGIN CERTIFICATE-----\n') && issued.pem.endsWith('-----END CERTIFICATE-----\n'))
    })
  }

  it('bot claims read back from a template certificate', async () => {
    const issued = await issueBotIdentity(ca, ec(), { bot: 'a b/c', botId: 'b0000000-0000-4000-8000-000000000002', instanceId: '0b0c5f1e-9d7a-4c52-8f0e-2a1b3c4d5e6f', generation: 3 }, 60_000, Date.now())
    const claims = readBotClaims(Buffer.from(new X509Certificate(issued.pem).raw))
    assert.deepEqual({ ...claims, notAfter: claims?.notAfter.getTime(), notBefore: claims?.notBefore?.getTime() }, {
      bot: 'a b/c', botId: 'b0000000-0000-4000-8000-000000000002', notBefore: issued.notBefore.getTime(), instanceId: '0b0c5f1e-9d7a-4c52-8f0e-2a1b3c4d5e6f', generation: 3, serial: issued.serial, notAfter: issued.notAfter.getTime(),
    })
  })

  it('non-printable names are UTF8String, ed25519 and RSA keys, validity past 2049: all as @peculiar/x509 encodes them', async () => {
    const far = Date.UTC(2049, 11, 31, 23, 0, 0)
    for (const publicKey of [generateKeyPairSync('ed25519').publicKey, generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey]) {
      const opts: LeafOptions = { ca, publicKey, commonName: 'Jürgen_ops*', organizations: ['équipe'], ttlMs: 7_200_000, usage: 'client-server', now: far }
      const issued = issueLeafSync(opts)
      assert.deepEqual(tbsOf(new X509Certificate(issued.pem).raw), tbsOf((await peculiarLeaf(opts, issued)).rawData))
      assert.ok(new X509Certificate(issued.pem).verify(createPublicKey(ca.key)))
      assert.ok(opensslText(issued.pem).some((l) => /Not After : Jan +1 01:00:00 2050 GMT/.test(l)))
      assert.ok(new X509Certificate(issued.pem).publicKey.equals(publicKey))
    }
  })

  it('an extra extension goes in after the standard ones', () => {
    const issued = issueLeafSync({ ca, publicKey: ec(), commonName: 'x', ttlMs: 60_000, usage: 'client', extensions: [{ oid: '1.3.6.1.4.1.99999.1', value: utf8String('bot-id-42') }] })
    const parsed = new x509.X509Certificate(issued.pem)
    const ext = parsed.extensions.at(-1)
    assert.equal(ext?.type, '1.3.6.1.4.1.99999.1')
    assert.equal(ext?.critical, false)
    assert.deepEqual(Buffer.from(ext.value), utf8String('bot-id-42'))
    assert.match(opensslVerify(issued.pem, 'sslclient'), /: OK$/)
  })

  it('refuses a CA whose key is not its certificate\'s key', () => {
    const wrong = { key: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey, certPem: ca.certPem }
    assert.throws(() => issueLeafSync({ ca: wrong, publicKey: ec(), commonName: 'x', ttlMs: 60_000, usage: 'client' }), /CA key does not match/)
  })

  it('refuses names that are not printable ASCII in a SAN', () => {
    assert.throws(() => issueLeafSync({ ca, publicKey: ec(), commonName: 'x', ttlMs: 60_000, usage: 'client', dnsNames: ['bad\nname'] }), TypeError)
  })

  it('ipBytes: v4, v6 with ::, embedded v4', () => {
    assert.deepEqual([...ipBytes('10.0.0.255')], [10, 0, 0, 255])
    assert.equal(ipBytes('::').toString('hex'), '0'.repeat(32))
    assert.equal(ipBytes('2001:db8::8:800:200c:417a').toString('hex'), '20010db8000000000008080020 0c417a'.replace(' ', ''))
    assert.equal(ipBytes('::ffff:1.2.3.4').toString('hex'), '00000000000000000000ffff01020304')
    assert.equal(ipBytes('1:2:3:4:5:6:7:8').toString('hex'), '00010002000300040005000600070008')
    assert.throws(() => ipBytes('1.2.3'), TypeError)
    // @peculiar/x509 gets this one wrong; OpenSSL reads ours back as written.
    const mapped = issueLeafSync({ ca, publicKey: ec(), commonName: 'x', ttlMs: 60_000, usage: 'server', ipAddresses: ['::ffff:192.0.2.1'] })
    assert.ok(opensslText(mapped.pem).some((l) => l.includes('IP Address:0:0:0:0:0:FFFF:C000:201')))
  })
})
