import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import {
  parseSshCertificateLine,
  parseSshPublicKeyBlob,
  parseSshPublicKeyLine,
  signSshCertificate,
  sshCertificateLine,
  sshFingerprint,
  sshPublicKeyBlob,
  sshPublicKeyLine,
  sshSign,
  verifySshCertificate,
  verifySshSignature,
  SSH_AGENT_RSA_SHA2_256,
  SSH_AGENT_RSA_SHA2_512,
} from '../../../src/pki/openssh.ts'
import { SshReader } from '../../../src/pki/ssh-wire.ts'
import { MemidError } from '../../../src/core/errors.ts'
import { requireSshBinary, run } from '../../fixtures/ssh-tools.ts'

const keygen = requireSshBinary('ssh-keygen')

const pairs = {
  ed25519: generateKeyPairSync('ed25519'),
  ecdsa: generateKeyPairSync('ec', { namedCurve: 'P-256' }),
  rsa: generateKeyPairSync('rsa', { modulusLength: 3072 }),
}
type Kind = keyof typeof pairs
const kinds = Object.keys(pairs) as Kind[]
const expectedType: Record<Kind, string> = { ed25519: 'ssh-ed25519', ecdsa: 'ecdsa-sha2-nistp256', rsa: 'ssh-rsa' }

let dir: string
before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'memid-openssh-'))
})
after(() => rmSync(dir, { recursive: true, force: true }))

function file(name: string, content: string): string {
  const p = path.join(dir, name)
  writeFileSync(p, content)
  return p
}

function cert(publicKey: KeyObject, caKey: KeyObject, over: Partial<Parameters<typeof signSshCertificate>[0]> = {}): Buffer {
  const now = Date.now()
  return signSshCertificate({
    type: 'user',
    publicKey,
    caKey,
    serial: 18446744073709551615n,
    keyId: 'bot=ci instance=1f0c',
    principals: ['deploy', 'ops'],
    validAfter: new Date(now - 60_000),
    validBefore: new Date(now + 3_600_000),
    extensions: { 'permit-pty': '', 'permit-port-forwarding': '' },
    ...over,
  })
}

describe('OpenSSH public keys', () => {
  for (const kind of kinds) {
    it(`${kind}: line round-trips and ssh-keygen agrees on the fingerprint`, async () => {
      const line = sshPublicKeyLine(pairs[kind].publicKey, 'test')
      assert.ok(line.startsWith(`${expectedType[kind]} AAAA`))
      assert.equal(sshPublicKeyLine(pairs[kind].privateKey, 'test'), line, 'the private key gives the same public line')
      const parsed = parseSshPublicKeyLine(line)
      assert.ok(parsed.equals(pairs[kind].publicKey))
      assert.ok(parseSshPublicKeyBlob(sshPublicKeyBlob(parsed)).equals(parsed))
      const out = await run(keygen, ['-l', '-f', file(`${kind}.pub`, `${line}\n`)])
      assert.equal(out.code, 0, out.stderr)
      assert.ok(out.stdout.includes(sshFingerprint(sshPublicKeyBlob(parsed))), out.stdout)
    })
  }

  it('parses what ssh-keygen generates', async () => {
    for (const [t, bits] of [['ed25519', ''], ['ecdsa', '256'], ['rsa', '3072']]) {
      const p = path.join(dir, `gen-${t}`)
      const gen = await run(keygen, ['-q', '-t', t as string, ...(bits ? ['-b', bits as string] : []), '-N', '', '-C', 'host@example', '-f', p])
      assert.equal(gen.code, 0, gen.stderr)
      const line = readFileSync(`${p}.pub`, 'utf8')
      assert.equal(sshPublicKeyLine(parseSshPublicKeyLine(line), 'host@example'), line.trim())
    }
  })

  it('rejects bad input with a MemidError that does not echo it', () => {
    const ed = sshPublicKeyLine(pairs.ed25519.publicKey)
    const [, b64] = ed.split(' ')
    const blob = Buffer.from(b64 as string, 'base64')
    const cases: [string, RegExp][] = [
      ['', /empty/],
      ['-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n', /private key/],
      ['ssh-ed25519', /not an OpenSSH public key line/],
      ['ssh-ed25519 !!!notbase64', /not an OpenSSH public key line/],
      [`ecdsa-sha2-nistp256 ${b64}`, /says "ecdsa-sha2-nistp256" but its data is "ssh-ed25519"/],
      [`ssh-ed25519 ${blob.subarray(0, blob.length - 3).toString('base64')}`, /truncated/],
      [`ssh-ed25519 ${Buffer.concat([blob, Buffer.of(0)]).toString('base64')}`, /trailing/],
      [`ssh-dss ${Buffer.from('\x00\x00\x00\x07ssh-dss\x00\x00\x00\x00', 'latin1').toString('base64')}`, /unsupported SSH key type "ssh-dss"/],
      [sshCertificateLine(cert(pairs.ed25519.publicKey, pairs.ed25519.privateKey)), /certificate, not a public key/],
    ]
    for (const [input, message] of cases) {
      assert.throws(() => parseSshPublicKeyLine(input), (err: unknown) => {
        assert.ok(err instanceof MemidError, `${input.slice(0, 30)}: ${String(err)}`)
        assert.equal(err.code, 'ERR_BAD_REQUEST')
        assert.match(err.message, message)
        assert.ok(!err.message.includes('AAAA'), 'the message never echoes key data')
        return true
      })
    }
  })

  it('refuses weak or unsupported key kinds', () => {
    const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' })
    assert.throws(() => sshPublicKeyBlob(p384.publicKey), /only P-256/)
    const rsa1024 = generateKeyPairSync('rsa', { modulusLength: 1024 })
    assert.throws(() => sshPublicKeyBlob(rsa1024.publicKey), /at least 2048 bits/)
  })
})

