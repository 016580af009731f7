import { describe, it, mock } from 'node:test'
import assert from 'node:assert/strict'
import crypto, { createPublicKey, generateKeyPairSync } from 'node:crypto'
import { syncBuiltinESMExports } from 'node:module'
import { issueSshCertificate, randomSshSerial } from '../../../src/auth/issue-ssh.ts'
import { signHostCertificate } from '../../../src/auth/sign-host.ts'
import type { IssueContext } from '../../../src/auth/issuer.ts'
import type { CaSet } from '../../../src/auth/cas.ts'
import type { Role } from '../../../src/storage/store.ts'
import { MemidError } from '../../../src/core/errors.ts'
import { parseSshCertificateLine, sshPublicKeyBlob, sshPublicKeyLine, verifySshCertificate } from '../../../src/pki/openssh.ts'
import { leafKeyObject } from '../../../src/pki/x509.ts'

const userCa = generateKeyPairSync('ed25519')
const hostCa = generateKeyPairSync('ed25519')

function role(name: string, logins: string[]): Role {
  return { name, logins, kubeClusters: [], kubeUsers: [], kubeGroups: [], databases: [], dbUsers: [], dbNames: [], createdAt: '' }
}

function ctx(roles: Role[], now = Date.now()): IssueContext {
  const agentKey = generateKeyPairSync('ed25519')
  // Only the ssh-user CA is used by SSH issuance; the X.509 CAs are left out on purpose.
  const cas = { clusterName: 'test', sshUser: { key: userCa.privateKey, publicKey: userCa.publicKey, publicLine: sshPublicKeyLine(userCa.publicKey) } } as unknown as CaSet
  return {
    bot: { id: '00000000-0000-4000-8000-000000000001', name: 'ci', roles: roles.map((r) => r.name), maxTtlMs: 3_600_000, createdAt: '' },
    instance: { id: '6f1c9a8e-1111-4222-8333-444455556666' } as IssueContext['instance'],
    roles, cas, store: undefined as unknown as IssueContext['store'],
    publicKey: createPublicKey(agentKey.privateKey), ttlMs: 1_800_000, now,
  }
}

