/**
 * The SSH agent service driven by the real OpenSSH tools: `ssh-add`, and `ssh` logging in
 * to a real `sshd` that trusts only the test's ssh-user CA and presents a host
 * certificate from the test's ssh-host CA. Credentials are real certificates set on a
 * real CredentialSource, as the renewal loop does.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { Registry } from 'prom-client'
import { CredentialSource, type SshCredential } from '../../src/credentials/credentials.ts'
import { systemClock } from '../../src/core/clock.ts'
import { createLogger } from '../../src/core/log.ts'
import { parseSshCertificateLine, sshPublicKeyLine } from '../../src/pki/openssh.ts'
import { signHostCertificate } from '../../src/auth/sign-host.ts'
import { createSshAgentService } from '../../src/services/ssh-agent/index.ts'
import type { Service } from '../../src/services/service.ts'
import { startSshd, type Sshd } from '../fixtures/sshd.ts'
import { sshAdd, sshLogin } from '../fixtures/ssh-tools.ts'
import { issueTestSshCredential } from '../fixtures/ssh-credentials.ts'
import { agentFrame, parseIdentities, RawAgentClient, sshStr, u32 } from '../fixtures/ssh-agent-client.ts'

const userCa = generateKeyPairSync('ed25519')
const hostCa = generateKeyPairSync('ed25519')

describe('ssh-agent service with real ssh, ssh-add and sshd', () => {
  let dir: string
  let sock: string
  let knownHosts: string
  let sshd: Sshd
  let svc: Service
  const logs: string[] = []
  const source = new CredentialSource<SshCredential>('ssh')
  const metrics = new Registry()
  let first: SshCredential

  const login = (user = 'deploy', command?: string[]) => sshLogin({ agentSocket: sock, port: sshd.port, user, knownHostsFile: knownHosts, ...(command ? { command } : {}) })

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'memid-ssh-it-'))
    sock = path.join(dir, 'agent', 'agent.sock')
    knownHosts = path.join(dir, 'known_hosts')
    writeFileSync(knownHosts, `@cert-authority * ${sshPublicKeyLine(hostCa.publicKey, 'memid test ssh-host CA')}\n`)
    sshd = await startSshd({
      userCaLine: sshPublicKeyLine(userCa.publicKey, 'memid test ssh-user CA'),
      users: ['deploy', 'staging'],
      hostCertificate: (line) => signHostCertificate({ caKey: hostCa.privateKey, hosts: ['127.0.0.1', 'localhost'], publicKeyLine: line, ttlMs: 3_600_000 }),
    })
    first = issueTestSshCredential({ caKey: userCa.privateKey, principals: ['deploy'] })
    source.set(first)
    svc = createSshAgentService({ path: sock }, {
      credentials: source,
      logger: createLogger({ level: 'debug', sink: { write: (l) => void logs.push(l) } }),
      clock: systemClock,
      metrics,
    })
    await svc.start()
  })

  after(async () => {
    await svc?.stop(1000)
    await sshd?.stop()
    rmSync(dir, { recursive: true, force: true })
  })

  it('ssh-add -l and -L list the certificate', async () => {
    const l = await sshAdd(sock, ['-l'])
    assert.equal(l.code, 0, l.stderr)
    assert.match(l.stdout, /^256 SHA256:\S+ bot=test instance=\S+ \(ED25519-CERT\)$/m)
    const L = await sshAdd(sock, ['-L'])
    assert.equal(L.code, 0, L.stderr)
    const certLine = L.stdout.split('\n').find((x) => x.startsWith('ssh-ed25519-cert-v01@openssh.com ')) as string
    assert.ok(certLine, L.stdout)
    assert.ok(parseSshCertificateLine(certLine).blob.equals(first.certificateBlob))
  })

  it('ssh deploy@127.0.0.1 whoami prints deploy, and sshd logs the certificate serial', async () => {
    const r = await login()
    assert.equal(r.code, 0, `${r.stderr}\n${sshd.log()}`)
    assert.equal(r.stdout.trim(), 'deploy')
    await sshd.waitForLog(new RegExp(`Accepted certificate ID "bot=test instance=\\S+" \\(serial ${first.serial}\\)`))
  })

  it('a login that is not among the principals is refused', async () => {
    const r = await login('staging')
    assert.notEqual(r.code, 0)
    assert.match(r.stderr, /Permission denied/)
    await sshd.waitForLog(/name is not a listed principal/)
  })

  it('ssh-add -D is refused and changes nothing', async () => {
    const d = await sshAdd(sock, ['-D'])
    assert.notEqual(d.code, 0)
    assert.match(d.stderr, /Failed to remove all identities/)
    const l = await sshAdd(sock, ['-l'])
    assert.match(l.stdout, /ED25519-CERT/)
    assert.ok(logs.some((x) => x.includes('"request":"remove-all-identities"') && x.includes('read-only')))
    assert.ok(logs.some((x) => x.includes('"request":"remove-all-rsa-identities"')), 'the protocol-1 message ssh-add -D also sends is refused')
  })

  it('after a renewal new logins use the new certificate; open agent connections survive', async () => {
    const held = await RawAgentClient.connect(sock)
    const before = parseIdentities((await held.request(11)).payload)
    assert.ok(before[0]?.blob.equals(first.certificateBlob))

    const renewed = issueTestSshCredential({ caKey: userCa.privateKey, principals: ['deploy'] })
    source.set(renewed)
    const r = await login()
    assert.equal(r.code, 0, r.stderr)
    await sshd.waitForLog(new RegExp(`\\(serial ${renewed.serial}\\)`))

    const afterIds = parseIdentities((await held.request(11)).payload)
    assert.ok(afterIds[0]?.blob.equals(renewed.certificateBlob), 'the open connection now lists the new certificate')
    held.close()
    const text = await metrics.metrics()
    assert.match(text, /memid_ssh_agent_sign_requests_total\{result="ok"\} [1-9]/)
  })

  it('fails closed once the certificate expired: no identities, ssh fails, health says why', async () => {
    const short = issueTestSshCredential({ caKey: userCa.privateKey, principals: ['deploy'], ttlMs: 2500 })
    source.set(short)
    source.fail(new Error('auth service unreachable'))
    await new Promise((r) => setTimeout(r, Math.max(0, short.notAfter.getTime() - Date.now()) + 100))
    const l = await sshAdd(sock, ['-l'])
    assert.notEqual(l.code, 0)
    assert.match(l.stdout + l.stderr, /no identities/)
    const r = await login()
    assert.notEqual(r.code, 0)
    assert.match(r.stderr, /Permission denied/)
    const h = svc.health()
    assert.equal(h.status, 'failed')
    assert.match(h.reason ?? '', /expired at .*auth service unreachable/)
    assert.ok(logs.some((x) => x.includes('failing closed')))

    const raw = await RawAgentClient.connect(sock)
    const sign = await raw.request(13, sshStr(short.certificateBlob), sshStr('data'), u32(0))
    assert.equal(sign.type, 5, 'SIGN_REQUEST with the expired certificate gets FAILURE')
    raw.close()

    source.set(issueTestSshCredential({ caKey: userCa.privateKey, principals: ['deploy'] }))
    assert.equal(svc.health().status, 'ok')
    assert.equal((await login()).code, 0)
  })

  it('random, truncated and oversized frames on other connections do not stop a real login', async () => {
    const certBlob = (source.current()).certificateBlob
    const junk = (): Buffer => {
      switch (Math.floor(Math.random() * 7)) {
        case 0: return randomBytes(1 + Math.floor(Math.random() * 64))
        case 1: return Buffer.concat([u32(0x7fffffff), randomBytes(32)])
        case 2: return u32(256 * 1024 + 1)
        case 3: return agentFrame(13, sshStr(certBlob), u32(0xffffff))
        case 4: return agentFrame(13, u32(5))
        case 5: return agentFrame(27, sshStr('session-bind@openssh.com'), randomBytes(20))
        default: return agentFrame(Math.floor(Math.random() * 256), randomBytes(Math.floor(Math.random() * 100)))
      }
    }
    let stop = false
    const fuzzers = Array.from({ length: 8 }, async () => {
      let rounds = 0
      while (!stop) {
        // A full accept backlog (EAGAIN) is the load generator outrunning the kernel, not
        // the agent failing: back off and try again; any other error fails the test.
        const c = await RawAgentClient.connect(sock).catch((err: NodeJS.ErrnoException) => {
          if (err.code === 'EAGAIN') return undefined
          throw err
        })
        if (c === undefined) {
          await new Promise((r) => setTimeout(r, 5))
          continue
        }
        c.writeRaw(junk())
        if (Math.random() < 0.5) c.writeRaw(junk().subarray(0, 3))
        await new Promise((r) => setTimeout(r, 2))
        c.close()
        rounds++
      }
      return rounds
    })
    const logins = []
    for (let i = 0; i < 3; i++) logins.push(await login())
    stop = true
    const rounds = (await Promise.all(fuzzers)).reduce((a, b) => a + b, 0)
    for (const r of logins) {
      assert.equal(r.code, 0, r.stderr)
      assert.equal(r.stdout.trim(), 'deploy')
    }
    assert.ok(rounds > 20, `fuzzers ran ${rounds} rounds`)
    assert.equal(svc.health().status, 'ok')
    assert.match(await metrics.metrics(), /memid_ssh_agent_protocol_errors_total\{reason="(oversized|malformed)"\} [1-9]/)
  })
})