describe('OpenSSH certificates', () => {
  for (const caKind of kinds) {
    for (const kind of kinds) {
      it(`${kind} key signed by a ${caKind} CA is what ssh-keygen -L shows`, async () => {
        const blob = cert(pairs[kind].publicKey, pairs[caKind].privateKey, {
          criticalOptions: { 'force-command': '/usr/bin/true', 'source-address': '127.0.0.1/32' },
        })
        const line = sshCertificateLine(blob, 'memid')
        const out = await run(keygen, ['-L', '-f', file(`${kind}-by-${caKind}-cert.pub`, `${line}\n`)])
        assert.equal(out.code, 0, out.stderr)
        assert.match(out.stdout, new RegExp(`Type: ${expectedType[kind]}-cert-v01@openssh.com user certificate`))
        assert.match(out.stdout, /Key ID: "bot=ci instance=1f0c"/)
        assert.match(out.stdout, /Serial: 18446744073709551615/)
        assert.match(out.stdout, /Principals: \n\s+deploy\n\s+ops\n/)
        assert.match(out.stdout, /Critical Options: \n\s+force-command \/usr\/bin\/true\n\s+source-address 127.0.0.1\/32\n/)
        assert.match(out.stdout, /Extensions: \n\s+permit-port-forwarding\n\s+permit-pty\n/)
        assert.ok(out.stdout.includes(sshFingerprint(sshPublicKeyBlob(pairs[caKind].publicKey))), 'names the CA')

        const parsed = parseSshCertificateLine(line)
        assert.equal(parsed.type, `${expectedType[kind]}-cert-v01@openssh.com`)
        assert.equal(parsed.certType, 'user')
        assert.equal(parsed.serial, 18446744073709551615n)
        assert.deepEqual(parsed.principals, ['deploy', 'ops'])
        assert.deepEqual(parsed.extensions, { 'permit-port-forwarding': '', 'permit-pty': '' })
        assert.equal(parsed.criticalOptions['force-command'], '/usr/bin/true')
        assert.ok(parsed.publicKeyBlob.equals(sshPublicKeyBlob(pairs[kind].publicKey)))
        assert.ok(parsed.signatureKey.equals(sshPublicKeyBlob(pairs[caKind].publicKey)))
        assert.ok(verifySshCertificate(parsed, pairs[caKind].publicKey))
        const other = kinds.find((k) => k !== caKind) as Kind
        assert.equal(verifySshCertificate(blob, pairs[other].publicKey), false, 'another CA does not verify it')
      })
    }
  }

  it('issues host certificates and keeps validity to the second', async () => {
    const validAfter = new Date('2030-01-02T03:04:05Z')
    const validBefore = new Date('2030-01-03T03:04:05Z')
    const blob = cert(pairs.ed25519.publicKey, pairs.ed25519.privateKey, {
      type: 'host', principals: ['db1.example.com', '127.0.0.1'], extensions: {}, validAfter, validBefore, serial: 7n,
    })
    const out = await run(keygen, ['-L', '-f', file('host-cert.pub', `${sshCertificateLine(blob)}\n`)])
    assert.match(out.stdout, /host certificate/)
    assert.match(out.stdout, /Serial: 7\n/)
    const parsed = parseSshCertificateLine(sshCertificateLine(blob))
    assert.equal(parsed.certType, 'host')
    assert.equal(parsed.validAfter.toISOString(), validAfter.toISOString())
    assert.equal(parsed.validBefore.toISOString(), validBefore.toISOString())
    assert.deepEqual(parsed.extensions, {})
  })

  it('gives every certificate a fresh nonce and detects tampering', () => {
    const a = cert(pairs.ed25519.publicKey, pairs.ed25519.privateKey)
    const b = cert(pairs.ed25519.publicKey, pairs.ed25519.privateKey)
    assert.ok(!a.equals(b))
    const tampered = Buffer.from(a)
    const at = tampered.indexOf('deploy')
    tampered.write('root!!', at)
    assert.equal(verifySshCertificate(tampered, pairs.ed25519.publicKey), false)
    assert.ok(verifySshCertificate(a, pairs.ed25519.publicKey))
  })

  it('rejects truncated or garbled certificates with a MemidError', () => {
    const blob = cert(pairs.ecdsa.publicKey, pairs.ed25519.privateKey)
    for (let n = 0; n < blob.length; n += 7) {
      const line = `ecdsa-sha2-nistp256-cert-v01@openssh.com ${blob.subarray(0, n).toString('base64') || 'AAAA'}`
      assert.throws(() => parseSshCertificateLine(line), MemidError)
    }
    assert.throws(() => parseSshCertificateLine(sshPublicKeyLine(pairs.ed25519.publicKey)), /plain public key/)
  })

  it('validates its own inputs', () => {
    assert.throws(() => cert(pairs.ed25519.publicKey, pairs.ed25519.privateKey, { serial: -1n }), TypeError)
    assert.throws(() => cert(pairs.ed25519.publicKey, pairs.ed25519.publicKey), /private key/)
    assert.throws(() => cert(pairs.ed25519.publicKey, pairs.ed25519.privateKey, { principals: ['a b'] }), /principals/)
    const t = new Date()
    assert.throws(() => cert(pairs.ed25519.publicKey, pairs.ed25519.privateKey, { validAfter: t, validBefore: t }), /later/)
  })
})

