/**
 * The auth service under load: joins/s (keep-alive, and "as a runner": a new agent's
 * bootstrap and join, two new connections), renewals/s (a new key and a new mutual-TLS
 * connection each; "as an agent": two, as a real agent renews), heartbeats/s and database certificate
 * issues/s (keep-alive), at concurrency 1/8/32/128, with p50/p99 latency and the auth
 * servers' CPU milliseconds per operation (from /proc, each server runs in its own process),
 * on SQLite and on PostgreSQL 15 with 1 and 3 auth replicas sharing one database.
 *
 *   npm run bench -- auth                       SQLite, then PostgreSQL with 1 and 3 replicas
 *   npm run bench -- auth --storage postgres --replicas 3 --seconds 5 --concurrency 8,32
 *   npm run bench -- auth --pg-url postgres://user:pw@host:5432/emptydb   (an existing server)
 *   npm run bench -- auth --scale 100000        the state-scale run (see below)
 *   --workers N                                 each server's API in N threads (default 1)
 *   --floor-seconds N                           the handshake floor's run per server (default 4; 0 skips it)
 *   --clients node,native                       the load clients (default both; see below)
 *
 * PostgreSQL: without --pg-url a throwaway PostgreSQL 15 cluster is started in a temp dir
 * (fsync and synchronous_commit on: a renewal is answered after its commit is durable), a
 * fresh database per configuration. Replicas are separate processes on their own ports; the
 * load is spread over them round-robin, one client per concurrent bot.
 *
 * Load clients: every row runs from this process with the agent's own client (Node's
 * https, what an agent sends). The Node client costs about what the server does per
 * keep-alive request, and it shares the two cores with the server, so the keep-alive rows
 * run a second time from a native client (bench/native/auth-load.c, compiled with cc and
 * OpenSSL; gcc and libssl-dev are installed if missing): the same bots, one mutual-TLS
 * connection and identity each, the same request bodies, with a fraction of the client's
 * CPU left on the cores. Those rows say "(native)".
 *
 * The state-scale run fills the store with N bot instances (bulk inserts in the store's
 * row format), then keeps bots renewing at the rate such a fleet renews at (N / 20 minutes,
 * the default renewal interval: 83/s for 100,000; --scale-rate R) while it lists every
 * instance twice — through the
 * CLI (`memid get bot_instance --format json`, every page) and through the admin API —
 * and reports the renewal p99 and the worst event-loop delay of the server in each window,
 * and the server's RSS.
 *
 * The machine is usually shared: the foreign load seen during each run is printed next to it.
 */
