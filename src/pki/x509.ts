import { ECDH, KeyObject, randomBytes, webcrypto, createHash, createPublicKey, sign, X509Certificate } from 'node:crypto'
import type * as X509 from '@peculiar/x509'
import { bitString, children, directoryString, ipBytes, octetString, oid, readTlv, seq, TAG, time, tlv, uint, type Tlv } from './der.ts'

/**
 * @peculiar/x509 builds only the self-signed CA, once per auth service's life. It and its
 * ASN.1 schemas cost ~0.2 s of CPU and ~20 MB to load, so it is imported on first use: the
 * agent, which never creates a CA, does not load it at all.
 */
let peculiar: Promise<typeof X509> | undefined
function loadX509(): Promise<typeof X509> {
  peculiar ??= (async () => {
    await import('reflect-metadata')
    const x509 = await import('@peculiar/x509')
    x509.cryptoProvider.set(webcrypto as never)
    return x509
  })()
  return peculiar
}

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
  publicKey: LeafKey
  commonName: string
  organizations?: string[]
  dnsNames?: string[]
  ipAddresses?: string[]
  uris?: string[]
  ttlMs: number
  usage: 'client' | 'server' | 'client-server'
  now?: number
  /** Extensions after the standard ones (and after the SAN), in this order. */
  extensions?: ExtraExtension[]
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

function jsonName(commonName: string, organizations: string[] = []): X509.JsonName {
  return [{ CN: [commonName] }, ...organizations.map((o) => ({ O: [o] }))]
}

/** Creates a self-signed CA certificate (basicConstraints CA:TRUE, keyCertSign). */
export async function createCaCertificate(key: KeyObject, publicKey: KeyObject, commonName: string, ttlMs: number): Promise<string> {
  const x509 = await loadX509()
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

/**
 * An extra certificate extension, already DER-encoded: `value` is what goes inside the
 * extension's OCTET STRING (for example `der.utf8String('…')` under a private OID).
 */
export interface ExtraExtension {
  oid: string
  critical?: boolean
  value: Uint8Array
}

/** The parts of a CA that every leaf it signs repeats, computed once per CA object. */
interface CaTemplate {
  certPem: string
  key: KeyObject
  /** The CA's subject Name, byte for byte: the leaf's issuer. */
  issuer: Buffer
  /** The authorityKeyIdentifier extension naming the CA's subjectKeyIdentifier. */
  authorityKeyId: Buffer
  /** AlgorithmIdentifier of the signature the CA key makes. */
  signatureAlgorithm: Buffer
  /** `crypto.sign`'s digest argument for the CA key (null for Ed25519). */
  digest: string | null
}

const OID_SKI = '2.5.29.14'
const EXT_BASIC_CONSTRAINTS = oid('2.5.29.19')
const EXT_KEY_USAGE = oid('2.5.29.15')
const EXT_EKU = oid('2.5.29.37')
const EXT_AKI = oid('2.5.29.35')
const EXT_SAN = oid('2.5.29.17')
const AT_CN = oid('2.5.4.3')
const AT_O = oid('2.5.4.10')
const EKU_SERVER_AUTH = oid('1.3.6.1.5.5.7.3.1')
const EKU_CLIENT_AUTH = oid('1.3.6.1.5.5.7.3.2')
const VERSION_3 = tlv(0xa0, uint(Buffer.of(2)))
const CRITICAL = tlv(TAG.BOOLEAN, Buffer.of(0xff))

function extension(id: Buffer, critical: boolean, value: Uint8Array): Buffer {
  return critical ? seq(id, CRITICAL, octetString(value)) : seq(id, octetString(value))
}

/** basicConstraints CA:FALSE, keyUsage digitalSignature+keyEncipherment (both critical), then the EKU: the same for every leaf of a usage. */
const USAGE_EXTENSIONS: Record<LeafOptions['usage'], Buffer> = (() => {
  const fixed = Buffer.concat([
    extension(EXT_BASIC_CONSTRAINTS, true, seq()),
    extension(EXT_KEY_USAGE, true, tlv(TAG.BIT_STRING, Buffer.of(5, 0xa0))),
  ])
  const eku = (...ids: Buffer[]) => Buffer.concat([fixed, extension(EXT_EKU, false, seq(...ids))])
  return { client: eku(EKU_CLIENT_AUTH), server: eku(EKU_SERVER_AUTH), 'client-server': eku(EKU_CLIENT_AUTH, EKU_SERVER_AUTH) }
})()

const templates = new WeakMap<X509Authority, CaTemplate>()

function pemToDer(pem: string): Buffer {
  const m = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+)-----END CERTIFICATE-----/.exec(pem)
  if (!m) throw new TypeError('CA certificate is not PEM')
  return Buffer.from((m[1] as string).replace(/\s+/g, ''), 'base64')
}

