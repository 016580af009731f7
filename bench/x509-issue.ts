/**
 * Per-certificate cost of issuing an X.509 leaf: the DER-template encoder (src/pki/x509.ts)
 * against the @peculiar/x509 generator it replaced (rebuilt here as the reference), and
 * the bare ECDSA signature that bounds both. One process, CPU time per certificate
 * (`process.cpuUsage`), median of rounds that alternate the encoders so shared-machine
 * noise hits both alike.
 *
 *   npx node bench/x509-issue.ts [--n 2000] [--rounds 5]
 */
import 'reflect-metadata'
import { generateKeyPairSync, sign, webcrypto, type KeyObject } from 'node:crypto'
import { parseArgs } from 'node:util'
import * as x509 from '@peculiar/x509'
import { createCaCertificate, issueLeafSync, leafKeyObject, newSerial, type LeafOptions, type X509Authority } from '../src/pki/x509.ts'

x509.cryptoProvider.set(webcrypto as never)

const { values } = parseArgs({ options: { n: { type: 'string', default: '2000' }, rounds: { type: 'string', default: '5' } } })
const N = Number(values.n)
const ROUNDS = Number(values.rounds)

/** The encoder before the template: what `issueLeaf` did per certificate. */
async function peculiarLeaf(opts: LeafOptions): Promise<string> {
  const now = Date.now()
  const caCert = new x509.X509Certificate(opts.ca.certPem)
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: newSerial(),
    subject: new x509.Name([{ CN: [opts.commonName] }, ...(opts.organizations ?? []).map((o) => ({ O: [o] }))]),
    issuer: caCert.subjectName,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + opts.ttlMs),
    publicKey: leafKeyObject(opts.publicKey).toCryptoKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['verify']),
    signingKey: opts.ca.key.toCryptoKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']),
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth], false),
      await x509.AuthorityKeyIdentifierExtension.create(caCert, false),
      new x509.SubjectAlternativeNameExtension((opts.uris ?? []).map((value) => ({ type: 'url' as const, value })), false),
    ],
  })
  return cert.toString('pem')
}

async function cpuPerOp(n: number, op: () => unknown): Promise<number> {
  const start = process.cpuUsage()
  for (let i = 0; i < n; i++) await op()
  const d = process.cpuUsage(start)
  return (d.user + d.system) / n
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)] as number
}

const k = generateKeyPairSync('ec', { namedCurve: 'P-256' })
const ca: X509Authority = { key: k.privateKey, certPem: await createCaCertificate(k.privateKey, k.publicKey, 'bench bot CA', 3_600_000) }
const leafKey: KeyObject = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey
const opts: LeafOptions = {
  ca, publicKey: leafKey, commonName: 'ci-runner', organizations: ['memid-bot'], ttlMs: 3_600_000, usage: 'client',
  uris: ['memid://bot/ci-runner?instance=0b0c5f1e-9d7a-4c52-8f0e-2a1b3c4d5e6f&generation=7'],
}
const tbsSized = Buffer.alloc(420, 1)

const results: Record<string, number[]> = { peculiar: [], template: [], signature: [] }
await cpuPerOp(200, () => peculiarLeaf(opts))
await cpuPerOp(200, () => issueLeafSync(opts))
for (let r = 0; r < ROUNDS; r++) {
  results.peculiar?.push(await cpuPerOp(Math.max(1, Math.floor(N / 10)), () => peculiarLeaf(opts)))
  results.template?.push(await cpuPerOp(N, () => issueLeafSync(opts)))
  results.signature?.push(await cpuPerOp(N, () => sign('sha256', tbsSized, { key: ca.key, dsaEncoding: 'der' })))
}
const p = median(results.peculiar ?? [])
const t = median(results.template ?? [])
const s = median(results.signature ?? [])
console.log('X.509 bot identity leaf, CPU µs per certificate (median of %d rounds; machine shared, indicative):', ROUNDS)
console.log('  @peculiar/x509 (before) %s µs', p.toFixed(0))
console.log('  DER template   (after)  %s µs   %sx less', t.toFixed(0), (p / t).toFixed(1))
console.log('  ECDSA P-256 signature   %s µs   (the floor)', s.toFixed(0))