import { execFile, spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import type https from 'node:https'
import { cpus, loadavg, tmpdir } from 'node:os'
import path from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { DatabaseSync } from 'node:sqlite'
import { parseArgs } from 'node:util'
import pg from 'pg'
import { AuthClient } from '../src/agent/auth-client.ts'
import { startAuthServer } from '../src/auth/server.ts'
import type { CreatedToken } from '../src/auth/admin.ts'
import { openStore } from '../src/storage/open.ts'
import { instanceData } from '../src/storage/rows.ts'
import type { BotInstance } from '../src/storage/store.ts'
import { silentLogger } from '../src/core/log.ts'
import { AUTH_NODE_FLAGS } from '../src/core/gc.ts'
import { DIST_CLI, ForeignLoad, askTokens, benchCa, benchLeaf, compileNative, cpuSeconds, ensureDist, ensurePackages, freePort, keyValues, machineLine, requireTool, startRole, waitForPort, withBenchDir, writePem, type Role } from './_common.ts'
import { serveFloor, type FloorMaterial } from './_floor.ts'
import { startBenchPostgres, type BenchPostgres } from './_postgres.ts'
import { heartbeat, join, newKey, renew, type TestIdentity } from '../test/helpers/identity.ts'

const { values } = parseArgs({
  options: {
    role: { type: 'string' },
    dir: { type: 'string' },
    store: { type: 'string' },
    setup: { type: 'boolean', default: false },
    seconds: { type: 'string', default: '3' },
    concurrency: { type: 'string', default: '1,8,32,128' },
    storage: { type: 'string', default: 'sqlite,postgres' },
    replicas: { type: 'string', default: '1,3' },
    'pg-url': { type: 'string' },
    scale: { type: 'string' },
    'scale-rate': { type: 'string' },
    'scale-bots': { type: 'string', default: '16' },
    workers: { type: 'string', default: '1' },
    'floor-seconds': { type: 'string', default: '4' },
    clients: { type: 'string', default: 'node,native' },
  },
})

/** Which load clients the throughput rows use: the agent's own (Node) and the native one (keep-alive rows only). */
const clientKinds = (values.clients as string).split(',').map((s) => s.trim())
/** What the bench's heartbeats say (test/helpers/identity.ts sends the same). */
const HEARTBEAT_BODY = JSON.stringify({ hostname: 'test', version: '0', os: 'linux', arch: 'x64', uptimeSeconds: 1, services: [] })

/**
 * One auth server (a replica): the store named by --store; with --setup, the bench's role,
 * database and bot. Answers the parent's messages: tokens, its event-loop delay.
 */
async function serve(): Promise<void> {
  const spec = values.store as string
  const store = await openStore(spec)
  const server = await startAuthServer({
    store, listen: '127.0.0.1:0', clusterName: 'bench', logger: silentLogger(), joinRate: 1e9, retention: false,
    adminSocket: path.join(values.dir as string, 'admin.sock'),
    // --workers N: the API in N threads (what `memid auth start` does by default, one per CPU).
    ...(Number(values.workers) > 1 ? { workers: { count: Number(values.workers), storage: spec, logFormat: 'json' as const } } : {}),
  })
  if (values.setup) {
    await server.admin.addRole({ name: 'r', databases: ['orders'], dbUsers: ['app'], dbNames: ['*'] })
    await server.admin.addResource('db', { name: 'orders', uri: 'postgres://127.0.0.1:5432' })
    await server.admin.addBot({ name: 'bench', roles: ['r'], maxTtl: '1h' })
  }
  // A normal exit on SIGTERM, so that MEMID_BENCH_CPU_PROF=DIR (--cpu-prof) writes its profile.
  process.once('SIGTERM', () => process.exit(0))
  // Sampled only in the state-scale run's windows (from 'reset' on): its 5 ms timer is 200
  // wake-ups a second that a real auth server does not have. Enabled from the start it cost
  // the idle server 16 ms of CPU a second, counted in the throughput rows' CPU per
  // operation (up to ~0.1 ms of a renewal at 167/s).
  const loop = monitorEventLoopDelay({ resolution: 5 })
  const turns = new LoopTurns()
  process.send?.({ addr: server.address, caPin: server.caPin })
  process.on('message', (m: { tokens?: number; loop?: 'reset' | 'read' }) => {
    void (async () => {
      if (m.tokens !== undefined) {
        const tokens: string[] = []
        for (let i = 0; i < m.tokens; i++) tokens.push(((await server.admin.addToken({ bot: 'bench', ttl: '1h' })) as CreatedToken).token)
        process.send?.({ tokens })
      } else if (m.loop === 'reset') {
        loop.enable()
        loop.reset()
        turns.start()
        process.send?.({ ok: true })
      } else if (m.loop === 'read') {
        const mem = process.memoryUsage()
        process.send?.({ maxMs: loop.max / 1e6, p99Ms: loop.percentile(99) / 1e6, ...turns.stop(), heapMb: mem.heapTotal / 2 ** 20, heapUsedMb: mem.heapUsed / 2 ** 20, externalMb: mem.external / 2 ** 20 })
      }
    })()
  })
}

/**
 * How long the event loop was held by work, in CPU time: the thread's time on CPU
 * (/proc/thread-self/schedstat, ns) between two ticks of a 2 ms timer. On a shared 2-core
 * machine the wall-clock loop delay mostly measures the other processes; CPU time between
 * ticks is what this process's own work (callbacks, GC pauses) held the loop for. An upper
 * bound: everything that ran in one loop turn counts as one.
 */
class LoopTurns {
  #timer: NodeJS.Timeout | undefined
  #last = 0
  #worst = 0
  #turns: number[] = []

  #oncpu(): number {
    return Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]) / 1e6
  }

  start(): void {
    this.stop()
    this.#worst = 0
    this.#turns = []
    this.#last = this.#oncpu()
    this.#timer = setInterval(() => {
      const now = this.#oncpu()
      const d = now - this.#last
      this.#last = now
      this.#worst = Math.max(this.#worst, d)
      this.#turns.push(d)
    }, 2)
  }

  stop(): { turnCpuMaxMs: number; turnCpuP99Ms: number } {
    clearInterval(this.#timer)
    this.#timer = undefined
    const t = [...this.#turns].sort((a, b) => a - b)
    return { turnCpuMaxMs: this.#worst, turnCpuP99Ms: t[Math.floor(t.length * 0.99)] ?? 0 }
  }
}

/**
 * Inserts `n` instances of bot `bench` straight into the store's table, in the store's
 * own row format (instanceData), each with a join, one renewal and one heartbeat recorded
 * (about the size of a real instance's record). Bulk SQL: a join per instance would take
 * minutes and measure nothing the run is about.
 */
async function fill(spec: string, n: number): Promise<void> {
  const base = Date.parse('2026-01-01T00:00:00.000Z')
  const row = (k: number) => {
    const time = new Date(base + k * 1000).toISOString()
    const auth = { time, joinMethod: 'token', remoteAddr: '10.0.0.1', generation: 1 }
    const inst: BotInstance = {
      id: randomUUID(), bot: 'bench', botId: '' /* a column, not in the record */, joinMethod: 'token', tokenName: `fill${k}`, createdAt: time,
      generation: 2, pendingGeneration: null, pendingRetries: 0,
      initialAuthentication: auth, latestAuthentications: [auth, { ...auth, joinMethod: 'bot-certificate', generation: 2 }],
      heartbeats: [{ time, hostname: `runner-${k}`, version: '0.1.0', os: 'linux', arch: 'x64', uptimeSeconds: 60, services: [] } as unknown as BotInstance['heartbeats'][number]],
    }
    return [inst.id, inst.createdAt, instanceData(inst)] as const
  }
  if (spec.startsWith('sqlite:')) {
    const db = new DatabaseSync(spec.slice('sqlite:'.length))
    db.exec('PRAGMA busy_timeout = 10000')
    const botId = String((db.prepare("SELECT id FROM bots WHERE name = 'bench'").get() as { id: string }).id)
    const ins = db.prepare('INSERT INTO bot_instances (id, bot, bot_id, generation, pending_generation, pending_retries, pending_key, ended_at, created_at, data) VALUES (?, \'bench\', ?, 2, NULL, 0, NULL, NULL, ?, ?)')
    for (let k = 0; k < n; k += 5000) {
      db.exec('BEGIN IMMEDIATE')
      for (let j = k; j < Math.min(n, k + 5000); j++) {
        const [id, created, data] = row(j)
        ins.run(id, botId, created, data)
      }
      db.exec('COMMIT')
    }
    db.close()
    return
  }
  const c = new pg.Client({ connectionString: spec })
  await c.connect()
  try {
    const botId = String((await c.query<{ id: string }>("SELECT id FROM bots WHERE name = 'bench'")).rows[0]?.id)
    for (let k = 0; k < n; k += 2000) {
      const rows = Array.from({ length: Math.min(n, k + 2000) - k }, (_x, j) => row(k + j))
      await c.query('INSERT INTO bot_instances (id, bot, bot_id, generation, pending_generation, pending_retries, pending_key, ended_at, created_at, data) '
        + "SELECT id, 'bench', $4, 2, NULL, 0, NULL, NULL, created, data FROM unnest($1::text[], $2::text[], $3::text[]) AS t(id, created, data)",
      [rows.map((r) => r[0]), rows.map((r) => r[1]), rows.map((r) => r[2]), botId])
    }
    await c.query('ANALYZE bot_instances')
  } finally {
    await c.end()
  }
}

interface Result {
  errors: number
  ops: number
  seconds: number
  p50: number
  p99: number
  max: number
  cpuMsPerOp: number
  dbCpuMsPerOp: number | undefined
  foreign: number
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? NaN
}

/** The PostgreSQL server's processes (postmaster and its children), from /proc. */
function clusterPids(postmaster: number): number[] {
  const out = [postmaster]
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8')
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === postmaster) out.push(Number(d))
    } catch {
      // gone meanwhile
    }
  }
  return out
}

