/**
 * The whole agent (`memid start` from dist/, as installed), against a `memid auth start`
 * on this machine (SQLite): how long from spawning the agent to its `agent ready` line
 * (Node start, module loading, the join, the first three service certificates, every
 * listener bound, worker threads included), and its resident memory with all three
 * services (ssh-agent, kube proxy, database tunnel) and `--workers 4` after 1,000 renewals
 * (SIGHUP: a new identity and three new service certificates each).
 *
 *   node bench/agent.ts [--renewals 1000] [--starts 5] [--workers 1,4] [--renewal-workers 4]
 *
 * Targets (issue 13): start → ready ≤ 500 ms, RSS ≤ 80 MB. No traffic goes through the
 * services here: the RSS is the agent's own cost (the data-plane benches load them).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { DIST_CLI as CLI, ensureDist, machineLine, median, withBenchDir } from './_common.ts'

const { values } = parseArgs({
  options: {
    renewals: { type: 'string', default: '1000' }, starts: { type: 'string', default: '5' },
    /** The thread counts whose start is timed, and the one the renewals run with. */
    workers: { type: 'string', default: '1,4' }, 'renewal-workers': { type: 'string', default: '4' },
  },
})
const RENEWALS = Number(values.renewals)
const STARTS = Number(values.starts)
const START_WORKERS = values.workers.split(',').map(Number)
const RENEWAL_WORKERS = Number(values['renewal-workers'])

/** A memid process whose JSON log lines (stderr) are read as they come. */
class Proc {
  readonly child: ChildProcess
  readonly spawnedAt = performance.timeOrigin + performance.now()
  readonly lines: Record<string, unknown>[] = []
  readonly #counts = new Map<unknown, number>()
  #waiters: { test: (r: Record<string, unknown>) => boolean; resolve: (r: Record<string, unknown>) => void }[] = []
  #err = ''

  constructor(args: string[]) {
    this.child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'ignore', 'pipe'] })
    let partial = ''
    this.child.stderr?.on('data', (d: Buffer) => {
      const text = partial + d.toString()
      this.#err = (this.#err + d.toString()).slice(-4000)
      const parts = text.split('\n')
      partial = parts.pop() ?? ''
      for (const line of parts) {
        let rec: Record<string, unknown>
        try {
          rec = JSON.parse(line) as Record<string, unknown>
        } catch {
          continue
        }
        this.lines.push(rec)
        this.#counts.set(rec.msg, (this.#counts.get(rec.msg) ?? 0) + 1)
        this.#waiters = this.#waiters.filter((w) => !(w.test(rec) && (w.resolve(rec), true)))
      }
    })
  }

  waitFor(test: (r: Record<string, unknown>) => boolean, timeoutMs = 60_000): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const onExit = (code: number | null) => reject(new Error(`exited ${code}; stderr:\n${this.#err}`))
      const timer = setTimeout(() => reject(new Error(`timed out; stderr:\n${this.#err}`)), timeoutMs)
      this.child.once('exit', onExit)
      this.#waiters.push({ test, resolve: (r) => (clearTimeout(timer), this.child.off('exit', onExit), resolve(r)) })
    })
  }

  count(msg: string): number {
    return this.#counts.get(msg) ?? 0
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return
    const exited = new Promise((r) => this.child.once('exit', r))
    this.child.kill('SIGTERM')
    await exited
  }
}

function memid(args: string[], dataDir: string): string {
  return execFileSync(process.execPath, [CLI, ...args, '--data-dir', dataDir], { encoding: 'utf8' })
}

/** VmRSS and VmHWM of a process, in MB. */
function memory(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0)
  return { rss: kb('VmRSS') / 1024, peak: kb('VmHWM') / 1024 }
}

/** CPU time a process has used so far (user + system), in ms: less sensitive to other load than wall time. */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ')
  // After the command name: state is field 3, utime 14 and stime 15 (1-based), in clock ticks.
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS
}
const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100

const loadavg = () => os.loadavg().map((l) => l.toFixed(1)).join(' ')

