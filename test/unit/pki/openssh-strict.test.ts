// What the OpenSSH key and certificate parsers refuse, and the edges of what they accept:
// blobs built by hand, since sshPublicKeyBlob never writes a bad one.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, generateKeyPairSync, sign, type KeyObject } from 'node:crypto'
import { MemidError } from '../../../src/core/errors.ts'
import {
  parseSshCertificate, parseSshCertificateLine, parseSshPublicKeyBlob, parseSshPublicKeyLine, signSshCertificate, sshCertificateLine, sshFingerprint, sshKeyType, sshPlainKeyBlob, sshPublicKeyBlob,
  sshPublicKeyLine, sshSign, verifySshCertificate, verifySshSignature,
} from '../../../src/pki/openssh.ts'
import { SshReader, SshWriter } from '../../../src/pki/ssh-wire.ts'

const ed = generateKeyPairSync('ed25519')
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' })
const rsa2048 = generateKeyPairSync('rsa', { modulusLength: 2048 })

function refused(f: () => unknown, message: RegExp): void {
  assert.throws(f, (err: unknown) => {
    assert.ok(err instanceof MemidError, String(err))
    assert.equal(err.code, 'ERR_BAD_REQUEST')
    assert.match(err.message, message)
    return true
  })
}

function blob(type: string, ...fields: (Buffer | string)[]): Buffer {
  const w = new SshWriter().string(type)
  for (const f of fields) w.string(f)
  return w.toBuffer()
}

function rsaBlob(key: KeyObject): Buffer {
  const jwk = key.export({ format: 'jwk' })
  return new SshWriter().string('ssh-rsa').mpint(Buffer.from(jwk.e as string, 'base64url')).mpint(Buffer.from(jwk.n as string, 'base64url')).toBuffer()
}

function ecPoint(): Buffer {
  const jwk = ec.publicKey.export({ format: 'jwk' })
  return Buffer.concat([Buffer.of(4), Buffer.from(jwk.x as string, 'base64url'), Buffer.from(jwk.y as string, 'base64url')])
}

function cert(over: Partial<Parameters<typeof signSshCertificate>[0]> = {}): Buffer {
  return signSshCertificate({
    type: 'user', publicKey: ed.publicKey, caKey: ed.privateKey, serial: 1n, keyId: 'k', principals: ['deploy'],
    validAfter: new Date(Date.now() - 60_000), validBefore: new Date(Date.now() + 60_000), ...over,
  })
}