function signatureParams(key: KeyObject): { signatureAlgorithm: Buffer; digest: string | null } {
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') {
    return { signatureAlgorithm: seq(oid('1.2.840.10045.4.3.2')), digest: 'sha256' }
  }
  if (key.asymmetricKeyType === 'ed25519') return { signatureAlgorithm: seq(oid('1.3.101.112')), digest: null }
  throw new TypeError(`unsupported CA key type ${String(key.asymmetricKeyType)} (P-256 or Ed25519)`)
}

/** The fields of a certificate's tbsCertificate that memid reads, by name; missing ones are undefined. */
export interface TbsParts {
  serial?: Tlv
  validity?: Tlv
  subject?: Tlv
  spki?: Tlv
  /** The `[3]` field holding the extension list. */
  extensions?: Tlv
}

/** Names the fields of a tbsCertificate (its optional version skipped); throws on malformed DER. */
export function tbsParts(der: Buffer, tbs: Tlv): TbsParts {
  const fields = children(der, tbs)
  const at = fields[0]?.tag === 0xa0 ? 1 : 0
  // serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, then the optional ones.
  return {
    serial: fields[at], validity: fields[at + 3], subject: fields[at + 4], spki: fields[at + 5],
    extensions: fields.slice(at + 6).find((f) => f.tag === 0xa3),
  }
}

/**
 * The extensions of a `[3]` field, in order: each one's OID (its whole DER, as `oid()`
 * encodes it) and its value, the last element (the OCTET STRING). Throws on malformed DER.
 */
export function certExtensions(der: Buffer, extensions: Tlv): { id: Buffer; value: Tlv }[] {
  const out: { id: Buffer; value: Tlv }[] = []
  const list = children(der, extensions)[0]
  for (const ext of list === undefined ? [] : children(der, list)) {
    const parts = children(der, ext)
    const id = parts[0]
    const value = parts[parts.length - 1]
    if (id !== undefined && value !== undefined) out.push({ id: der.subarray(id.start, id.end), value })
  }
  return out
}

/**
 * Reads what a leaf needs from the CA certificate once: subject bytes, key identifier,
 * signature algorithm. Also checks that the CA key is the certificate's key, so a
 * mismatched pair fails here and not in every peer that verifies a leaf.
 */