await withBenchDir('memid-bench-agent-', async (dir) => {
  ensureDist()
  const dataDir = path.join(dir, 'auth')
  const auth = new Proc(['auth', 'start', '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--workers', '1'])
  try {
    const ready = await auth.waitFor((r) => r.msg === 'auth service ready')
    const authAddr = String(ready.listen)
    const pin = String(ready.caPin)
    // The upstreams are never dialled here: issuing a certificate does not contact them.
    memid(['kube', 'add', 'prod', '--server', 'https://127.0.0.1:6443'], dataDir)
    memid(['dbs', 'add', 'orders', '--uri', 'postgres://127.0.0.1:5432'], dataDir)
    memid(['roles', 'add', 'r', '--logins', 'deploy', '--kube-clusters', 'prod', '--kube-users', 'ci', '--databases', 'orders', '--db-users', 'app', '--db-names', 'orders'], dataDir)

    let n = 0
    const startAgent = (workers: number) => {
      const name = `b${++n}`
      const token = (JSON.parse(memid(['bots', 'add', name, '--roles', 'r', '--format', 'json'], dataDir)) as { token: { token: string } }).token.token
      const home = path.join(dir, name)
      mkdirSync(home, { mode: 0o700 })
      writeFileSync(path.join(home, 'token'), token, { mode: 0o600 })
      return new Proc([
        'start', '--auth-server', authAddr, '--ca-pin', pin, '--token-file', path.join(home, 'token'), '--workers', String(workers),
        '--control-socket', path.join(home, 'control.sock'), '--ssh-agent', path.join(home, 'agent.sock'),
        '--kube-proxy', '127.0.0.1:0=prod', '--db-tunnel', '127.0.0.1:0=orders/app/orders',
      ])
    }

    console.log(machineLine())
    console.log(`load average before: ${loadavg()}`)

    // start → ready: from spawn to the "agent ready" line's timestamp.
    for (const workers of START_WORKERS) {
      const times: number[] = []
      const cpu: number[] = []
      const rss: number[] = []
      for (let i = 0; i < STARTS; i++) {
        const agent = startAgent(workers)
        const rec = await agent.waitFor((r) => r.msg === 'agent ready')
        times.push(Number(rec.time) - agent.spawnedAt)
        cpu.push(cpuMs(agent.child.pid as number))
        await new Promise((r) => setTimeout(r, 500))
        rss.push(memory(agent.child.pid as number).rss)
        await agent.stop()
      }
      console.log(`start → ready, --workers ${workers}, three services: median ${median(times).toFixed(0)} ms (runs: ${times.map((t) => t.toFixed(0)).join(', ')}; target ≤ 500 ms); agent CPU to ready ${median(cpu).toFixed(0)} ms; RSS at ready ${median(rss).toFixed(1)} MB`)
    }

    // RSS after renewals.
    const agent = startAgent(RENEWAL_WORKERS)
    await agent.waitFor((r) => r.msg === 'agent ready')
    const pid = agent.child.pid as number
    await new Promise((r) => setTimeout(r, 1_000))
    const atReady = memory(pid)
    console.log(`RSS at ready, --workers ${RENEWAL_WORKERS}: ${atReady.rss.toFixed(1)} MB`)
    const t0 = performance.now()
    for (let i = 1; i <= RENEWALS; i++) {
      const issued = agent.count('service certificate issued')
      agent.child.kill('SIGHUP')
      // One renewal: a new identity, then the three service certificates on it.
      const done = () => agent.count('identity renewed') >= i && agent.count('service certificate issued') >= issued + 3
      if (!done()) await agent.waitFor(done)
      if (i % 250 === 0) console.log(`  ${i} renewals, RSS ${memory(pid).rss.toFixed(1)} MB, ${(i / ((performance.now() - t0) / 1000)).toFixed(0)} renewals/s`)
    }
    // Settled: the agent collects 2 s after credentials stop changing, then trims the C heap 1 s later.
    await new Promise((r) => setTimeout(r, 5_000))
    const after = memory(pid)
    console.log(`RSS after ${RENEWALS} renewals, three services, --workers ${RENEWAL_WORKERS}: ${after.rss.toFixed(1)} MB (peak ${after.peak.toFixed(1)} MB; target ≤ 80 MB)`)
    console.log(`load average after: ${loadavg()}`)
    await agent.stop()
  } finally {
    await auth.stop()
  }
})