describe('issueSshCertificate', () => {
  it('certifies the agent key for all the roles\' logins, backdated a minute, with pty and port forwarding', async () => {
    const now = Date.parse('2030-05-06T07:08:09.500Z')
    const c = ctx([role('a', ['deploy']), role('b', ['ops', 'deploy'])], now)
    const res = await issueSshCertificate(c, { publicKey: 'unused here' })
    const cert = parseSshCertificateLine(res.certificate)
    assert.deepEqual(cert.principals, ['deploy', 'ops'])
    assert.deepEqual(res.principals, ['deploy', 'ops'])
    assert.equal(cert.certType, 'user')
    assert.equal(cert.keyId, 'bot=ci instance=6f1c9a8e-1111-4222-8333-444455556666')
    assert.equal(res.keyId, cert.keyId)
    assert.equal(res.serial, cert.serial.toString())
    assert.deepEqual(cert.extensions, { 'permit-port-forwarding': '', 'permit-pty': '' })
    assert.deepEqual(cert.criticalOptions, {})
    assert.equal(cert.validAfter.toISOString(), '2030-05-06T07:07:09.000Z')
    assert.equal(cert.validBefore.toISOString(), '2030-05-06T07:38:09.000Z')
    assert.equal(res.notBefore, cert.validAfter.toISOString())
    assert.equal(res.notAfter, cert.validBefore.toISOString())
    assert.ok(cert.publicKeyBlob.equals(sshPublicKeyBlob(leafKeyObject(c.publicKey))))
    assert.ok(verifySshCertificate(cert, userCa.publicKey))
  })

  it('issues a requested subset and refuses logins outside the roles', async () => {
    const c = ctx([role('a', ['deploy', 'ops'])])
    assert.deepEqual((await issueSshCertificate(c, { publicKey: '', principals: ['ops'] })).principals, ['ops'])
    await assert.rejects(issueSshCertificate(c, { publicKey: '', principals: ['deploy', 'root'] }), (err: unknown) => {
      assert.ok(err instanceof MemidError)
      assert.equal(err.code, 'ERR_ACCESS_DENIED')
      assert.match(err.message, /SSH login "root" not granted to bot "ci"; allowed: deploy, ops/)
      return true
    })
    await assert.rejects(issueSshCertificate(ctx([role('k', [])]), { publicKey: '' }), /has no SSH logins/)
  })

  it('names every login outside the roles, and refuses an empty list of principals', async () => {
    const c = ctx([role('a', ['deploy', 'ops'])])
    await assert.rejects(issueSshCertificate(c, { publicKey: '', principals: ['root', 'deploy', 'admin'] }),
      (err: unknown) => err instanceof MemidError && err.code === 'ERR_ACCESS_DENIED' && /^SSH logins "root", "admin" not granted to bot "ci"/.test(err.message))
    await assert.rejects(issueSshCertificate(c, { publicKey: '', principals: [] }),
      (err: unknown) => err instanceof MemidError && err.code === 'ERR_ACCESS_DENIED' && err.message === 'principals: name at least one login, or leave it out for all of them')
  })

  it('certifies the requested logins once each, sorted, in a line commented memid:BOT', async () => {
    const res = await issueSshCertificate(ctx([role('a', ['deploy', 'ops', 'web'])]), { publicKey: '', principals: ['web', 'deploy', 'web'] })
    assert.deepEqual(res.principals, ['deploy', 'web'])
    assert.deepEqual(parseSshCertificateLine(res.certificate).principals, ['deploy', 'web'])
    assert.ok(res.certificate.endsWith(' memid:ci'), res.certificate.slice(-20))
  })

  it('a serial is never 0 (0 means "no serial" to sshd\'s revocation lists) and fits 63 bits', () => {
    const spy = mock.method(crypto, 'randomBytes', (n: number) => Buffer.alloc(n))
    syncBuiltinESMExports()
    try {
      assert.equal(randomSshSerial(), 1n)
    } finally {
      spy.mock.restore()
      syncBuiltinESMExports()
    }
    for (let i = 0; i < 200; i++) {
      const s = randomSshSerial()
      assert.ok(s > 0n && s < 1n << 63n, String(s))
    }
  })

  it('gives every certificate its own serial', async () => {
    const c = ctx([role('a', ['deploy'])])
    const serials = new Set<string>()
    for (let i = 0; i < 50; i++) serials.add((await issueSshCertificate(c, { publicKey: '' })).serial)
    assert.equal(serials.size, 50)
  })
})

describe('signHostCertificate', () => {
  it('returns a host certificate line for the given names from the ssh-host CA', () => {
    const host = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const line = signHostCertificate({ caKey: hostCa.privateKey, hosts: ['db1.example.com', '10.0.0.5'], publicKeyLine: sshPublicKeyLine(host.publicKey, 'root@db1'), ttlMs: 720 * 3_600_000 })
    const cert = parseSshCertificateLine(line)
    assert.equal(cert.certType, 'host')
    assert.equal(cert.type, 'ecdsa-sha2-nistp256-cert-v01@openssh.com')
    assert.deepEqual(cert.principals, ['db1.example.com', '10.0.0.5'])
    assert.ok(verifySshCertificate(cert, hostCa.publicKey))
    assert.ok(Math.abs(cert.validBefore.getTime() - Date.now() - 720 * 3_600_000) < 2000)
  })

  it('refuses missing hosts and bad key files with clear errors', () => {
    const line = sshPublicKeyLine(generateKeyPairSync('ed25519').publicKey)
    assert.throws(() => signHostCertificate({ caKey: hostCa.privateKey, hosts: [], publicKeyLine: line, ttlMs: 1000 }), /--host/)
    assert.throws(() => signHostCertificate({ caKey: hostCa.privateKey, hosts: ['a b'], publicKeyLine: line, ttlMs: 1000 }), /not a host name/)
    assert.throws(() => signHostCertificate({ caKey: hostCa.privateKey, hosts: ['h'], publicKeyLine: 'garbage', ttlMs: 1000 }), /not an OpenSSH public key/)
  })
})