function caTemplate(ca: X509Authority): CaTemplate {
  const cached = templates.get(ca)
  if (cached !== undefined && cached.certPem === ca.certPem && cached.key === ca.key) return cached
  const der = pemToDer(ca.certPem)
  const tbs = children(der, readTlv(der, 0))[0]
  if (tbs === undefined) throw new TypeError('CA certificate has no tbsCertificate')
  const { subject, spki, extensions } = tbsParts(der, tbs)
  if (subject === undefined || spki === undefined) throw new TypeError('CA certificate is truncated')
  const spkiDer = der.subarray(spki.start, spki.end)
  if (!createPublicKey(ca.key).export({ type: 'spki', format: 'der' }).equals(spkiDer)) {
    throw new TypeError('CA key does not match the CA certificate')
  }
  let keyId: Buffer | undefined
  for (const { id, value } of extensions === undefined ? [] : certExtensions(der, extensions)) {
    if (id.equals(oid(OID_SKI))) {
      const inner = readTlv(der, value.body, value.end)
      keyId = Buffer.from(der.subarray(inner.body, inner.end))
    }
  }
  if (keyId === undefined) {
    // RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits.
    const bits = children(der, spki)[1]
    if (bits === undefined) throw new TypeError('CA certificate has no public key')
    keyId = createHash('sha1').update(der.subarray(bits.body + 1, bits.end)).digest()
  }
  const made: CaTemplate = {
    certPem: ca.certPem, key: ca.key,
    issuer: Buffer.from(der.subarray(subject.start, subject.end)),
    authorityKeyId: extension(EXT_AKI, false, seq(tlv(0x80, keyId))),
    ...signatureParams(ca.key),
  }
  templates.set(ca, made)
  return made
}

function nameDer(commonName: string, organizations: string[] = []): Buffer {
  const rdn = (type: Buffer, value: string) => tlv(TAG.SET, seq(type, directoryString(value)))
  return seq(rdn(AT_CN, commonName), ...organizations.map((o) => rdn(AT_O, o)))
}

function subjectAltNames(opts: LeafOptions): Buffer[] {
  const names = [
    ...(opts.dnsNames ?? []).map((d) => tlv(0x82, Buffer.from(d, 'latin1'))),
    ...(opts.ipAddresses ?? []).map((ip) => tlv(0x87, ipBytes(ip))),
    ...(opts.uris ?? []).map((u) => tlv(0x86, Buffer.from(u, 'latin1'))),
  ]
  return names.length === 0 ? [] : [extension(EXT_SAN, false, seq(...names))]
}

const SPKI_P256_PREFIX = Buffer.from('3059301306072a8648ce3d020106082a8648ce3d030107034200', 'hex')
const SPKI_ED25519_PREFIX = Buffer.from('302a300506032b6570032100', 'hex')

/**
 * An ECDSA P-256 public key held as its SubjectPublicKeyInfo (DER, uncompressed point),
 * the point checked to be on the curve: all a leaf certificate needs of the key.
 */
export interface P256Spki {
  readonly spki: Buffer
}

/** The subject key of a leaf: a KeyObject, or a P-256 key as {@link p256SpkiFromPem} read it. */
export type LeafKey = KeyObject | P256Spki

const PUBLIC_KEY_PEM = /^-----BEGIN PUBLIC KEY-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END PUBLIC KEY-----\s*$/

/**
 * A PEM SPKI of an ECDSA P-256 key with an uncompressed point (what Node and OpenSSL
 * export), read without OpenSSL's decoders: the point is checked on the curve, as
 * `createPublicKey` would. `createPublicKey` costs ~70–100 µs per key (its decoder chain,
 * then the details query) and an agent sends a new key with every renewal. Undefined for
 * anything else, which the caller then reads with `createPublicKey`.
 */
export function p256SpkiFromPem(pem: string): P256Spki | undefined {
  const m = PUBLIC_KEY_PEM.exec(pem)
  if (!m) return undefined
  const der = Buffer.from((m[1] as string).replace(/\s+/g, ''), 'base64')
  if (der.length !== SPKI_P256_PREFIX.length + 65 || !der.subarray(0, SPKI_P256_PREFIX.length).equals(SPKI_P256_PREFIX) || der[SPKI_P256_PREFIX.length] !== 4) return undefined
  try {
    // Decodes the point into an EC_POINT, which refuses one off the curve.
    ECDH.convertKey(der.subarray(SPKI_P256_PREFIX.length), 'prime256v1')
  } catch {
    return undefined
  }
  return { spki: der }
}

