/**
 * Issue 10 item 11: session binding works with host certificates (what the README tells
 * operators to run). Real ssh, real sshd serving a host certificate from
 * `memid auth sign-host`, on both hops of an `ssh -A` chain: the local login is bound and
 * signs; a signature asked for through the forwarded agent is refused.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { startAuth, startAgent, memidBin, tempDir, type AuthFixture, type AgentFixture } from '../fixtures/memid.ts'
import { startSshd, type Sshd } from '../fixtures/sshd.ts'
import { requireSshBinary, run, sshLogin } from '../fixtures/ssh-tools.ts'

describe('ssh-agent session-bind with sshd host certificates', () => {
  let auth: AuthFixture
  let agent: AgentFixture
  let sshd: Sshd
  let sock: string
  let tmp: { dir: string; cleanup: () => void } | undefined
  /** A personal key with a certificate that permits agent forwarding (memid's do not). */
  let personalKey: string

  const knownHostsCommand = () => `${memidBin[0]} ${memidBin[1]} known-hosts --control-socket ${agent.controlSocket}`
  const agentLines = (msg: string): Record<string, unknown>[] => agent.process.stderr.split('\n').flatMap((l) => {
    try {
      const rec = JSON.parse(l) as Record<string, unknown>
      return rec.msg === msg ? [rec] : []
    } catch {
      return []
    }
  })

  before(async () => {
    auth = await startAuth()
    const token = await auth.bot('hop', ['--logins', 'deploy'])
    const exported = await auth.cli(['auth', 'export', '--kind', 'ssh-user'])
    assert.equal(exported.code, 0, exported.stderr)
    tmp = tempDir('memid-ssh-bind-')
    const keygen = requireSshBinary('ssh-keygen')
    const personalCa = path.join(tmp.dir, 'personal_ca')
    personalKey = path.join(tmp.dir, 'personal_key')
    for (const f of [personalCa, personalKey]) assert.equal((await run(keygen, ['-q', '-t', 'ed25519', '-N', '', '-f', f])).code, 0)
    const signed = await run(keygen, ['-q', '-s', personalCa, '-I', 'personal', '-n', 'deploy', '-V', '+1h', `${personalKey}.pub`])
    assert.equal(signed.code, 0, signed.stderr)
    sshd = await startSshd({
      userCaLine: `${exported.stdout.trim()}\n${readFileSync(`${personalCa}.pub`, 'utf8').trim()}`,
      users: ['deploy'],
      async hostCertificate(_line, files) {
        const r = await auth.cli(['auth', 'sign-host', '--host', '127.0.0.1,localhost', '--public-key', files.publicKeyFile, '--out', files.outFile])
        assert.equal(r.code, 0, r.stderr)
        return undefined
      },
    })
    sock = path.join(tmp.dir, 'ssh', 'agent.sock')
    agent = startAgent({ auth, token, dir: path.join(tmp.dir, 'agent'), args: ['--ssh-agent', sock], env: { MEMID_LOG_LEVEL: 'debug' } })
    await agent.ready
  })

  after(async () => {
    await agent?.stop()
    await sshd?.stop()
    await auth?.stop()
    tmp?.cleanup()
  })

  it('an ordinary login to a host-certificate sshd is bound to its session and signs, with no bad host signature line', async () => {
    const r = await sshLogin({ agentSocket: sock, port: sshd.port, user: 'deploy', knownHostsCommand: knownHostsCommand() })
    assert.equal(r.code, 0, `${r.stderr}\n--- sshd ---\n${sshd.log().slice(-2000)}`)
    assert.equal(r.stdout.trim(), 'deploy')
    assert.doesNotMatch(agent.process.stderr, /bad host signature/)
    const binds = agentLines('ssh-agent connection bound to a session')
    assert.ok(binds.some((b) => b.forwarding === false), `no session-bind was accepted:\n${agent.process.stderr.slice(-3000)}`)
  })

  it('through ssh -A, a second hop (host certificate too) cannot get a signature from the forwarded agent', async () => {
    // The first hop logs in with a personal key whose certificate permits agent forwarding
    // and forwards the memid agent; the second hop runs there, as deploy, with only the
    // forwarded agent, to the same host-certificate sshd.
    const inner = [
      'ssh', '-F', '/dev/null', '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
      '-o', 'GlobalKnownHostsFile=/dev/null', '-o', 'IdentityFile=/nonexistent/memid-test-no-key', '-o', 'PreferredAuthentications=publickey',
      '-o', 'LogLevel=ERROR', '-p', String(sshd.port), 'deploy@127.0.0.1', 'whoami',
    ]
    const r = await sshLogin({ agentSocket: sock, port: sshd.port, user: 'deploy', knownHostsCommand: knownHostsCommand(), extraArgs: ['-A', '-o', 'IdentitiesOnly=yes', '-i', personalKey], command: inner, timeoutMs: 30_000 })
    assert.notEqual(r.stdout.trim(), 'deploy', 'the second hop logged in with the bot identity through the forwarded agent')
    assert.match(r.stderr, /Permission denied/)
    assert.ok(agentLines('refused to sign on a forwarded agent connection: the memid identity stays on this machine').length > 0,
      `the agent did not refuse a forwarded signature:\n${agent.process.stderr.slice(-3000)}`)
    assert.ok(agentLines('ssh-agent connection bound to a session').some((b) => b.forwarding === true))
    assert.doesNotMatch(agent.process.stderr, /bad host signature/)
  })
})
