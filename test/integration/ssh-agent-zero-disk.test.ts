/**
 * Invariant 1 for the SSH agent: an agent that joins, serves ssh-add and a real ssh login
 * through its agent socket, renews its SSH certificate several times and shuts down,
 * traced with `strace -f`, opens no file for writing and creates none other than its
 * unix sockets (and their 0700 directories).
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { accessSync, constants, readFileSync } from 'node:fs'
import path from 'node:path'
import { startAuth, startAgent, eventually, tempDir, type AuthFixture, type AgentFixture } from '../fixtures/memid.ts'
import { startSshd, type Sshd } from '../fixtures/sshd.ts'
import { sshAdd, sshLogin } from '../fixtures/ssh-tools.ts'

function requireStrace(): string {
  try {
    accessSync('/usr/bin/strace', constants.X_OK)
    return '/usr/bin/strace'
  } catch {
    throw new Error('strace is not installed; run: apt-get install -y strace')
  }
}

/** The traced agent's pid: strace's only child. */
function childOf(pid: number): number {
  const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean)
  if (kids.length !== 1) throw new Error(`expected one child of strace (${pid}), found: ${kids.join(' ') || 'none'}`)
  return Number(kids[0])
}

const WRITE_FLAGS = /O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND/
/** Character devices any Node process may open read-write; they are not files on disk. */
const DEVICES = new Set(['/dev/null', '/dev/tty', '/dev/urandom', '/dev/random'])

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
      wrap: [strace, '-f', '-qq', '-o', trace, '-e', 'trace=%file,%desc,bind'],
    })
    await agent.ready
  })

  after(async () => {
    if (agent && agent.process.proc.exitCode === null) {
      try {
        process.kill(childOf(agent.process.proc.pid as number), 'SIGKILL')
      } catch {
        // already gone
      }
    }
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

    process.kill(childOf(agent.process.proc.pid as number), 'SIGTERM')
    assert.equal(await agent.process.exited, 0, 'agent (under strace) exits 0 on SIGTERM')

    const lines = readFileSync(trace, 'utf8').split('\n')
    const offending: string[] = []
    const socketDirs = new Set([path.dirname(sock), path.dirname(agent.controlSocket)])
    for (const line of lines) {
      if (/ = -1 /.test(line) || line.includes('<unfinished') || line.includes('resumed>')) continue
      const m = /^\d+\s+(\w+)\((.*)\)\s+=\s+\d+/.exec(line)
      if (!m) continue
      const [, call, argText] = m as unknown as [string, string, string]
      const file = /"([^"]*)"/.exec(argText)?.[1] ?? ''
      if ((call === 'open' || call === 'openat' || call === 'openat2') && WRITE_FLAGS.test(argText) && !DEVICES.has(file)) offending.push(line)
      else if (call === 'creat' || call.startsWith('rename') || call.startsWith('link') || call.startsWith('symlink') || call === 'truncate') offending.push(line)
      else if ((call === 'mkdir' || call === 'mkdirat') && ![...socketDirs].some((d) => d === file || d.startsWith(`${file}/`))) offending.push(line)
      else if (call === 'mknod' || call === 'mknodat') offending.push(line)
    }
    assert.deepEqual(offending, [], `the agent wrote to disk:\n${offending.join('\n')}`)
    assert.ok(lines.some((l) => /bind\(\d+, \{sa_family=AF_UNIX, sun_path="[^"]*agent\.sock"\}/.test(l)), 'the trace saw the agent socket bound')
  })
})