describe('SSH key kinds', () => {
  it('names the key kind or curve it refuses', () => {
    assert.throws(() => sshKeyType(generateKeyPairSync('ec', { namedCurve: 'P-384' }).publicKey), /ECDSA curve secp384r1 \(only P-256/)
    assert.throws(() => sshKeyType(generateKeyPairSync('ed448').publicKey), /unsupported SSH key type ed448 \(supported/)
  })

  it('a 2048-bit RSA key is the smallest accepted, written and parsed', () => {
    assert.equal(sshKeyType(rsa2048.publicKey), 'ssh-rsa')
    assert.ok(parseSshPublicKeyBlob(sshPublicKeyBlob(rsa2048.publicKey)).equals(rsa2048.publicKey))
    refused(() => parseSshPublicKeyBlob(rsaBlob(generateKeyPairSync('rsa', { modulusLength: 2040 }).publicKey)), /ssh-rsa keys must have at least 2048 bits/)
    refused(() => parseSshPublicKeyBlob(rsaBlob(generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey)), /at least 2048 bits/)
  })
})

describe('SSH public key blobs that do not parse', () => {
  it('an Ed25519 key that is not 32 bytes', () => {
    refused(() => parseSshPublicKeyBlob(blob('ssh-ed25519', Buffer.alloc(31, 1))), /ssh-ed25519 public key must be 32 bytes/)
    refused(() => parseSshPublicKeyBlob(blob('ssh-ed25519', Buffer.alloc(33, 1))), /must be 32 bytes/)
  })

  it('an ECDSA key naming another curve, or whose point is not an uncompressed 65-byte point, or not on the curve', () => {
    const q = ecPoint()
    assert.ok(parseSshPublicKeyBlob(blob('ecdsa-sha2-nistp256', 'nistp256', q)).equals(ec.publicKey))
    refused(() => parseSshPublicKeyBlob(blob('ecdsa-sha2-nistp256', 'nistp384', q)), /names the wrong curve/)
    const marked5 = Buffer.from(q)
    marked5[0] = 5
    refused(() => parseSshPublicKeyBlob(blob('ecdsa-sha2-nistp256', 'nistp256', marked5)), /uncompressed 65-byte point/)
    const compressed = Buffer.concat([Buffer.of(2 + ((q[64] as number) & 1)), q.subarray(1, 33)])
    refused(() => parseSshPublicKeyBlob(blob('ecdsa-sha2-nistp256', 'nistp256', compressed)), /uncompressed 65-byte point/)
    refused(() => parseSshPublicKeyBlob(blob('ecdsa-sha2-nistp256', 'nistp256', Buffer.concat([q, Buffer.of(0)]))), /uncompressed 65-byte point/)
    const offCurve = Buffer.from(q)
    offCurve[64] = (offCurve[64] as number) ^ 1
    refused(() => parseSshPublicKeyBlob(blob('ecdsa-sha2-nistp256', 'nistp256', offCurve)), /^invalid ecdsa-sha2-nistp256 public key$/)
  })

  it('an unknown type is named, printable and cut short, never echoing raw bytes', () => {
    refused(() => parseSshPublicKeyBlob(blob('ssh-\x01\x7f\u00e9x', Buffer.alloc(4))), /unsupported SSH key type "ssh-\?\?\?x"/)
    const long = `x${'y'.repeat(100)}`
    assert.throws(() => parseSshPublicKeyBlob(blob(long, Buffer.alloc(4))), (err: Error) => {
      assert.ok(err.message.includes(`"${long.slice(0, 60)}"`), err.message)
      return true
    })
  })
})

describe('SSH fingerprints', () => {
  it('are SHA256: and the unpadded base64 of the blob\'s SHA-256', () => {
    const b = sshPublicKeyBlob(ed.publicKey)
    assert.equal(sshFingerprint(b), `SHA256:${createHash('sha256').update(b).digest('base64').slice(0, 43)}`)
    assert.match(sshFingerprint(b), /^SHA256:[A-Za-z0-9+/]{43}$/)
  })
})

describe('OpenSSH public key lines', () => {
  const line = sshPublicKeyLine(ed.publicKey)

  it('skips blank and comment lines, takes the first key, and allows CRLF', () => {
    assert.ok(parseSshPublicKeyLine(`\n# a comment\n   \r\n  ${line} me@host\r\n${sshPublicKeyLine(ec.publicKey)}\n`).equals(ed.publicKey))
    assert.ok(parseSshPublicKeyLine(`# a comment\n${line}\n`).equals(ed.publicKey))
    assert.ok(parseSshPublicKeyLine(`# a comment\r\n${line}\r\n`).equals(ed.publicKey))
    const [type, data] = line.split(' ') as [string, string]
    assert.ok(parseSshPublicKeyLine(`${type} \t ${data}   me`).equals(ed.publicKey), 'any run of blanks separates the fields')
  })

  it('refuses base64 with foreign characters, extra padding or a bad length, and input that is not a string', () => {
    const [type, data] = line.split(' ') as [string, string]
    for (const bad of [`${type} ${data.slice(0, -4)}AA*A`, `${type} *${data.slice(1)}`, `${type} ${data.slice(0, -4)}A===`, `${type} ${data}A`, `${type} ${data}====`]) {
      refused(() => parseSshPublicKeyLine(bad), /not an OpenSSH public key line/)
    }
    assert.throws(() => parseSshPublicKeyLine(undefined as unknown as string), (err: unknown) => err instanceof TypeError && /public key must be a string/.test(err.message))
  })

  it('refuses a PEM private key, saying to pass the .pub file', () => {
    refused(() => parseSshPublicKeyLine(ed.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string), /this is a private key, not an OpenSSH public key \(pass the \.pub file\)/)
  })
})

describe('OpenSSH certificates: edges', () => {
  it('a host certificate carries type 2 on the wire; any other number is refused', () => {
    const b = cert({ type: 'host' })
    const c = parseSshCertificate(b)
    assert.equal(c.certType, 'host')
    // The type follows the nonce, the key and the serial.
    const r = new SshReader(b)
    r.text()
    r.string()
    r.string()
    r.u64()
    const at = r.offset
    assert.equal(b.readUInt32BE(at), 2)
    assert.equal(parseSshCertificate(cert()).certType, 'user')
    for (const kind of [0, 3]) {
      const forged = Buffer.from(b)
      forged.writeUInt32BE(kind, at)
      refused(() => parseSshCertificate(forged), new RegExp(`unknown OpenSSH certificate type ${kind}$`))
    }
  })

  it('a plain key is not a certificate', () => {
    refused(() => parseSshCertificate(sshPublicKeyBlob(ed.publicKey)), /not an OpenSSH certificate type: "ssh-ed25519"/)
  })

  it('sshPlainKeyBlob gives a certificate\'s certified key and leaves a plain key as it is', () => {
    const plain = sshPublicKeyBlob(ec.publicKey)
    assert.ok(sshPlainKeyBlob(cert({ publicKey: ec.publicKey })).equals(plain))
    assert.ok(sshPlainKeyBlob(plain).equals(plain))
  })

  it('validity before 1970 is written as 0; a date that is not one is refused', () => {
    const c = parseSshCertificate(cert({ validAfter: new Date(-5_000), validBefore: new Date(10_000) }))
    assert.equal(c.validAfter.getTime(), 0)
    assert.equal(c.validBefore.getTime(), 10_000)
    assert.throws(() => cert({ validAfter: new Date(NaN) }), /validAfter is not a valid date/)
    assert.throws(() => cert({ validBefore: new Date(NaN) }), /validBefore is not a valid date/)
  })

  it('a certificate valid "forever" (2^64-1) reads as the latest Date', () => {
    const b = cert()
    const r = new SshReader(b)
    r.text()
    r.string()
    r.string()
    r.u64()
    r.u32()
    r.text()
    r.string()
    r.u64()
    const at = r.offset
    const forever = Buffer.from(b)
    forever.writeBigUInt64BE((1n << 64n) - 1n, at)
    assert.equal(parseSshCertificate(forever).validBefore.getTime(), 8_640_000_000_000_000)
    const exactly = Buffer.from(b)
    exactly.writeBigUInt64BE(8_640_000_000_000n, at)
    assert.equal(parseSshCertificate(exactly).validBefore.getTime(), 8_640_000_000_000_000)
  })

  it('serials outside 64 unsigned bits and principals with separators are refused', () => {
    assert.throws(() => cert({ serial: 1n << 64n }), /serial must fit in 64 unsigned bits/)
    assert.equal(parseSshCertificate(cert({ serial: 0n })).serial, 0n)
    for (const p of ['', 'a,b', 'a\tb', 'a\0b', 'a b']) refused(() => cert({ principals: ['ok', p] }), /principals must be non-empty names without spaces or commas/)
    assert.throws(() => cert({ validBefore: new Date(Date.now() - 120_000) }), /validBefore must be later than validAfter/)
  })

  it('a certificate signed by one CA but naming another as signer does not verify', () => {
    const other = generateKeyPairSync('ed25519')
    assert.equal(verifySshCertificate(cert({ caKey: other.privateKey }), ed.publicKey), false)
    assert.ok(verifySshCertificate(cert({ caKey: other.privateKey }), other.publicKey))
  })
})

describe('truncated input names what was truncated', () => {
  /** Offsets of the certificate's fields, in wire order. */
  function fieldsOf(b: Buffer): number[] {
    const r = new SshReader(b)
    const at: number[] = []
    const step = (f: () => unknown) => {
      at.push(r.offset)
      f()
    }
    step(() => r.text())
    step(() => r.string())
    step(() => r.string())
    step(() => r.u64())
    step(() => r.u32())
    step(() => r.text())
    step(() => r.string()) // principals: index 6
    step(() => r.u64())
    step(() => r.u64())
    step(() => r.string()) // critical options: index 9
    step(() => r.string()) // extensions: index 10
    return at
  }

  it('keys, key lines and certificates', () => {
    const key = sshPublicKeyBlob(ed.publicKey)
    refused(() => parseSshPublicKeyBlob(key.subarray(0, 20)), /^SSH public key is truncated$/)
    refused(() => parseSshPublicKeyLine(`ssh-ed25519 ${Buffer.of(0, 0, 0).toString('base64')}`), /^OpenSSH public key is truncated$/)
    const c = cert()
    refused(() => parseSshCertificate(c.subarray(0, 60)), /^OpenSSH certificate is truncated$/)
    refused(() => sshCertificateLine(Buffer.alloc(2)), /^OpenSSH certificate is truncated$/)
    refused(() => parseSshCertificateLine('\n'), /^empty OpenSSH certificate$/)
    refused(() => parseSshCertificateLine('ssh-ed25519-cert-v01@openssh.com'), /not an OpenSSH certificate line/)
  })

  it('the principals, critical options and extensions of a certificate', () => {
    const c = cert({ criticalOptions: { 'force-command': '/bin/true' }, extensions: { 'permit-pty': '' } })
    const at = fieldsOf(c)
    for (const [field, what] of [[6, 'certificate principals'], [9, 'certificate critical options'], [10, 'certificate extensions']] as const) {
      const bad = Buffer.from(c)
      bad.writeUInt32BE(0xffff, (at[field] as number) + 4)
      refused(() => parseSshCertificate(bad), new RegExp(`^${what} is truncated$`))
    }
  })

  it('bytes after the certificate\'s signature are refused', () => {
    refused(() => parseSshCertificate(Buffer.concat([cert(), Buffer.of(0)])), /^OpenSSH certificate has 1 trailing bytes$/)
  })
})

describe('OpenSSH certificates: the signer', () => {
  it('a certificate signed by the CA key but naming another key as its signer does not verify', () => {
    const other = generateKeyPairSync('ed25519')
    const c = cert()
    const r = new SshReader(c)
    for (let i = 0; i < 11; i++) i === 3 ? r.u64() : i === 4 ? r.u32() : i === 7 || i === 8 ? r.u64() : r.string()
    r.string() // reserved
    const keyAt = r.offset
    const body = Buffer.concat([c.subarray(0, keyAt), new SshWriter().string(sshPublicKeyBlob(other.publicKey)).toBuffer()])
    const forged = Buffer.concat([body, new SshWriter().string(sshSign(ed.privateKey, body, 0)).toBuffer()])
    assert.ok(parseSshCertificate(forged).signatureKey.equals(sshPublicKeyBlob(other.publicKey)))
    assert.equal(verifySshCertificate(forged, ed.publicKey), false)
    assert.equal(verifySshCertificate(forged, other.publicKey), false)
  })
})

describe('SSH signatures: what does not verify', () => {
  const data = Buffer.from('data')

  it('a signature under another algorithm name, with trailing bytes, or for another key kind', () => {
    const edSig = sshSign(ed.privateKey, data, 0)
    const inner = new SshReader(edSig)
    inner.text()
    const raw = inner.string()
    assert.equal(verifySshSignature(ed.publicKey, new SshWriter().string('ssh-rsa').string(raw).toBuffer(), data), false)
    assert.equal(verifySshSignature(ed.publicKey, Buffer.concat([edSig, Buffer.of(0)]), data), false)
    const ecSig = sshSign(ec.privateKey, data, 0)
    const ecInner = new SshReader(ecSig)
    ecInner.text()
    assert.equal(verifySshSignature(ec.publicKey, new SshWriter().string('ssh-ed25519').string(ecInner.string()).toBuffer(), data), false)
    const rsaSig = sshSign(rsa2048.privateKey, data, 4)
    const rsaInner = new SshReader(rsaSig)
    rsaInner.text()
    const rsaRaw = rsaInner.string()
    assert.equal(verifySshSignature(rsa2048.publicKey, new SshWriter().string('rsa-sha2-999').string(rsaRaw).toBuffer(), data), false)
    for (const flags of [0, 2, 4]) {
      const raw = new SshReader(sshSign(rsa2048.privateKey, data, flags))
      raw.text()
      assert.equal(verifySshSignature(rsa2048.publicKey, new SshWriter().string('x-unknown@example.com').string(raw.string()).toBuffer(), data), false, `flags ${flags} under an unknown name`)
    }
    assert.equal(verifySshSignature(rsa2048.publicKey, new SshWriter().string('rsa-sha2-256').string(rsaRaw).toBuffer(), data), false, 'the hash the name says is used')
    assert.ok(verifySshSignature(rsa2048.publicKey, rsaSig, data))
    assert.ok(verifySshSignature(rsa2048.publicKey, sshSign(rsa2048.privateKey, data, 2), data))
    assert.equal(verifySshSignature(generateKeyPairSync('ec', { namedCurve: 'P-384' }).publicKey, ecSig, data), false, 'an unsupported key verifies nothing')
  })

  it('ECDSA: short r or s (leading zeros) verify; a component over 32 bytes or trailing data does not', () => {
    // About one signature in 128 has an r or s below 2^248; 3000 tries find one.
    let short = 0
    for (let i = 0; i < 3000 && short < 2; i++) {
      const d = Buffer.from(`message ${i}`)
      const sig = sshSign(ec.privateKey, d, 0)
      const r = new SshReader(sig)
      r.text()
      const rs = new SshReader(r.string())
      const a = rs.mpint()
      const b = rs.mpint()
      if (a.length < 32 || b.length < 32) {
        short++
        assert.ok(verifySshSignature(ec.publicKey, sig, d), `short component, try ${i}`)
      }
    }
    assert.ok(short > 0)
    const p1363 = sign('sha256', data, { key: ec.privateKey, dsaEncoding: 'ieee-p1363' })
    const long = new SshWriter().mpint(Buffer.concat([Buffer.of(1), p1363.subarray(0, 32)])).mpint(p1363.subarray(32)).toBuffer()
    assert.equal(verifySshSignature(ec.publicKey, new SshWriter().string('ecdsa-sha2-nistp256').string(long).toBuffer(), data), false)
    const good = new SshWriter().mpint(p1363.subarray(0, 32)).mpint(p1363.subarray(32)).toBuffer()
    assert.ok(verifySshSignature(ec.publicKey, new SshWriter().string('ecdsa-sha2-nistp256').string(good).toBuffer(), data))
    const trailing = Buffer.concat([good, Buffer.of(0, 0, 0, 0)])
    assert.equal(verifySshSignature(ec.publicKey, new SshWriter().string('ecdsa-sha2-nistp256').string(trailing).toBuffer(), data), false)
  })
})