function rssMb(pid: number | undefined): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) / 1024 : NaN
  } catch {
    return NaN
  }
}

/** A storage configuration to run: the store spec each replica opens, and how many replicas. */
interface Config {
  label: string
  /** Each replica's --store, made fresh per configuration. */
  store(dir: string): Promise<string>
  replicas: number
  /** The database server's CPU seconds so far, when it runs here. */
  dbCpu?: () => number
  /** Its postmaster, when it runs here: its CPU is the bench's own, not foreign load. */
  dbPid?: () => number | undefined
}

/** One auth server on a SQLite file in the run's directory. */
const SQLITE: Config = { label: 'SQLite', replicas: 1, store: async (dir) => `sqlite:${path.join(dir, 'memid.db')}` }

async function main(): Promise<void> {
  const storages = (values.storage as string).split(',').map((s) => s.trim())
  const replicaCounts = (values.replicas as string).split(',').map(Number)
  let pgServer: BenchPostgres | undefined
  let pgDir: string | undefined
  let dbs = 0
  const pgUrl = values['pg-url']
  const pgStore = async (): Promise<string> => {
    if (pgUrl !== undefined) return pgUrl
    if (pgServer === undefined) {
      pgDir = mkdtempSync(path.join(tmpdir(), 'memid-bench-pg-'))
      pgServer = await startBenchPostgres(pgDir)
    }
    return pgServer.createDatabase(`bench_${++dbs}`)
  }
  const pgCpu = () => (pgServer === undefined ? 0 : clusterPids(pgServer.pid()).reduce((a, p) => a + cpuSeconds(p), 0))
  const configs: Config[] = []
  for (const s of storages) {
    if (s === 'sqlite') configs.push(SQLITE)
    else if (s === 'postgres') {
      for (const r of replicaCounts) {
        configs.push({ label: `PostgreSQL 15, ${r} replica${r > 1 ? 's' : ''}`, replicas: r, store: pgStore, ...(pgUrl === undefined ? { dbCpu: pgCpu, dbPid: () => pgServer?.pid() } : {}) })
      }
    } else throw new Error(`--storage: sqlite or postgres, got "${s}"`)
  }
  if (pgUrl !== undefined && configs.filter((c) => c.label.startsWith('PostgreSQL')).length > 1) {
    throw new Error('--pg-url names one (empty) database: give one --replicas count with it')
  }
  console.log(`${machineLine()}; load average at start ${loadavg().map((x) => x.toFixed(2)).join(' ')}`)
  try {
    if (values.scale !== undefined) {
      await scaleRun(configs[0] as Config, Number(values.scale))
      return
    }
    const floorSeconds = Number(values['floor-seconds'])
    if (floorSeconds > 0) await handshakeFloor(floorSeconds)
    if (clientKinds.includes('native')) ensurePackages([{ cmd: 'cc', pkg: 'gcc' }, { cmd: 'cc', pkg: 'libssl-dev', file: '/usr/include/openssl/ssl.h' }])
    for (const c of configs) await throughput(c)
  } finally {
    await pgServer?.stop()
    if (pgDir !== undefined) rmSync(pgDir, { recursive: true, force: true })
  }
}

