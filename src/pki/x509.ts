import 'reflect-metadata'
import { randomBytes, webcrypto, createHash, X509Certificate, type KeyObject } from 'node:crypto'
import * as x509 from '@peculiar/x509'

x509.cryptoProvider.set(webcrypto as never)

type CryptoKey = webcrypto.CryptoKey

const ECDSA_P256 = { name: 'ECDSA', namedCurve: 'P-256' } as const
const SIGNING = { name: 'ECDSA', hash: 'SHA-256' } as const
/** Certificates start a minute early so small clock skew between hosts does not reject them. */
export const BACKDATE_MS = 60_000

/** A CA as held in memory: its key never leaves the process except into the store. */
export interface X509Authority {
  key: KeyObject
  certPem: string
}

export interface IssuedX509 {
  pem: string
  serial: string
  notBefore: Date
  notAfter: Date
}

export interface LeafOptions {
  ca: X509Authority
  publicKey: KeyObject
  commonName: string
  organizations?: string[]
  dnsNames?: string[]
  ipAddresses?: string[]
  uris?: string[]
  ttlMs: number
  usage: 'client' | 'server' | 'client-server'
  now?: number
}

/** A random positive 128-bit serial, as hex. */
export function newSerial(): string {
  const b = randomBytes(16)
  b[0] = (b[0] as number) & 0x7f | 0x10
  return b.toString('hex')
}

function toSigningKey(key: KeyObject): CryptoKey {
  return key.toCryptoKey(ECDSA_P256, false, ['sign'])
}

function toPublicCryptoKey(key: KeyObject): CryptoKey {
  const a = key.asymmetricKeyType
  if (a === 'ec') return key.toCryptoKey(ECDSA_P256, true, ['verify'])
  if (a === 'ed25519') return key.toCryptoKey({ name: 'Ed25519' }, true, ['verify'])
  if (a === 'rsa') return key.toCryptoKey({ name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, true, ['verify'])
  throw new TypeError(`unsupported public key type ${String(a)}`)
}

function jsonName(commonName: string, organizations: string[] = []): x509.JsonName {
  return [{ CN: [commonName] }, ...organizations.map((o) => ({ O: [o] }))]
}

/** Creates a self-signed CA certificate (basicConstraints CA:TRUE, keyCertSign). */
export async function createCaCertificate(key: KeyObject, publicKey: KeyObject, commonName: string, ttlMs: number): Promise<string> {
  const now = Date.now()
  const pub = toPublicCryptoKey(publicKey)
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: newSerial(),
    subject: new x509.Name(jsonName(commonName, ['memid'])),
    issuer: new x509.Name(jsonName(commonName, ['memid'])),
    notBefore: new Date(now - BACKDATE_MS),
    notAfter: new Date(now + ttlMs),
    publicKey: pub,
    signingKey: toSigningKey(key),
    signingAlgorithm: SIGNING,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature, true),
      await x509.SubjectKeyIdentifierExtension.create(pub),
    ],
  })
  return cert.toString('pem') + '\n'
}

/** Issues a leaf certificate signed by the CA. */
export async function issueLeaf(opts: LeafOptions): Promise<IssuedX509> {
  const now = opts.now ?? Date.now()
  const serial = newSerial()
  const notBefore = new Date(Math.floor((now - BACKDATE_MS) / 1000) * 1000)
  const notAfter = new Date(Math.floor((now + opts.ttlMs) / 1000) * 1000)
  const caCert = new x509.X509Certificate(opts.ca.certPem)
  const usages = opts.usage === 'client'
    ? [x509.ExtendedKeyUsage.clientAuth]
    : opts.usage === 'server'
      ? [x509.ExtendedKeyUsage.serverAuth]
      : [x509.ExtendedKeyUsage.clientAuth, x509.ExtendedKeyUsage.serverAuth]
  const san: x509.JsonGeneralName[] = [
    ...(opts.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
    ...(opts.ipAddresses ?? []).map((value) => ({ type: 'ip' as const, value })),
    ...(opts.uris ?? []).map((value) => ({ type: 'url' as const, value })),
  ]
  const pub = toPublicCryptoKey(opts.publicKey)
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial,
    subject: new x509.Name(jsonName(opts.commonName, opts.organizations)),
    issuer: caCert.subjectName,
    notBefore,
    notAfter,
    publicKey: pub,
    signingKey: toSigningKey(opts.ca.key),
    signingAlgorithm: SIGNING,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
      new x509.ExtendedKeyUsageExtension(usages, false),
      await x509.AuthorityKeyIdentifierExtension.create(caCert, false),
      ...(san.length > 0 ? [new x509.SubjectAlternativeNameExtension(san, false)] : []),
    ],
  })
  return { pem: cert.toString('pem') + '\n', serial, notBefore, notAfter }
}

/** `sha256:<hex>` of a certificate's SubjectPublicKeyInfo: what agents pin. */
export function spkiPin(certPem: string): string {
  const spki = new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' })
  return `sha256:${createHash('sha256').update(spki).digest('hex')}`
}

/** The serial of a certificate as lower-case hex without leading zeros stripped. */
export function certificateSerial(certPem: string): string {
  return new X509Certificate(certPem).serialNumber.toLowerCase()
}