describe('SSH signatures', () => {
  const data = Buffer.from('session id and userauth request')

  for (const kind of kinds) {
    it(`${kind}: sshSign verifies with verifySshSignature`, () => {
      const sig = sshSign(pairs[kind].privateKey, data, 0)
      assert.ok(verifySshSignature(pairs[kind].publicKey, sig, data))
      assert.equal(verifySshSignature(pairs[kind].publicKey, sig, Buffer.from('other')), false)
    })
  }

  it('honours the RSA SHA-2 flags like OpenSSH ssh-agent', () => {
    const alg = (flags: number) => new SshReader(sshSign(pairs.rsa.privateKey, data, flags)).text()
    assert.equal(alg(0), 'ssh-rsa')
    assert.equal(alg(SSH_AGENT_RSA_SHA2_256), 'rsa-sha2-256')
    assert.equal(alg(SSH_AGENT_RSA_SHA2_512), 'rsa-sha2-512')
    assert.equal(alg(SSH_AGENT_RSA_SHA2_256 | SSH_AGENT_RSA_SHA2_512), 'rsa-sha2-256')
    for (const flags of [0, 2, 4]) assert.ok(verifySshSignature(pairs.rsa.publicKey, sshSign(pairs.rsa.privateKey, data, flags), data))
    assert.equal(new SshReader(sshSign(pairs.ed25519.privateKey, data, SSH_AGENT_RSA_SHA2_512)).text(), 'ssh-ed25519', 'flags only concern RSA')
  })

  it('an ECDSA signature carries r and s as two mpints; garbage never verifies', () => {
    const sig = sshSign(pairs.ecdsa.privateKey, data, 0)
    const r = new SshReader(sig)
    assert.equal(r.text(), 'ecdsa-sha2-nistp256')
    const inner = new SshReader(r.string())
    inner.mpint()
    inner.mpint()
    inner.end()
    assert.equal(verifySshSignature(pairs.ecdsa.publicKey, Buffer.from('garbage'), data), false)
  })
})