/** Starts the configuration's replicas; the first sets up the bench's bot and makes tokens. */
async function startReplicas(config: Config, dir: string, own: (c: Role['child']) => unknown): Promise<{ roles: Role[]; addrs: string[]; caPin: string; spec: string }> {
  const spec = await config.store(dir)
  const roles: Role[] = []
  const addrs: string[] = []
  let caPin = ''
  for (let i = 0; i < config.replicas; i++) {
    // Each replica its own admin socket directory; the first creates the CAs and the bot.
    const rdir = path.join(dir, `r${i}`)
    mkdirSync(rdir, { mode: 0o700 })
    // Under the node flags `memid auth start` runs with.
    const role = startRole(new URL(import.meta.url).pathname, 'memid', ['--dir', rdir, '--store', spec, '--workers', values.workers as string, ...(i === 0 ? ['--setup'] : [])], AUTH_NODE_FLAGS)
    own(role.child)
    const m = await role.next() as { addr: string; caPin: string }
    roles.push(role)
    addrs.push(m.addr)
    caPin ||= m.caPin
    if (m.caPin !== caPin) throw new Error('replicas disagree on the CA')
  }
  return { roles, addrs, caPin, spec }
}

async function throughput(config: Config): Promise<void> {
  const seconds = Number(values.seconds)
  const levels = (values.concurrency as string).split(',').map(Number)
  console.log(`\n--- ${config.label}`)
  await withBenchDir('memid-bench-auth-', async (dir, own) => {
    const { roles, addrs, caPin } = await startReplicas(config, dir, own)
    const first = roles[0] as Role
    const tokens = (n: number) => askTokens(first, n)
    const clients: AuthClient[] = []
    /** Bot i talks to replica i mod R, over its own client (connections, pins). */
    const clientFor = async (i: number): Promise<AuthClient> => {
      while (clients.length <= i) {
        const c = new AuthClient({ server: addrs[clients.length % addrs.length] as string, caPins: [caPin] })
        await c.bootstrap()
        clients.push(c)
      }
      return clients[i] as AuthClient
    }
    const pids = () => roles.map((r) => r.child.pid)
    const load = new ForeignLoad(() => [...pids(), config.dbPid?.()])
    const serverCpu = () => pids().reduce((a: number, p) => a + cpuSeconds(p), 0)

    /** Runs `op` from `workers` loops for `seconds`; each worker keeps its own state. */
    async function run<S>(workers: number, setup: (w: number) => Promise<S>, op: (s: S) => Promise<S>): Promise<Result> {
      // Set up 8 at a time: 128 joins at once overrun a server on a busy 2-core machine.
      const states: S[] = []
      for (let w = 0; w < workers; w += 8) states.push(...await Promise.all(Array.from({ length: Math.min(8, workers - w) }, (_, k) => setup(w + k))))
      const lat: number[] = []
      let errors = 0
      const cpu0 = serverCpu()
      const db0 = config.dbCpu?.()
      load.begin()
      const t0 = performance.now()
      const until = t0 + seconds * 1000
      await Promise.all(states.map(async (s0) => {
        let s = s0
        while (performance.now() < until) {
          const a = performance.now()
          try {
            s = await op(s)
          } catch (err) {
            // Counted and shown; this bot stops (a renewal whose answer was lost cannot simply go on).
            errors++
            if (errors === 1) console.log(`  first error: ${(err as Error).message}`)
            return
          }
          lat.push(performance.now() - a)
        }
      }))
      const elapsed = (performance.now() - t0) / 1000
      load.end()
      const cpu = serverCpu() - cpu0
      const db = db0 === undefined ? undefined : ((config.dbCpu?.() ?? 0) - db0) * 1000 / lat.length
      lat.sort((x, y) => x - y)
      return { errors, ops: lat.length, seconds: elapsed, p50: pct(lat, 0.5), p99: pct(lat, 0.99), max: lat.at(-1) ?? NaN, cpuMsPerOp: (cpu * 1000) / lat.length, dbCpuMsPerOp: db, foreign: load.share }
    }

    const drop = (id: TestIdentity) => (id.caller.agent as https.Agent).destroy()

    // The native client (bench/native/auth-load.c): the same renewals and keep-alive
    // requests at a fraction of the Node client's CPU, so that the server gets more of the two cores.
    const nativeLoad = clientKinds.includes('native') ? compileNative(dir, 'auth-load', ['-lssl', '-lcrypto']) : undefined
    let nativeSets = 0
    /** `c` bots joined for the native client, each key and certificate in a file OpenSSL reads (in the bench's private dir). */
    const nativeIdentities = async (c: number): Promise<string> => {
      const idDir = path.join(dir, `native-${++nativeSets}`)
      mkdirSync(idDir, { mode: 0o700 })
      const client = await clientFor(0)
      writePem(idDir, { 'ca.pem': client.cas.tls })
      for (const [i, t] of (await tokens(c)).entries()) {
        const id = await join(client, t)
        drop(id)
        writePem(idDir, { [`id-${i}.pem`]: (id.key.export({ type: 'pkcs8', format: 'pem' }) as string) + id.res.certificate })
      }
      return idDir
    }
    /**
     * One native client per replica, each with its share of the `c` bots, for `seconds`:
     * keep-alive requests of `reqPath` with `body`, or with 'renew' renewals (each with the
     * heartbeat that confirms it, `body`). Server CPU from when every bot is connected.
     */
    const runNative = async (bin: string, idDir: string, c: number, reqPath: string | 'renew', body: string): Promise<Result> => {
      const bodyFile = path.join(idDir, 'body.json')
      writeFileSync(bodyFile, body, { mode: 0o600 })
      const shares = addrs.map((_a, r) => Math.floor(c / addrs.length) + (r < c % addrs.length ? 1 : 0))
      let started = 0
      let cpu0 = 0
      let db0: number | undefined
      let allStarted: () => void = () => undefined
      const connected = new Promise<void>((resolve) => (allStarted = resolve))
      const runs = addrs.map((addr, r) => shares[r] === 0 ? Promise.resolve<Record<string, number> | undefined>(undefined) : new Promise<Record<string, number>>((resolve, reject) => {
        const first = shares.slice(0, r).reduce((a, b) => a + b, 0)
        const common = [addr.slice(addr.lastIndexOf(':') + 1), String(seconds), idDir, String(shares[r])]
        const args = reqPath === 'renew' ? ['renew', ...common, bodyFile, String(first)] : ['keepalive', ...common, reqPath, bodyFile, String(first)]
        const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'inherit'] })
        let out = ''
        let up = false
        child.stdout.setEncoding('utf8')
        child.stdout.on('data', (d: string) => {
          out += d
          if (up || !out.includes('start\n')) return
          up = true
          if (++started === shares.filter((n) => n > 0).length) {
            cpu0 = serverCpu()
            db0 = config.dbCpu?.()
            load.begin()
            allStarted()
          }
        })
        child.on('error', reject)
        child.on('close', (code) => {
          const line = out.split('\n').find((l) => l.startsWith('count='))
          if (code !== 0 || line === undefined) reject(new Error(`the native load client exited ${code}`))
          else resolve(keyValues(line))
        })
      }))
      const results = (await Promise.all(runs)).filter((x) => x !== undefined)
      await connected
      load.end()
      const ops = results.reduce((a, x) => a + (x.count ?? 0), 0)
      const secs = Math.max(...results.map((x) => x.seconds ?? 0))
      const db = db0 === undefined ? undefined : ((config.dbCpu?.() ?? 0) - db0) * 1000 / ops
      // With several replicas each client reports its own percentiles: the worst is shown.
      return {
        errors: results.reduce((a, x) => a + (x.errors ?? 0), 0), ops, seconds: secs,
        p50: Math.max(...results.map((x) => (x.p50_us ?? 0) / 1000)), p99: Math.max(...results.map((x) => (x.p99_us ?? 0) / 1000)), max: NaN,
        cpuMsPerOp: ((serverCpu() - cpu0) * 1000) / ops, dbCpuMsPerOp: db, foreign: load.share,
      }
    }
    const show = (what: string, c: number, r: Result) => {
      const db = r.dbCpuMsPerOp === undefined ? '' : ` + PostgreSQL ${r.dbCpuMsPerOp.toFixed(2)}`
      console.log(`${what.padEnd(22)} c=${String(c).padEnd(4)} ${(r.ops / r.seconds).toFixed(0).padStart(6)}/s  p50 ${r.p50.toFixed(1).padStart(6)} ms  p99 ${r.p99.toFixed(1).padStart(6)} ms  server CPU ${r.cpuMsPerOp.toFixed(2)}${db} ms/op${r.errors > 0 ? `  ERRORS ${r.errors}` : ''}  (foreign load ${Math.round(r.foreign * 100)}%, load avg ${loadavg()[0]?.toFixed(1)})`)
    }

    for (const c of levels) {
      if (clientKinds.includes('node')) {
        // Joins: a token each, drawn from a pool made before the clock starts.
        const pool = await tokens(Math.ceil(seconds * 600) + c * 50)
        show('join', c, await run(c, (w) => clientFor(w), async (client) => {
          const t = pool.pop()
          if (t === undefined) throw new Error('bench ran out of join tokens; raise the pool')
          drop(await join(client, t))
          return client
        }))
        // What a new runner's join costs: its agent starts with no connection, bootstraps the
        // CA bundle (an unverified connection, then a verified one) and joins on the latter.
        const runnerPool = await tokens(Math.ceil(seconds * 300) + c * 10)
        show('join (as a runner)', c, await run(c, async () => undefined, async () => {
          const t = runnerPool.pop()
          if (t === undefined) throw new Error('bench ran out of join tokens; raise the pool')
          const client = new AuthClient({ server: addrs[Math.floor(Math.random() * addrs.length)] as string, caPins: [caPin] })
          try {
            await client.bootstrap()
            drop(await join(client, t))
          } finally {
            client.close()
          }
        }))
        const ids = async (w: number) => {
          const client = await clientFor(w)
          return { client, id: await join(client, (await tokens(1))[0] as string) }
        }
        show('renew (new conn each)', c, await run(c, ids, async (s) => {
          const next = await renew(s.client, s.id)
          await heartbeat(s.client, next) // the agent confirms the generation it now holds
          drop(s.id)
          return { client: s.client, id: next }
        }))
        // What a real agent's renewal costs: it renews minutes after its last request, when the
        // server has closed that connection (5 s idle), so the renew request needs a new one too.
        show('renew (as an agent)', c, await run(c, ids, async (s) => {
          drop(s.id)
          const next = await renew(s.client, s.id)
          await heartbeat(s.client, next)
          drop(s.id)
          return { client: s.client, id: next }
        }))
        show('heartbeat (keep-alive)', c, await run(c, ids, async (s) => {
          await heartbeat(s.client, s.id)
          return s
        }))
        show('db cert (keep-alive)', c, await run(c, ids, async (s) => {
          await s.client.issueDb(s.id.caller, { publicKey: newKey().publicKey, service: 'orders', username: 'app' })
          return s
        }))
      }
      if (nativeLoad !== undefined) {
        // Renewals first: their identities are then used up (each bot's last one is in the native client's memory only).
        show('renew (native)', c, await runNative(nativeLoad, await nativeIdentities(c), c, 'renew', HEARTBEAT_BODY))
        const idDir = await nativeIdentities(c)
        show('heartbeat (native)', c, await runNative(nativeLoad, idDir, c, '/v1/heartbeat', HEARTBEAT_BODY))
        show('db cert (native)', c, await runNative(nativeLoad, idDir, c, '/v1/certs/db', JSON.stringify({ publicKey: newKey().publicKey, service: 'orders', username: 'app' })))
      }
    }
    for (const cl of clients) cl.close()
    console.log(`${config.label}; "join" reuses each bot's connections, "join (as a runner)" is a new agent's bootstrap and join (two new connections); the renewal rows include the heartbeat that confirms the new generation (2 requests): one new connection each in "renew", two in "renew (as an agent)".`)
    console.log('Indicative only when the foreign load is high: this 2-core machine is shared.')
  })
}

