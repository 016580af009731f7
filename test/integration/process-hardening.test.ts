/**
 * Issue 10 items 9 and 10: `memid start` and `memid auth start` cannot be made to open the
 * Node inspector (SIGUSR1, NODE_OPTIONS=--inspect) and run with a core-size limit of 0,
 * soft and hard, whatever limit they were started with.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { readFileSync, readdirSync, readlinkSync } from 'node:fs'
import https from 'node:https'
import path from 'node:path'
import { startAuth, startAgent, runMemid, tempDir, type AgentFixture, type AuthFixture } from '../fixtures/memid.ts'
import { AGENT_NODE_FLAGS, AUTH_NODE_FLAGS } from '../../src/core/gc.ts'

/** TCP ports the process `pid` itself listens on (its own socket fds matched against /proc/net/tcp*). */
function listeningPorts(pid: number): number[] {
  const inodes = new Set<string>()
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`))
      if (m) inodes.add(m[1] as string)
    } catch {
      // closed meanwhile
    }
  }
  const ports: number[] = []
  for (const table of ['tcp', 'tcp6']) {
    for (const line of readFileSync(`/proc/${pid}/net/${table}`, 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/)
      if (f.length < 10 || f[3] !== '0A' || !inodes.has(f[9] as string)) continue
      ports.push(parseInt((f[1] as string).split(':')[1] as string, 16))
    }
  }
  return ports.sort((a, b) => a - b)
}

function coreLimit(pid: number): string {
  const line = readFileSync(`/proc/${pid}/limits`, 'utf8').split('\n').find((l) => l.startsWith('Max core file size'))
  return (line ?? '').replace(/\s+/g, ' ').trim()
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

function getCas(addr: string): Promise<number> {
  const i = addr.lastIndexOf(':')
  return new Promise((resolve, reject) => {
    https.get({ host: addr.slice(0, i), port: Number(addr.slice(i + 1)), path: '/v1/cas', rejectUnauthorized: false }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
    }).on('error', reject)
  })
}

describe('no debugger, no core file', () => {
  let auth: AuthFixture
  let agent: AgentFixture
  let tmp: { dir: string; cleanup: () => void }
  let restoreLimit: string | undefined

  before(async () => {
    // Children inherit the runner's limits: start them with cores allowed (soft and hard
    // unlimited) so that only the processes themselves can bring the limit to 0.
    const was = coreLimit(process.pid).split(' ')
    restoreLimit = `--core=${was[4]}:${was[5]}`
    execFileSync('prlimit', ['--pid', String(process.pid), '--core=unlimited:unlimited'])
    tmp = tempDir('memid-harden-')
    auth = await startAuth()
    agent = startAgent({ auth, token: await auth.bot('harden'), dir: path.join(tmp.dir, 'agent') })
    await agent.ready
  })

  after(async () => {
    await agent?.stop()
    await auth?.stop()
    tmp?.cleanup()
    // The runner goes back to the limit it had.
    if (restoreLimit !== undefined) execFileSync('prlimit', ['--pid', String(process.pid), restoreLimit])
  })

  it('memid auth start and memid start run with a core-size limit of 0, soft and hard', () => {
    assert.match(coreLimit(process.pid), /unlimited unlimited/, 'the test runner allows cores')
    for (const pid of [auth.process.proc.pid as number, agent.process.proc.pid as number]) {
      assert.equal(coreLimit(pid), 'Max core file size 0 0 bytes', `pid ${pid}`)
      assert.ok(readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes('--disable-sigusr1'), `pid ${pid} runs node --disable-sigusr1`)
    }
  })

  it('memid start runs node with --expose-gc and a 2 MB young generation (a renewal\'s replaced keys and TLS contexts are freed within seconds, not at the next heap pressure); memid auth start with its heap growth bounded', () => {
    const argv = readFileSync(`/proc/${agent.process.proc.pid as number}/cmdline`, 'utf8').split('\0')
    for (const flag of AGENT_NODE_FLAGS) assert.ok(argv.includes(flag), `${flag} in ${argv.join(' ')}`)
    const authArgv = readFileSync(`/proc/${auth.process.proc.pid as number}/cmdline`, 'utf8').split('\0')
    for (const flag of AUTH_NODE_FLAGS) assert.ok(authArgv.includes(flag), `${flag} in ${authArgv.join(' ')}`)
    assert.ok(!authArgv.includes('--expose-gc'), 'not the agent\'s flags')
  })

  it('started under a core limit of 0 already (systemd LimitCORE=0), memid start keeps it and runs node --disable-sigusr1', async () => {
    const a = startAgent({ auth, token: await auth.bot('harden-limited'), dir: path.join(tmp.dir, 'agent-limited'), wrap: ['prlimit', '--core=0:0', '--'] })
    try {
      await a.ready
      const pid = a.process.proc.pid as number
      assert.equal(coreLimit(pid), 'Max core file size 0 0 bytes')
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
      assert.equal(argv[1], '--disable-sigusr1', argv.join(' '))
    } finally {
      await a.stop()
    }
  })

  it('SIGUSR1 opens no inspector (no new listening port, nothing on 9229) and both keep serving', async () => {
    const pids = [auth.process.proc.pid as number, agent.process.proc.pid as number]
    const before = pids.map(listeningPorts)
    for (const pid of pids) process.kill(pid, 'SIGUSR1')
    await new Promise((r) => setTimeout(r, 1500))
    for (const [i, pid] of pids.entries()) {
      assert.ok(alive(pid), `pid ${pid} survived SIGUSR1`)
      const now = listeningPorts(pid)
      assert.ok(!now.includes(9229), `pid ${pid} listens on 9229`)
      assert.deepEqual(now, before[i], `pid ${pid} opened a new listening port`)
    }
    assert.doesNotMatch(auth.process.stderr + agent.process.stderr, /Debugger listening/)
    assert.equal(await getCas(auth.addr), 200)
    const st = await agent.status()
    assert.equal(st.identity.status, 'valid')
    const kh = await agent.cli(['known-hosts'])
    assert.match(kh.stdout, /^@cert-authority \* ssh-/)
  })

  it('NODE_OPTIONS=--inspect: memid auth start refuses to start (exit 2, one line naming NODE_OPTIONS)', async () => {
    const r = await runMemid(['auth', 'start', '--data-dir', path.join(tmp.dir, 'auth2'), '--listen', '127.0.0.1:0'], { env: { NODE_OPTIONS: '--inspect' }, timeoutMs: 20_000 })
    assert.equal(r.code, 2, r.stderr)
    const ours = r.stderr.split('\n').filter((l) => l.startsWith('memid:'))
    assert.equal(ours.length, 1, r.stderr)
    assert.match(ours[0] as string, /NODE_OPTIONS/)
    assert.doesNotMatch(r.stderr, /auth service ready/)
  })

  it('NODE_OPTIONS=--inspect: memid start refuses to start before the token is read (exit 2, one line naming NODE_OPTIONS)', async () => {
    const token = await auth.bot('harden-inspect')
    const args = ['start', '--auth-server', auth.addr, '--ca-pin', auth.caPin, '--token-file', '-', '--control-socket', path.join(tmp.dir, 'c2', 'control.sock')]
    const r = await runMemid(args, { env: { NODE_OPTIONS: '--inspect' }, input: token, timeoutMs: 20_000 })
    assert.equal(r.code, 2, r.stderr)
    const ours = r.stderr.split('\n').filter((l) => l.startsWith('memid:'))
    assert.equal(ours.length, 1, r.stderr)
    assert.match(ours[0] as string, /NODE_OPTIONS/)
    // The refusal burnt nothing: the same token still joins.
    const again = startAgent({ auth, token, dir: path.join(tmp.dir, 'agent-again') })
    try {
      await again.ready
    } finally {
      await again.stop()
    }
  })
})
