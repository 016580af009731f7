/**
 * Issue 4, end to end: a real `memid auth start`, a real `memid start --ssh-agent` joined
 * to it, a real OpenSSH sshd trusting `memid auth export --kind ssh-user` and presenting
 * a host certificate from `memid auth sign-host`, and the real `ssh` client with
 * `SSH_AUTH_SOCK` and `KnownHostsCommand="memid known-hosts"`: no key, certificate or
 * known_hosts file on the client side.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import path from 'node:path'
import { startAuth, startAgent, eventually, memidBin, tempDir, type AuthFixture, type AgentFixture } from '../fixtures/memid.ts'
import { startSshd, type Sshd } from '../fixtures/sshd.ts'
import { sshAdd, sshLogin } from '../fixtures/ssh-tools.ts'
import { agentFrame, RawAgentClient, sshStr, u32 } from '../fixtures/ssh-agent-client.ts'
import { parseSshCertificateLine } from '../../src/pki/openssh.ts'

/** Short enough that renewals and expiry happen within the test, long enough for slow CI. */
const TTL = '10s'
const RENEWAL = '3s'

describe('ssh through the memid agent, end to end', () => {
  let auth: AuthFixture
  let agent: AgentFixture
  let sshd: Sshd
  let sock: string
  let tmp: { dir: string; cleanup: () => void } | undefined

  const knownHostsCommand = () => `${memidBin[0]} ${memidBin[1]} known-hosts --control-socket ${agent.controlSocket}`
  const login = (user = 'deploy') => sshLogin({ agentSocket: sock, port: sshd.port, user, knownHostsCommand: knownHostsCommand() })
  /** Where the agent's and sshd's logs stand now, to read only what comes after. */
  const mark = () => ({ agent: agent.process.stderr.length, sshd: sshd.log().length })
  /** Serials of the SSH certificates the agent started serving after the mark, from its log. */
  const servedSince = (m: { agent: number }) => agent.process.stderr.slice(m.agent).split('\n')
    .filter((l) => l.includes('ssh agent serving a new certificate'))
    .map((l) => /serial"?[:=]"?(\d+)/.exec(l)?.[1]).filter((x): x is string => x !== undefined)
  /** The serial of the certificate sshd accepted after the mark. */
  const acceptedSerial = (m: { sshd: number }) => eventually(async () =>
    /Accepted certificate ID "bot=ci instance=[0-9a-f-]+" \(serial (\d+)\)/.exec(sshd.log().slice(m.sshd))?.[1], 10_000, 'sshd accepting a certificate')
  const sshStatus = async () => ((await agent.status()).services as Record<string, any>[]).find((s) => s.name === 'ssh-agent') as Record<string, any>

  before(async () => {
    auth = await startAuth()
    const token = await auth.bot('ci', ['--logins', 'deploy'])
    const exported = await auth.cli(['auth', 'export', '--kind', 'ssh-user'])
    assert.equal(exported.code, 0, exported.stderr)
    sshd = await startSshd({
      userCaLine: exported.stdout,
      users: ['deploy', 'staging'],
      async hostCertificate(_line, files) {
        const r = await auth.cli(['auth', 'sign-host', '--host', '127.0.0.1,localhost', '--public-key', files.publicKeyFile, '--out', files.outFile])
        assert.equal(r.code, 0, r.stderr)
        return undefined
      },
    })
    tmp = tempDir('memid-ssh-e2e-')
    sock = path.join(tmp.dir, 'ssh', 'agent.sock')
    agent = startAgent({ auth, token, dir: path.join(tmp.dir, 'agent'), args: ['--certificate-ttl', TTL, '--renewal-interval', RENEWAL, '--ssh-agent', sock] })
    await agent.ready
  })

  after(async () => {
    await agent?.stop()
    await sshd?.stop()
    await auth?.stop()
    tmp?.cleanup()
  })

  it('ssh -o KnownHostsCommand="memid known-hosts" -o StrictHostKeyChecking=yes deploy@127.0.0.1 whoami prints deploy', async () => {
    // The agent renews every few seconds, more than once during a slow login: sshd must
    // have accepted the certificate served when the login began or one served since.
    const marks = mark()
    const before = (await sshStatus()).serial as string
    const r = await login()
    assert.equal(r.code, 0, `${r.stderr}\n--- sshd ---\n${sshd.log().slice(-2000)}`)
    assert.equal(r.stdout.trim(), 'deploy')
    const accepted = await acceptedSerial(marks)
    await eventually(() => [before, ...servedSince(marks)].includes(accepted), 10_000, `sshd accepted serial ${accepted}, which this agent did not serve`)
  })

  it('a login that is not in the bot\'s roles is refused', async () => {
    const r = await login('staging')
    assert.notEqual(r.code, 0)
    assert.match(r.stderr, /Permission denied/)
    await sshd.waitForLog(/name is not a listed principal/)
  })

  it('ssh-add -l and -L list the certificate; ssh-add -D is refused', async () => {
    const l = await sshAdd(sock, ['-l'])
    assert.equal(l.code, 0, l.stderr)
    assert.match(l.stdout, /bot=ci instance=\S+ \(ED25519-CERT\)/)
    const L = await sshAdd(sock, ['-L'])
    const certLine = L.stdout.split('\n').find((x) => x.includes('-cert-v01@openssh.com ')) as string
    const cert = parseSshCertificateLine(certLine)
    assert.deepEqual(cert.principals, ['deploy'])
    assert.deepEqual(Object.keys(cert.extensions).sort(), ['permit-port-forwarding', 'permit-pty'])
    const D = await sshAdd(sock, ['-D'])
    assert.notEqual(D.code, 0)
    assert.match(D.stderr, /Failed to remove all identities/)
    assert.match((await sshAdd(sock, ['-l'])).stdout, /ED25519-CERT/)
  })

  it('after a renewal a new login succeeds and sshd logs the new certificate serial', async () => {
    const start = mark()
    const before = (await sshStatus()).serial as string
    const renewed = await eventually(async () => {
      const s = (await sshStatus()).serial as string
      return s !== before ? s : undefined
    }, 20_000, 'an SSH certificate renewal')
    // The agent logs each certificate it starts serving, with its serial (the log may trail the status a little).
    await eventually(() => servedSince(start).includes(renewed), 10_000, 'the renewed serial in the agent log')
    const marks = mark()
    const r = await login()
    assert.equal(r.code, 0, r.stderr)
    // More renewals may land during the login: the renewed serial or a later one counts, the old one never.
    const accepted = await acceptedSerial(marks)
    assert.notEqual(accepted, before)
    await eventually(() => [renewed, ...servedSince(marks)].includes(accepted), 10_000, `sshd accepted serial ${accepted}, not one served since the renewal`)
  })

  it('random and truncated frames on the socket do not stop a real login', async () => {
    let stop = false
    const fuzz = Array.from({ length: 4 }, async () => {
      while (!stop) {
        const c = await RawAgentClient.connect(sock)
        const pick = Math.random()
        c.writeRaw(pick < 0.3 ? randomBytes(40) : pick < 0.6 ? u32(1 << 30) : agentFrame(13, sshStr(randomBytes(30)), u32(99)))
        await new Promise((r) => setTimeout(r, 5))
        c.close()
      }
    })
    const r = await login()
    stop = true
    await Promise.all(fuzz)
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.stdout.trim(), 'deploy')
  })

  it('with the auth service stopped past expiry, ssh fails and memid status says expired', async () => {
    await auth.stop()
    const st = await eventually(async () => {
      const s = await agent.status()
      return s.identity.status === 'expired' ? s : undefined
    }, 30_000, 'the identity to expire')
    assert.equal(st.identity.status, 'expired')
    const ssh = await eventually(async () => {
      const s = await sshStatus()
      return s.status !== 'ok' ? s : undefined
    }, 15_000, 'the ssh-agent service to fail closed')
    assert.match(String(ssh.reason), /expired/)
    const l = await sshAdd(sock, ['-l'])
    assert.match(l.stdout + l.stderr, /no identities/)
    const r = await login()
    assert.notEqual(r.code, 0)
    assert.match(r.stderr, /Permission denied/)
    const text = await agent.cli(['status'])
    assert.match(text.stdout + text.stderr, /expired/)
  })
})