/**
 * Runs `argv` with stdout into `file`; resolves with its stderr. The listing's pages go to a
 * file and are counted after the window: parsing megabytes of JSON in this process would
 * stall the bots renewing from it, and the run would measure itself.
 */
function runToFile(argv: string[], file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const out = openSync(file, 'w')
    const p = spawn(argv[0] as string, argv.slice(1), { stdio: ['ignore', out, 'pipe'] })
    closeSync(out)
    const err: Buffer[] = []
    p.stderr?.on('data', (d: Buffer) => err.push(d))
    p.on('error', reject)
    p.on('close', (code) => (code === 0 ? resolve(Buffer.concat(err).toString()) : reject(new Error(`${argv[0]} exited ${code}: ${Buffer.concat(err)}`))))
  })
}

/** The `next` cursor of a page written to `file` (it is the last member of the JSON). */
function nextOf(file: string): string | undefined {
  const text = readFileSync(file, 'utf8')
  return /"next":\s*"([^"]+)"\s*}\s*$/.exec(text.slice(-1024))?.[1]
}

/** Items in the pages written to `files`, parsed once the measured window is over. */
function countItems(files: string[]): number {
  return files.reduce((a, f) => a + (JSON.parse(readFileSync(f, 'utf8')) as { items: unknown[] }).items.length, 0)
}

