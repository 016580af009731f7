/**
 * Invariant 1 for the SSH agent: an agent that joins, serves ssh-add and a real ssh login
 * through its agent socket, renews its SSH certificate several times and shuts down,
 * traced with `strace -f`, opens no file for writing and creates none other than its
 * unix sockets (and their 0700 directories).
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { startAuth, startAgent, eventually, tempDir, type AuthFixture, type AgentFixture } from '../fixtures/memid.ts'
import { startSshd, type Sshd } from '../fixtures/sshd.ts'
import { sshAdd, sshLogin } from '../fixtures/ssh-tools.ts'
import { diskWrites, requireStrace, signalTraced, straceArgs, traceSawRead } from '../fixtures/zero-disk.ts'

describe('zero disk: an agent serving SSH writes nothing', () => {
  const strace = requireStrace()
  let auth: AuthFixture
  let agent: AgentFixture
  let sshd: Sshd
  let tmp: { dir: string; cleanup: () => void }
  let trace: string
  let sock: string

  before(async () => {
    tmp = tempDir('memid-ssh-strace-')
    trace = path.join(tmp.dir, 'strace.txt')
    sock = path.join(tmp.dir, 'ssh', 'agent.sock')
    auth = await startAuth()
    const token = await auth.bot('ci', ['--logins', 'deploy'])
    const exported = await auth.cli(['auth', 'export', '--kind', 'ssh-user'])
    sshd = await startSshd({
      userCaLine: exported.stdout,
      async hostCertificate(_line, files) {
        const r = await auth.cli(['auth', 'sign-host', '--host', '127.0.0.1', '--public-key', files.publicKeyFile, '--out', files.outFile])
        assert.equal(r.code, 0, r.stderr)
        return undefined
      },
    })
    agent = startAgent({
      auth, token, dir: path.join(tmp.dir, 'agent'),
      args: ['--certificate-ttl', '6s', '--renewal-interval', '2s', '--ssh-agent', sock],
      wrap: straceArgs(strace, trace),
    })
    await agent.ready
  })

  after(async () => {
    if (agent) signalTraced(agent.process.proc, 'SIGKILL')
    await agent?.stop()
    await sshd?.stop()
    await auth?.stop()
    tmp?.cleanup()
  })

  it('join, ssh-add, a real ssh login, three renewals and SIGTERM leave no file written', async () => {
    const knownHostsCommand = `${process.execPath} ${path.resolve('src/cli/main.ts')} known-hosts --control-socket ${agent.controlSocket}`
    const first = ((await agent.status()).services as Record<string, any>[]).find((s) => s.name === 'ssh-agent')?.serial as string
    const serials = new Set([first])
    await eventually(async () => {
      const s = ((await agent.status()).services as Record<string, any>[]).find((x) => x.name === 'ssh-agent')?.serial as string
      serials.add(s)
      return serials.size >= 4
    }, 30_000, 'three SSH certificate renewals')
    assert.match((await sshAdd(sock, ['-l'])).stdout, /ED25519-CERT/)
    const r = await sshLogin({ agentSocket: sock, port: sshd.port, user: 'deploy', knownHostsCommand })
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.stdout.trim(), 'deploy')

    assert.ok(signalTraced(agent.process.proc, 'SIGTERM'))
    assert.equal(await agent.process.exited, 0, 'agent (under strace) exits 0 on SIGTERM')

    assert.ok(traceSawRead(trace, path.join(agent.dir, 'token')), 'the trace captured the agent reading its token file (file opens are visible)')

    const offending = diskWrites(trace, [path.dirname(sock), path.dirname(agent.controlSocket)])
    assert.deepEqual(offending, [], `the agent wrote to disk:\n${offending.join('\n')}`)
    const lines = readFileSync(trace, 'utf8').split('\n')
    assert.ok(lines.some((l) => /bind\(\d+, \{sa_family=AF_UNIX, sun_path="[^"]*agent\.sock"\}/.test(l)), 'the trace saw the agent socket bound')
  })
})