/**
 * The SubjectPublicKeyInfo (DER) of a key, the same bytes as `export({ type: 'spki',
 * format: 'der' })`. For P-256 and Ed25519 it is a fixed prefix and the point, read from
 * the JWK export: OpenSSL 3's DER encoder costs as much as the signature.
 */
export function spkiDer(key: LeafKey): Buffer {
  if (!(key instanceof KeyObject)) return key.spki
  if (key.asymmetricKeyType === 'rsa') return key.export({ type: 'spki', format: 'der' })
  const jwk = key.export({ format: 'jwk' })
  if (key.asymmetricKeyType === 'ed25519') return Buffer.concat([SPKI_ED25519_PREFIX, Buffer.from(jwk.x as string, 'base64url')])
  return Buffer.concat([SPKI_P256_PREFIX, Buffer.of(4), Buffer.from(jwk.x as string, 'base64url'), Buffer.from(jwk.y as string, 'base64url')])
}

/** The key as a KeyObject (a P256Spki is imported; a KeyObject is returned as is). */
export function leafKeyObject(key: LeafKey): KeyObject {
  return key instanceof KeyObject ? key : createPublicKey({ key: key.spki, format: 'der', type: 'spki' })
}

function toPem(der: Buffer): string {
  const b64 = der.toString('base64')
  let body = ''
  for (let i = 0; i < b64.length; i += 64) body += b64.slice(i, i + 64) + '\n'
  return `-----BEGIN CERTIFICATE-----\n${body}-----END CERTIFICATE-----\n`
}

/**
 * Issues a leaf certificate signed by the CA, synchronously: the certificate is the CA's
 * template (issuer, key identifier, fixed extensions) plus this leaf's serial, validity,
 * subject, key and names, and one `crypto.sign` over it. Costs about one signature.
 */
export function issueLeafSync(opts: LeafOptions): IssuedX509 {
  for (const s of [...(opts.dnsNames ?? []), ...(opts.uris ?? [])]) {
    if (!/^[\x21-\x7e]+$/.test(s)) throw new TypeError(`subject alternative name "${s.replace(/[^\x20-\x7e]/g, '?').slice(0, 60)}" is not printable ASCII`)
  }
  const key = opts.publicKey
  if (key instanceof KeyObject) {
    const kind = key.asymmetricKeyType
    const p256 = kind === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1'
    if (!p256 && kind !== 'ed25519' && kind !== 'rsa') throw new TypeError(`unsupported public key type ${String(kind)}`)
  }
  const t = caTemplate(opts.ca)
  const now = opts.now ?? Date.now()
  const serial = newSerial()
  const notBefore = new Date(Math.floor((now - BACKDATE_MS) / 1000) * 1000)
  const notAfter = new Date(Math.floor((now + opts.ttlMs) / 1000) * 1000)
  const extensions = [
    USAGE_EXTENSIONS[opts.usage],
    t.authorityKeyId,
    ...subjectAltNames(opts),
    ...(opts.extensions ?? []).map((e) => extension(oid(e.oid), e.critical === true, e.value)),
  ]
  const tbs = seq(
    VERSION_3,
    uint(Buffer.from(serial, 'hex')),
    t.signatureAlgorithm,
    t.issuer,
    seq(time(notBefore), time(notAfter)),
    nameDer(opts.commonName, opts.organizations),
    spkiDer(key),
    tlv(0xa3, seq(...extensions)),
  )
  // The bare key: ECDSA signatures are DER by default, and the options-object form cost ~20 µs more per call.
  const signature = sign(t.digest, tbs, t.key)
  return { pem: toPem(seq(tbs, t.signatureAlgorithm, bitString(signature))), serial, notBefore, notAfter }
}

/** Issues a leaf certificate signed by the CA (see {@link issueLeafSync}). */
export async function issueLeaf(opts: LeafOptions): Promise<IssuedX509> {
  return issueLeafSync(opts)
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