/**
 * Lists every instance page by page with `page(after, file)`, each page into its own
 * file; the files, and the peak RSS (MB) `page` reported.
 */
async function listAll(dir: string, page: (after: string | undefined, file: string) => Promise<number>): Promise<{ files: string[]; peakMb: number }> {
  const files: string[] = []
  let after: string | undefined
  let peakMb = 0
  do {
    const file = path.join(dir, `page${files.length}.json`)
    peakMb = Math.max(peakMb, await page(after, file))
    files.push(file)
    after = nextOf(file)
  } while (after !== undefined)
  return { files, peakMb }
}

/** Every page through `memid get bot_instance --format json`, the built CLI (GNU time reports its peak RSS). */
function listThroughCli(dataDir: string, limit: number, out: string) {
  return listAll(out, async (after, file) => {
    const stderr = await runToFile(['/usr/bin/time', '-f', '%M', process.execPath, DIST_CLI, 'get', 'bot_instance', '--format', 'json', '--data-dir', dataDir,
      '--limit', String(limit), ...(after !== undefined ? ['--after', after] : [])], file)
    return Number(stderr.trim().split('\n').at(-1)) / 1024
  })
}

/** Every page straight from the admin API (GET /v1/instances over the socket, with curl). */
function listThroughApi(socketPath: string, limit: number, out: string) {
  return listAll(out, async (after, file) => {
    const q = new URLSearchParams({ limit: String(limit), ...(after !== undefined ? { after } : {}) })
    await runToFile(['curl', '-sS', '--fail', '--unix-socket', socketPath, `http://memid/v1/instances?${q}`], file)
    return 0
  })
}

/** How many `openssl s_time` clients the handshake floor runs together. */
const FLOOR_CLIENTS = 4

/**
 * What one mutual-TLS handshake costs a server on this machine: the floor under every
 * renewal (one or two handshakes each) and every runner's join. FLOOR_CLIENTS copies of
 * `openssl s_time -new` make full handshakes one after another with a client certificate
 * (no session reuse), together, against
 * `openssl s_server` (native; the machine's OpenSSL, not Node's), a bare node:https server
 * with the auth API's TLS settings and no memid code (bench/_floor.ts), and memid's auth
 * server itself (SQLite; the client certificate is a bot identity it issued, so the
 * handshake verifies it as an agent's). Each server's CPU comes from /proc.
 */
