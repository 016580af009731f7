import { createHash, createPublicKey, randomBytes, sign, verify, type KeyObject, type JsonWebKey } from 'node:crypto'
import { MemidError } from '../core/errors.ts'
import { SshReader, SshWriter, sshString } from './ssh-wire.ts'

/** The SSH public key algorithms memid issues and serves. */
export type SshKeyType = 'ssh-ed25519' | 'ecdsa-sha2-nistp256' | 'ssh-rsa'

/** Agent SIGN_REQUEST flags (draft-ietf-sshm-ssh-agent §3.6.1). */
export const SSH_AGENT_RSA_SHA2_256 = 0x02
export const SSH_AGENT_RSA_SHA2_512 = 0x04

const CERT_SUFFIX = '-cert-v01@openssh.com'
const CERT_TYPE_USER = 1
const CERT_TYPE_HOST = 2
const MIN_RSA_BITS = 2048
const MAX_UINT64 = (1n << 64n) - 1n

function bad(message: string): MemidError {
  return new MemidError('ERR_BAD_REQUEST', message)
}

/** The SSH algorithm name of a key, or a clear error for kinds memid does not handle. */
export function sshKeyType(key: KeyObject): SshKeyType {
  switch (key.asymmetricKeyType) {
    case 'ed25519':
      return 'ssh-ed25519'
    case 'ec':
      if (key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return 'ecdsa-sha2-nistp256'
      throw bad(`unsupported SSH key: ECDSA curve ${key.asymmetricKeyDetails?.namedCurve ?? '?'} (only P-256 is supported)`)
    case 'rsa':
      if ((key.asymmetricKeyDetails?.modulusLength ?? 0) < MIN_RSA_BITS) throw bad(`unsupported SSH key: RSA keys must have at least ${MIN_RSA_BITS} bits`)
      return 'ssh-rsa'
    default:
      throw bad(`unsupported SSH key type ${key.asymmetricKeyType ?? '?'} (supported: ed25519, ecdsa-sha2-nistp256, ssh-rsa)`)
  }
}

function publicJwk(key: KeyObject): JsonWebKey {
  const pub = key.type === 'private' ? createPublicKey(key) : key
  return pub.export({ format: 'jwk' })
}

function b64url(s: string | undefined): Buffer {
  if (s === undefined) throw new TypeError('key is missing a JWK field')
  return Buffer.from(s, 'base64url')
}

/** Writes a key's algorithm-specific public fields (everything after the type name). */
function writeKeyFields(w: SshWriter, type: SshKeyType, jwk: JsonWebKey): SshWriter {
  switch (type) {
    case 'ssh-ed25519':
      return w.string(b64url(jwk.x))
    case 'ecdsa-sha2-nistp256':
      return w.string('nistp256').string(Buffer.concat([Buffer.of(4), b64url(jwk.x), b64url(jwk.y)]))
    case 'ssh-rsa':
      return w.mpint(b64url(jwk.e)).mpint(b64url(jwk.n))
  }
}

/** Reads a key's public fields for `type` and builds the KeyObject. */
function readKeyFields(r: SshReader, type: string): KeyObject {
  let jwk: JsonWebKey
  switch (type) {
    case 'ssh-ed25519': {
      const pk = r.string()
      if (pk.length !== 32) throw bad('ssh-ed25519 public key must be 32 bytes')
      jwk = { kty: 'OKP', crv: 'Ed25519', x: pk.toString('base64url') }
      break
    }
    case 'ecdsa-sha2-nistp256': {
      if (r.text() !== 'nistp256') throw bad('ecdsa-sha2-nistp256 key names the wrong curve')
      const q = r.string()
      if (q.length !== 65 || q[0] !== 4) throw bad('ecdsa-sha2-nistp256 public key must be an uncompressed 65-byte point')
      jwk = { kty: 'EC', crv: 'P-256', x: q.subarray(1, 33).toString('base64url'), y: q.subarray(33).toString('base64url') }
      break
    }
    case 'ssh-rsa': {
      const e = r.mpint()
      const n = r.mpint()
      if (n.length * 8 < MIN_RSA_BITS) throw bad(`ssh-rsa keys must have at least ${MIN_RSA_BITS} bits`)
      jwk = { kty: 'RSA', e: e.toString('base64url'), n: n.toString('base64url') }
      break
    }
    default:
      throw bad(`unsupported SSH key type "${printable(type)}" (supported: ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa)`)
  }
  try {
    return createPublicKey({ key: jwk, format: 'jwk' })
  } catch {
    throw bad(`invalid ${type} public key`)
  }
}

function printable(s: string): string {
  return s.replace(/[^\x20-\x7e]/g, '?').slice(0, 60)
}

/** The public key in SSH wire format (`string type, …`), from a public or private KeyObject. */
export function sshPublicKeyBlob(publicKey: KeyObject): Buffer {
  const type = sshKeyType(publicKey)
  return writeKeyFields(new SshWriter().string(type), type, publicJwk(publicKey)).toBuffer()
}

/** An OpenSSH public key line: `ssh-ed25519 AAAA… comment`. */
export function sshPublicKeyLine(publicKey: KeyObject, comment?: string): string {
  const line = `${sshKeyType(publicKey)} ${sshPublicKeyBlob(publicKey).toString('base64')}`
  return comment ? `${line} ${comment}` : line
}

/** The public KeyObject of an SSH public key blob. */
export function parseSshPublicKeyBlob(blob: Buffer): KeyObject {
  const r = new SshReader(blob, 'SSH public key')
  const key = readKeyFields(r, r.text())
  r.end()
  return key
}

/** `SHA256:…` as `ssh-keygen -l` and `ssh-add -l` print it. */
export function sshFingerprint(blob: Buffer): string {
  return `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`
}

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/

/** Splits `type base64 [comment]` from the first meaningful line of a key file. */
function splitKeyLine(text: string, what: string): { type: string; blob: Buffer } {
  if (typeof text !== 'string') throw new TypeError(`${what} must be a string`)
  if (text.includes('PRIVATE KEY-----')) throw bad(`this is a private key, not an OpenSSH ${what} (pass the .pub file)`)
  const line = text.split(/\r?\n/).map((l) => l.trim()).find((l) => l.length > 0 && !l.startsWith('#'))
  if (line === undefined) throw bad(`empty OpenSSH ${what}`)
  const [type, data] = line.split(/\s+/)
  if (type === undefined || data === undefined || !BASE64.test(data) || data.length % 4 !== 0) {
    throw bad(`not an OpenSSH ${what} line (expected "TYPE BASE64 [COMMENT]")`)
  }
  const blob = Buffer.from(data, 'base64')
  const inner = new SshReader(blob, `OpenSSH ${what}`).text()
  if (inner !== type) throw bad(`OpenSSH ${what} says "${printable(type)}" but its data is "${printable(inner)}"`)
  return { type, blob }
}

/**
 * Parses an OpenSSH public key line (the content of a `.pub` file) into a KeyObject.
 * Throws a MemidError naming the problem (never echoing the input) on anything else.
 */
export function parseSshPublicKeyLine(line: string): KeyObject {
  const { type, blob } = splitKeyLine(line, 'public key')
  if (type.endsWith(CERT_SUFFIX)) throw bad('this is an OpenSSH certificate, not a public key (pass the plain .pub file)')
  return parseSshPublicKeyBlob(blob)
}

/** What goes into an OpenSSH certificate (PROTOCOL.certkeys). */
export interface SshCertificateOptions {
  type: 'user' | 'host'
  /** The key being certified (public or private KeyObject; only the public half is used). */
  publicKey: KeyObject
  /** The CA's private key. */
  caKey: KeyObject
  /** Unique per CA; 0 … 2^64-1. */
  serial: bigint
  keyId: string
  /** Logins for user certificates, host names for host certificates. */
  principals: string[]
  validAfter: Date
  validBefore: Date
  /** Flag extensions map to `''`, e.g. `{ 'permit-pty': '' }`. */
  extensions?: Record<string, string>
  /** e.g. `{ 'force-command': '/bin/true' }`. */
  criticalOptions?: Record<string, string>
}

function packStrings(list: string[]): Buffer {
  const w = new SshWriter()
  for (const s of list) w.string(s)
  return w.toBuffer()
}

/** Options are sorted by name (OpenSSH rejects unsorted ones); a non-empty value is itself a string. */
function packOptions(options: Record<string, string> | undefined): Buffer {
  const w = new SshWriter()
  for (const name of Object.keys(options ?? {}).sort()) {
    const value = (options as Record<string, string>)[name] as string
    w.string(name).string(value === '' ? Buffer.alloc(0) : sshString(value))
  }
  return w.toBuffer()
}

function seconds(d: Date, what: string): bigint {
  const ms = d.getTime()
  if (!Number.isFinite(ms)) throw new TypeError(`${what} is not a valid date`)
  return BigInt(Math.max(0, Math.floor(ms / 1000)))
}

/**
 * Issues an OpenSSH certificate and returns its blob (the wire form, as in an agent's
 * identities answer). Signed with node:crypto by the CA key; an Ed25519 CA is the
 * default, ECDSA P-256 and RSA (rsa-sha2-512) CAs work too.
 */
export function signSshCertificate(opts: SshCertificateOptions): Buffer {
  if (opts.serial < 0n || opts.serial > MAX_UINT64) throw new TypeError('serial must fit in 64 unsigned bits')
  if (opts.principals.some((p) => p.length === 0 || /[\0\s,]/.test(p))) throw bad('principals must be non-empty names without spaces or commas')
  const after = seconds(opts.validAfter, 'validAfter')
  const before = seconds(opts.validBefore, 'validBefore')
  if (before <= after) throw new TypeError('validBefore must be later than validAfter')
  if (opts.caKey.type !== 'private') throw new TypeError('caKey must be a private key')
  const keyType = sshKeyType(opts.publicKey)
  const w = new SshWriter().string(keyType + CERT_SUFFIX).string(randomBytes(32))
  writeKeyFields(w, keyType, publicJwk(opts.publicKey))
    .u64(opts.serial)
    .u32(opts.type === 'user' ? CERT_TYPE_USER : CERT_TYPE_HOST)
    .string(opts.keyId)
    .string(packStrings(opts.principals))
    .u64(after)
    .u64(before)
    .string(packOptions(opts.criticalOptions))
    .string(packOptions(opts.extensions))
    .string(Buffer.alloc(0))
    .string(sshPublicKeyBlob(opts.caKey))
  const body = w.toBuffer()
  return Buffer.concat([body, sshString(sshSign(opts.caKey, body, SSH_AGENT_RSA_SHA2_512))])
}

/** An OpenSSH certificate line: `ssh-ed25519-cert-v01@openssh.com AAAA… comment`. */
export function sshCertificateLine(blob: Buffer, comment?: string): string {
  const type = new SshReader(blob, 'OpenSSH certificate').text()
  const line = `${type} ${blob.toString('base64')}`
  return comment ? `${line} ${comment}` : line
}

/** Everything an OpenSSH certificate says, decoded. */
export interface ParsedSshCertificate {
  blob: Buffer
  /** The certificate key type, e.g. `ssh-ed25519-cert-v01@openssh.com`. */
  type: string
  certType: 'user' | 'host'
  serial: bigint
  keyId: string
  principals: string[]
  validAfter: Date
  validBefore: Date
  criticalOptions: Record<string, string>
  extensions: Record<string, string>
  /** The certified key as a plain SSH public key blob. */
  publicKeyBlob: Buffer
  /** The CA's public key blob. */
  signatureKey: Buffer
}

function readStrings(buf: Buffer, what: string): string[] {
  const r = new SshReader(buf, what)
  const out: string[] = []
  while (r.remaining > 0) out.push(r.text())
  return out
}

function readOptions(buf: Buffer, what: string): Record<string, string> {
  const r = new SshReader(buf, what)
  const out: Record<string, string> = {}
  while (r.remaining > 0) {
    const name = r.text()
    const data = r.string()
    out[name] = data.length === 0 ? '' : new SshReader(data, what).text()
  }
  return out
}

/** Certificates valid "forever" carry 2^64-1, beyond what a Date holds. */
const MAX_DATE_SECONDS = 8_640_000_000_000n

function toDate(secs: bigint): Date {
  return new Date(Number(secs > MAX_DATE_SECONDS ? MAX_DATE_SECONDS : secs) * 1000)
}

/** Decodes an OpenSSH certificate blob. Does not check its signature (see verifySshCertificate). */
export function parseSshCertificate(blob: Buffer): ParsedSshCertificate {
  return decodeCertificate(blob).cert
}

function decodeCertificate(blob: Buffer): { cert: ParsedSshCertificate; signed: number } {
  const r = new SshReader(blob, 'OpenSSH certificate')
  const type = r.text()
  if (!type.endsWith(CERT_SUFFIX)) throw bad(`not an OpenSSH certificate type: "${printable(type)}"`)
  const keyType = type.slice(0, -CERT_SUFFIX.length)
  r.string() // nonce
  const keyStart = r.offset
  readKeyFields(r, keyType)
  const publicKeyBlob = Buffer.concat([sshString(keyType), blob.subarray(keyStart, r.offset)])
  const serial = r.u64()
  const kind = r.u32()
  if (kind !== CERT_TYPE_USER && kind !== CERT_TYPE_HOST) throw bad(`unknown OpenSSH certificate type ${kind}`)
  const keyId = r.text()
  const principals = readStrings(r.string(), 'certificate principals')
  const validAfter = toDate(r.u64())
  const validBefore = toDate(r.u64())
  const criticalOptions = readOptions(r.string(), 'certificate critical options')
  const extensions = readOptions(r.string(), 'certificate extensions')
  r.string() // reserved
  const signatureKey = r.string()
  const signed = r.offset
  r.string() // signature
  r.end()
  const cert: ParsedSshCertificate = {
    blob,
    type,
    certType: kind === CERT_TYPE_USER ? 'user' : 'host',
    serial,
    keyId,
    principals,
    validAfter,
    validBefore,
    criticalOptions,
    extensions,
    publicKeyBlob,
    signatureKey,
  }
  return { cert, signed }
}

/**
 * The plain public key blob of a key or certificate blob: a certificate's certified key,
 * anything else unchanged. Signatures made by a certificate's holder verify with it.
 */
export function sshPlainKeyBlob(blob: Buffer): Buffer {
  const type = new SshReader(blob, 'SSH public key').text()
  return type.endsWith(CERT_SUFFIX) ? decodeCertificate(blob).cert.publicKeyBlob : blob
}

/** Parses an OpenSSH certificate line (`TYPE BASE64 [COMMENT]`). */
export function parseSshCertificateLine(line: string): ParsedSshCertificate {
  const { type, blob } = splitKeyLine(line, 'certificate')
  if (!type.endsWith(CERT_SUFFIX)) throw bad('this is a plain public key, not an OpenSSH certificate')
  return parseSshCertificate(blob)
}

/** True when the certificate was signed by `caPublicKey` and its signature verifies. */
export function verifySshCertificate(certificate: Buffer | ParsedSshCertificate, caPublicKey: KeyObject): boolean {
  const { cert, signed } = decodeCertificate(Buffer.isBuffer(certificate) ? certificate : certificate.blob)
  if (!cert.signatureKey.equals(sshPublicKeyBlob(caPublicKey))) return false
  const r = new SshReader(cert.blob, 'OpenSSH certificate', signed)
  return verifySshSignature(caPublicKey, r.string(), cert.blob.subarray(0, signed))
}

function rsaAlgorithm(flags: number): { name: string; hash: string } {
  // OpenSSH's ssh-agent prefers SHA-256 when a client sets both bits; so do we.
  if (flags & SSH_AGENT_RSA_SHA2_256) return { name: 'rsa-sha2-256', hash: 'sha256' }
  if (flags & SSH_AGENT_RSA_SHA2_512) return { name: 'rsa-sha2-512', hash: 'sha512' }
  return { name: 'ssh-rsa', hash: 'sha1' }
}

/**
 * Signs `data` and returns the SSH signature blob (`string algorithm, string signature`)
 * an agent sends in SIGN_RESPONSE. RSA keys honour the agent's SHA-2 flags.
 */
export function sshSign(key: KeyObject, data: Buffer, flags: number): Buffer {
  const type = sshKeyType(key)
  switch (type) {
    case 'ssh-ed25519':
      return new SshWriter().string(type).string(sign(null, data, key)).toBuffer()
    case 'ecdsa-sha2-nistp256': {
      const rs = sign('sha256', data, { key, dsaEncoding: 'ieee-p1363' })
      const inner = new SshWriter().mpint(rs.subarray(0, 32)).mpint(rs.subarray(32)).toBuffer()
      return new SshWriter().string(type).string(inner).toBuffer()
    }
    case 'ssh-rsa': {
      const alg = rsaAlgorithm(flags)
      return new SshWriter().string(alg.name).string(sign(alg.hash, data, key)).toBuffer()
    }
  }
}

function pad32(b: Buffer): Buffer {
  if (b.length > 32) throw bad('ECDSA signature component is too long')
  return b.length === 32 ? b : Buffer.concat([Buffer.alloc(32 - b.length), b])
}

/** Verifies an SSH signature blob over `data` with the given public key; false on any mismatch. */
export function verifySshSignature(publicKey: KeyObject, signature: Buffer, data: Buffer): boolean {
  try {
    const type = sshKeyType(publicKey)
    const r = new SshReader(signature, 'SSH signature')
    const alg = r.text()
    const sig = r.string()
    r.end()
    switch (type) {
      case 'ssh-ed25519':
        return alg === type && verify(null, data, publicKey, sig)
      case 'ecdsa-sha2-nistp256': {
        if (alg !== type) return false
        const inner = new SshReader(sig, 'ECDSA signature')
        const rs = Buffer.concat([pad32(inner.mpint()), pad32(inner.mpint())])
        inner.end()
        return verify('sha256', data, { key: publicKey, dsaEncoding: 'ieee-p1363' }, rs)
      }
      case 'ssh-rsa': {
        const hash = alg === 'rsa-sha2-512' ? 'sha512' : alg === 'rsa-sha2-256' ? 'sha256' : alg === 'ssh-rsa' ? 'sha1' : undefined
        return hash !== undefined && verify(hash, data, publicKey, sig)
      }
    }
  } catch {
    return false
  }
}