async function handshakeFloor(seconds: number): Promise<void> {
  requireTool('openssl', 'apt-get install -y openssl', ['version'])
  console.log(`\n--- the mutual-TLS handshake floor: ${FLOOR_CLIENTS} × openssl s_time -new with a client certificate (each one handshake at a time), ${seconds} s per server`)
  await withBenchDir('memid-bench-auth-floor-', async (dir, own) => {
    const ca = await benchCa('floor')
    const server = await benchLeaf(ca, 'localhost', 'server', { ipAddresses: ['127.0.0.1'] })
    const client = await benchLeaf(ca, 'bot', 'client')
    // memid's server: a bot identity it issued, for s_time to present.
    const { roles, addrs, caPin } = await startReplicas(SQLITE, dir, own)
    const memid = roles[0] as Role
    const [token] = await askTokens(memid, 1)
    const authClient = new AuthClient({ server: addrs[0] as string, caPins: [caPin] })
    await authClient.bootstrap()
    const bot = await join(authClient, token as string)
    ;(bot.caller.agent as https.Agent).destroy()
    authClient.close()
    // openssl reads keys and certificates from files: its requirement (in this private dir), not memid's.
    const f = writePem(dir, {
      'ca.pem': ca.certPem, 'server.pem': server.certPem + ca.certPem, 'server.key': server.keyPem, 'client.pem': client.certPem, 'client.key': client.keyPem,
      'bot.pem': bot.res.certificate, 'bot.key': bot.key.export({ format: 'pem', type: 'pkcs8' }) as string,
    })
    const measure = async (what: string, pid: number | undefined, port: number, cert: string, key: string) => {
      const cpu0 = cpuSeconds(pid)
      const outs = await Promise.all(Array.from({ length: FLOOR_CLIENTS }, () => new Promise<string>((resolve, reject) => execFile('openssl',
        ['s_time', '-connect', `127.0.0.1:${port}`, '-new', '-cert', cert, '-key', key, '-time', String(seconds)], (err, stdout) => (err ? reject(err) : resolve(stdout))))))
      const ms = ((cpuSeconds(pid) - cpu0) * 1000)
      const n = outs.reduce((a, out) => a + Number(/(\d+) connections in [\d.]+s;/.exec(out)?.[1] ?? 0), 0)
      if (!(n > 0)) throw new Error(`openssl s_time made no connection to ${what}: ${outs.join('').trim()}`)
      console.log(`${what.padEnd(62)} ${(ms / n).toFixed(2).padStart(5)} ms of server CPU per handshake (${n} handshakes)`)
    }
    const osslPort = await freePort()
    const ossl = own(spawn('openssl', ['s_server', '-accept', `127.0.0.1:${osslPort}`, '-cert', f['server.pem'] as string, '-key', f['server.key'] as string,
      '-CAfile', f['ca.pem'] as string, '-verify', '1', '-no_ticket', '-www', '-quiet'], { stdio: ['ignore', 'ignore', 'pipe'] }))
    await waitForPort(osslPort, ossl, 'openssl s_server')
    const version = await new Promise<string>((resolve) => execFile('openssl', ['version'], (_e, out) => resolve(String(out).split(' ')[1] ?? '?')))
    await measure(`openssl s_server (native, OpenSSL ${version})`, ossl.pid, osslPort, f['client.pem'] as string, f['client.key'] as string)
    const floor = startRole(new URL(import.meta.url).pathname, 'floor')
    own(floor.child)
    floor.child.send({ keyPem: server.keyPem, certPem: server.certPem, caPem: ca.certPem } satisfies FloorMaterial)
    const floorPort = (await floor.next()).port as number
    await measure(`bare node:https, the auth API's TLS settings (OpenSSL ${process.versions.openssl})`, floor.child.pid, floorPort, f['client.pem'] as string, f['client.key'] as string)
    await measure('memid auth server, a bot identity as the client certificate', memid.child.pid, Number((addrs[0] as string).split(':').at(-1)), f['bot.pem'] as string, f['bot.key'] as string)
  })
}

/**
 * The state-scale run: N instances in the store, bots renewing (new key and connection
 * each, confirmed by a heartbeat), a full listing through the CLI and then through the admin
 * API; renewal latency and the server's event-loop delay in each window, and its RSS.
 *
 * The renewals arrive at a fixed rate (open loop), as a fleet's do: N instances renewing
 * every 20 minutes (the default renewal_interval) start N / 1200 renewals a second whatever
 * the server is doing. Each takes an idle bot from a pool; its latency counts from when it
 * was due, so a renewal that waited for a bot, or for a server stalled by a listing, shows
 * the wait (no coordinated omission). A closed loop (each bot renewing again as soon as it
 * is answered) would measure the queue at saturation instead: the question here is whether
 * a listing stalls the bots, not how many renewals fit.
 */
async function scaleRun(config: Config, n: number): Promise<void> {
  if (config.replicas !== 1) throw new Error('the state-scale run uses one replica: add --replicas 1')
  const rate = values['scale-rate'] !== undefined ? Number(values['scale-rate']) : n / 1200
  const poolSize = Number(values['scale-bots'])
  if (!(rate > 0) || !(poolSize > 0)) throw new Error('--scale-rate and --scale-bots must be positive numbers')
  ensureDist()
  console.log(`\n--- state scale: ${n} bot instances, ${config.label}, ${rate.toFixed(0)} renewals/s (open loop, ${poolSize} bots)`)
  await withBenchDir('memid-bench-auth-scale-', async (dir, own) => {
    const { roles, addrs, caPin, spec } = await startReplicas(config, dir, own)
    const server = roles[0] as Role
    const pid = server.child.pid
    const ask = async (m: Record<string, unknown>) => {
      server.child.send(m)
      return server.next()
    }
    const rss0 = rssMb(pid)
    // From this process, straight into the database the server uses.
    const t0 = performance.now()
    await fill(spec, n)
    console.log(`filled ${n} instances in ${((performance.now() - t0) / 1000).toFixed(1)} s; server RSS ${rss0.toFixed(0)} MB before`)
    const tokens = await askTokens(server, poolSize)
    const idle = await Promise.all(tokens.map(async (t) => {
      const client = new AuthClient({ server: addrs[0] as string, caPins: [caPin] })
      await client.bootstrap()
      return { client, id: await join(client, t) }
    }))
    const bots = [...idle]
    let lat: number[] = []
    let late = 0
    let failed = 0
    let peakRss = 0
    const sampler = setInterval(() => { peakRss = Math.max(peakRss, rssMb(pid)) }, 50)
    // Due times waiting for an idle bot, oldest first.
    const due: number[] = []
    const inFlight = new Set<Promise<void>>()
    const dispatch = () => {
      while (due.length > 0 && idle.length > 0) {
        const at = due.shift() as number
        const b = idle.pop() as (typeof idle)[number]
        const p: Promise<void> = (async () => {
          const next = await renew(b.client, b.id)
          await heartbeat(b.client, next)
          lat.push(performance.now() - at)
          ;(b.id.caller.agent as https.Agent).destroy()
          b.id = next
        })().catch((err: unknown) => {
          failed++
          if (failed === 1) console.error(`a renewal failed: ${(err as Error).message}`)
        }).finally(() => {
          inFlight.delete(p)
          idle.push(b)
          dispatch()
        })
        inFlight.add(p)
      }
    }
    // The schedule: one renewal due every 1/rate s from the start; the timer is set for the
    // next due time (a late timer catches up: every renewal due by then is started).
    const start = performance.now()
    let scheduled = 0
    let ticker: NodeJS.Timeout | undefined
    const tick = () => {
      const now = performance.now()
      for (let at = start + (scheduled * 1000) / rate; at <= now; at = start + (scheduled * 1000) / rate) {
        scheduled++
        if (idle.length === 0 || due.length > 0) late++
        due.push(at)
      }
      dispatch()
      ticker = setTimeout(tick, Math.max(0, start + (scheduled * 1000) / rate - performance.now()))
    }
    tick()
    const renewing = { async stop() {
      clearTimeout(ticker)
      due.length = 0
      while (inFlight.size > 0) await Promise.all(inFlight)
    } }
    const load = new ForeignLoad(() => [pid])
    const window = async (what: string, body: () => Promise<string>) => {
      lat = []
      late = 0
      failed = 0
      peakRss = 0
      await ask({ loop: 'reset' })
      load.begin()
      const t0 = performance.now()
      const note = await body()
      const secs = (performance.now() - t0) / 1000
      load.end()
      const loop = await ask({ loop: 'read' }) as { maxMs: number; p99Ms: number; turnCpuMaxMs: number; turnCpuP99Ms: number; heapMb: number; heapUsedMb: number; externalMb: number }
      const l = [...lat].sort((x, y) => x - y)
      console.log(`${what.padEnd(34)} ${secs.toFixed(1).padStart(5)} s  renewals ${String(l.length).padStart(5)} (${(l.length / secs).toFixed(0)}/s, ${late} waited for a bot, ${failed} failed)  p50 ${pct(l, 0.5).toFixed(1).padStart(6)} ms  p99 ${pct(l, 0.99).toFixed(1).padStart(6)} ms  max ${(l.at(-1) ?? NaN).toFixed(1).padStart(6)} ms  server loop delay max ${loop.maxMs.toFixed(1)} ms (wall), longest loop turn ${loop.turnCpuMaxMs.toFixed(1)} ms CPU (p99 ${loop.turnCpuP99Ms.toFixed(1)})  RSS peak ${peakRss.toFixed(0)} MB (JS heap ${loop.heapMb.toFixed(0)}, ${loop.heapUsedMb.toFixed(0)} in use, external ${loop.externalMb.toFixed(0)} at the end)  ${note}  (load avg ${loadavg()[0]?.toFixed(1)})`)
    }
    await window('renewals, no listing', async () => {
      await new Promise((r) => setTimeout(r, 5000))
      return ''
    })
    const cliOut = path.join(dir, 'cli')
    const apiOut = path.join(dir, 'api')
    mkdirSync(cliOut)
    mkdirSync(apiOut)
    let cli: { files: string[]; peakMb: number } = { files: [], peakMb: 0 }
    let api: { files: string[]; peakMb: number } = { files: [], peakMb: 0 }
    await window('during memid get bot_instance (CLI)', async () => {
      cli = await listThroughCli(path.join(dir, 'r0'), 10_000, cliOut)
      return `${cli.files.length} pages of up to 10000, CLI peak RSS ${cli.peakMb.toFixed(0)} MB`
    })
    await window('during GET /v1/instances (admin API)', async () => {
      api = await listThroughApi(path.join(dir, 'r0', 'admin.sock'), 10_000, apiOut)
      return `${api.files.length} pages of up to 10000`
    })
    await renewing.stop()
    clearInterval(sampler)
    for (const b of bots) b.client.close()
    console.log(`listed ${countItems(cli.files)} instances through the CLI, ${countItems(api.files)} through the API (${n} filled + ${poolSize} renewing)`)
    console.log(`server RSS at the end ${rssMb(pid).toFixed(0)} MB; ${cpus().length} cores shared with other work`)
  })
}

// Last: the classes above are not hoisted.
if (values.role === 'floor') {
  await serveFloor()
} else if (values.role === 'memid') {
  await serve()
} else {
  await main()
}
