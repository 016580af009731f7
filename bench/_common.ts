/**
 * What the benchmarks share (bench/run.ts skips files starting with `_`): a throwaway PKI,
 * the in-memory credential a memid service child holds the way the agent would, child
 * processes that report over IPC, CPU accounting from /proc, and the rounds' bookkeeping.
 *
 * This is a 2-core CI-sized machine shared with other work, so every benchmark runs its
 * parties in separate processes, alternates them round by round, waits for the machine
 * to be otherwise idle before a round, reports medians, and prints the CPU time each
 * party spent per unit of work next to the rates: CPU per unit is what the code controls,
 * the rates also depend on how the scheduler shares two cores between client, proxy and
 * server.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process'
import { createPrivateKey, generateKeyPairSync } from 'node:crypto'
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { cpus, tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Registry } from 'prom-client'
import { CredentialSource, type TlsClientCredential } from '../src/credentials/credentials.ts'
import { systemClock } from '../src/core/clock.ts'
import { silentLogger } from '../src/core/log.ts'
import { buildClientContext } from '../src/pki/tls-context.ts'
import { certificateSerial, createCaCertificate, issueLeaf, type X509Authority } from '../src/pki/x509.ts'
import type { ResolvedService } from '../src/services/definition.ts'
import type { Service, ServiceDeps } from '../src/services/service.ts'
import { WorkerGroup } from '../src/services/workers.ts'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

/** The CLI users run: dist/, tsc's output with the thread entry points bundled (ensureDist). */
export const DIST_CLI = path.join(ROOT, 'dist', 'cli', 'main.js')

/**
 * Builds dist/ when it is missing, older than src/ or unbundled (a plain `tsc -p
 * tsconfig.build.json` leaves it unbundled: it works, but it is not what `npm run build`
 * ships). The benches run the CLI from there, as users do: from src/ every start also
 * strips the types of every module (0.5 s and 110 MB against 0.2 s and 66 MB for a
 * `memid get`).
 */
export function ensureDist(): void {
  const stale = () => execFileSync('find', [path.join(ROOT, 'src'), '-name', '*.ts', '-newer', DIST_CLI], { encoding: 'utf8' }).trim() !== ''
  const unbundled = () => !readFileSync(DIST_CLI, 'utf8').includes('__memidDist')
  if (!existsSync(DIST_CLI) || stale() || unbundled()) {
    console.log('building dist/ (npm run build: tsc, then scripts/bundle.ts)')
    execFileSync(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', path.join(ROOT, 'tsconfig.build.json')], { stdio: 'inherit' })
    execFileSync(process.execPath, [path.join(ROOT, 'scripts', 'bundle.ts')], { stdio: 'inherit' })
  }
}

/** A throwaway ECDSA P-256 CA, valid for an hour. */
export async function benchCa(name: string): Promise<X509Authority> {
  const k = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  return { key: k.privateKey, certPem: await createCaCertificate(k.privateKey, k.publicKey, name, 3600_000) }
}

/** A leaf certificate and its key as PEM strings (they cross to a child process over IPC). */
export async function benchLeaf(
  ca: X509Authority,
  commonName: string,
  usage: 'client' | 'server',
  extra: { ipAddresses?: string[]; organizations?: string[] } = {},
): Promise<{ certPem: string; keyPem: string }> {
  const k = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const leaf = await issueLeaf({ ca, publicKey: k.publicKey, commonName, ttlMs: 3600_000, usage, ...extra })
  return { certPem: leaf.pem, keyPem: k.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string }
}

/** A client certificate for a memid service child, and the upstream it is for. */
export interface ClientMaterial {
  certPem: string
  keyPem: string
  /** The CA that verifies the upstream server. */
  serverCaPem: string
  uri: string
  host: string
  port: number
}

/**
 * The dependencies a memid service gets from the agent, with a credential built the way
 * the renewal loop builds it: KeyObject, secure context made once, nothing on disk.
 */
export function benchServiceDeps(kind: 'db' | 'kube', user: string, groups: string[], m: ClientMaterial): ServiceDeps<TlsClientCredential> {
  const privateKey = createPrivateKey(m.keyPem)
  const source = new CredentialSource<TlsClientCredential>('bench')
  source.set({
    kind, privateKey, certificatePem: m.certPem, user, groups,
    secureContext: buildClientContext({ key: privateKey, certPem: m.certPem, caPem: m.serverCaPem }),
    upstream: { name: 'bench', uri: m.uri, host: m.host, port: m.port, caPem: m.serverCaPem },
    serial: certificateSerial(m.certPem), notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3600_000),
  })
  return { credentials: source, logger: silentLogger(), clock: systemClock, metrics: new Registry() }
}

/**
 * memid's service for a bench child, built the way the agent builds it: in this thread, or
 * with `workers` > 1 on that many worker threads sharing its port (`--workers` of `memid start`).
 */
export async function benchService(resolved: ResolvedService, deps: ServiceDeps<TlsClientCredential>, workers: number): Promise<Service> {
  const slot = resolved.open(deps.clock)
  // The slot's holder is a CredentialSource; the bench hands it the credential it made.
  ;(slot.credential as CredentialSource<TlsClientCredential>).set(deps.credentials.current())
  const group = workers > 1 ? new WorkerGroup(workers, deps.logger) : undefined
  return slot.build({ logger: deps.logger, clock: deps.clock, metrics: deps.metrics, ...(group ? { workers: group } : {}) })
}

/**
 * Starts a bench service and waits until every one of its threads serves. The service is up
 * once its first thread listens and the others join the port as they load (`memid status`
 * shows them "starting"); a bench that warmed up before they joined sent its warm-up to the
 * first thread alone and measured the others' first requests cold (their code not yet
 * compiled), in its first round's tail.
 */
export async function startAllThreads(svc: Service, timeoutMs = 30_000): Promise<void> {
  await svc.start()
  const until = Date.now() + timeoutMs
  const starting = () => ((svc.describe?.().workers ?? []) as { status: string }[]).some((w) => w.status === 'starting')
  while (starting()) {
    if (Date.now() > until) throw new Error(`${svc.name}: not every thread serves after ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

/**
 * Child side: answers `{ accepted: true }` with the connections each of the service's
 * threads accepted so far (after the threads' next state report), so the parent can show
 * how new connections were spread over the threads.
 */
export function answerAccepted(svc: Service): void {
  process.on('message', (m: { accepted?: boolean }) => {
    if (m.accepted !== true) return
    setTimeout(() => {
      const workers = (svc.describe?.().workers ?? []) as { accepted: number }[]
      process.send?.({ accepted: workers.map((w) => w.accepted) })
    }, THREAD_REPORT_WAIT_MS)
  })
}

/** A thread reports its counts every 500 ms (`STATE_EVERY_MS` in src/services/data-plane-worker.ts). */
const THREAD_REPORT_WAIT_MS = 600

/** Parent side: what each thread accepted since `before` (a role child that runs `answerAccepted`), as `17/16`. */
export async function acceptedSince(role: Role, before: number[]): Promise<{ now: number[]; split: string }> {
  role.child.send({ accepted: true })
  const now = (await role.next()).accepted as number[]
  return { now, split: now.map((n, i) => n - (before[i] ?? 0)).join('/') }
}

/** A child process running `script --role ROLE`, and the messages it sends, in order. */
export interface Role {
  child: ChildProcess
  /** The next IPC message; rejects if the child exits first. */
  next(): Promise<Record<string, unknown>>
}

/** `n` join tokens for the bench's bot from bench/auth.ts's `memid` role (the replica that ran --setup). */
export async function askTokens(role: Role, n: number): Promise<string[]> {
  role.child.send({ tokens: n })
  return (await role.next()).tokens as string[]
}

/**
 * Starts `script` again in role `role`, under node with `nodeFlags` (those the memid command
 * the role stands for runs with). For the `memid` role, `MEMID_BENCH_CPU_PROF=DIR`
 * writes a V8 CPU profile and `MEMID_BENCH_NODE_FLAGS="…"` passes more Node flags (e.g.
 * `--trace-gc`), to see where memid's time goes.
 */
export function startRole(script: string, role: string, args: string[] = [], nodeFlags: readonly string[] = []): Role {
  const memid = role === 'memid'
  const prof = memid && process.env.MEMID_BENCH_CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.MEMID_BENCH_CPU_PROF] : []
  const flags = memid && process.env.MEMID_BENCH_NODE_FLAGS ? process.env.MEMID_BENCH_NODE_FLAGS.split(' ').filter(Boolean) : []
  const child = spawn(process.execPath, [...nodeFlags, ...prof, ...flags, script, '--role', role, ...args], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const queue: Record<string, unknown>[] = []
  const waiters: { resolve(m: Record<string, unknown>): void; reject(e: Error): void }[] = []
  let exited: Error | undefined
  child.on('message', (m) => {
    const w = waiters.shift()
    if (w) w.resolve(m as Record<string, unknown>)
    else queue.push(m as Record<string, unknown>)
  })
  child.once('exit', (code, signal) => {
    exited = new Error(`bench role ${role} exited (${code ?? signal})`)
    for (const w of waiters.splice(0)) w.reject(exited)
  })
  return {
    child,
    next: () => {
      const m = queue.shift()
      if (m) return Promise.resolve(m)
      if (exited) return Promise.reject(exited)
      return new Promise((resolve, reject) => waiters.push({ resolve, reject }))
    },
  }
}

/** The first message a parent sends a role child (its credential or server material). */
export function firstMessage<T>(): Promise<T> {
  return new Promise((resolve) => process.once('message', (msg) => resolve(msg as T)))
}

/** Fails with the install command when a peer's binary is missing. */
export function requireTool(cmd: string, install: string, versionArgs = ['--version']): void {
  try {
    execFileSync(cmd, versionArgs, { stdio: 'ignore' })
  } catch (err) {
    // Some tools (wrk, stunnel4) exit non-zero after printing their version: only a missing binary matters.
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`${cmd} is required: ${install}`)
  }
}

/**
 * Runs a benchmark's body with a private 0700 temp dir (the peers read their keys from
 * files; memid never does), then stops every child it registered and removes the dir.
 */
export async function withBenchDir(prefix: string, body: (dir: string, own: (c: ChildProcess) => ChildProcess) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), prefix))
  chmodSync(dir, 0o700)
  const children: ChildProcess[] = []
  try {
    await body(dir, (c) => {
      children.push(c)
      return c
    })
  } finally {
    for (const c of children) c.kill('SIGTERM')
    rmSync(dir, { recursive: true, force: true })
  }
}

/** CPU seconds (user + system, every thread) a process has used so far, from /proc. */
export function cpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return 0
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) / 100
  } catch {
    return 0
  }
}

/**
 * CPU seconds of a process and of every process under it that is still running: nginx's
 * worker is a child of the master whose pid the bench holds, and counted by the master's
 * pid alone it showed up as "other load" (~30% of both cores in every kube and tunnel run).
 */
export function treeCpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return 0
  let children: number[] = []
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      children = children.concat(readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number))
    }
  } catch {
    // Gone, or a kernel without /proc/PID/task/TID/children: the process alone.
  }
  return cpuSeconds(pid) + children.reduce((a, c) => a + treeCpuSeconds(c), 0)
}

/** CPU seconds of this process and of the children it has already waited for (wrk runs). */
function selfAndReapedSeconds(): number {
  const fields = readFileSync('/proc/self/stat', 'utf8').split(') ')[1]?.split(' ') ?? []
  return (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) / 100
}

/** Busy and total CPU seconds of the whole machine so far, from /proc/stat. */
function machineSeconds(): { busy: number; total: number } {
  const f = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '').trim().split(/\s+/).slice(1, 9).map(Number)
  const total = f.reduce((a, b) => a + b, 0)
  const idle = (f[3] ?? 0) + (f[4] ?? 0)
  return { busy: (total - idle) / 100, total: total / 100 }
}

/**
 * Measures what else ran on the machine while a round ran: the busy CPU time of all
 * cores minus what this benchmark's own processes used, as a share of the machine.
 */
export class ForeignLoad {
  #busy = 0
  #total = 0
  #own = 0
  readonly #pids: () => (number | undefined)[]
  #start: { busy: number; total: number; own: number } | undefined

  constructor(ownPids: () => (number | undefined)[]) {
    this.#pids = ownPids
  }

  #ownSeconds(): number {
    return selfAndReapedSeconds() + this.#pids().reduce((a: number, p) => a + treeCpuSeconds(p), 0)
  }

  begin(): void {
    this.#start = { ...machineSeconds(), own: this.#ownSeconds() }
  }

  end(): void {
    if (this.#start === undefined) return
    const now = machineSeconds()
    this.#busy += now.busy - this.#start.busy
    this.#total += now.total - this.#start.total
    this.#own += this.#ownSeconds() - this.#start.own
    this.#start = undefined
  }

  /** Share of the machine (0..1) used by other processes during the measured rounds. */
  get share(): number {
    return this.#total > 0 ? Math.max(0, this.#busy - this.#own) / this.#total : 0
  }
}

/**
 * Waits until the machine has been mostly idle for a second (other work on a shared
 * 2-core box otherwise decides the result), for up to `maxMs`; returns the busy share seen.
 */
export async function waitForQuiet(maxMs = 60_000, threshold = 0.15): Promise<number> {
  const until = Date.now() + maxMs
  let share = 1
  while (true) {
    const a = machineSeconds()
    await new Promise((r) => setTimeout(r, 1000))
    const b = machineSeconds()
    share = (b.busy - a.busy) / Math.max(0.01, b.total - a.total)
    if (share <= threshold || Date.now() >= until) return share
  }
}

/**
 * Runs `round(r)` `rounds` times, each after waiting (up to `quietWaitMs`) for the machine
 * to be idle and with the other load measured around it. Returns the seconds spent waiting.
 */
export async function quietRounds(opts: {
  rounds: number
  quietWaitMs: number
  foreign: ForeignLoad
  round(r: number): void | Promise<void>
}): Promise<number> {
  let waited = 0
  for (let r = 0; r < opts.rounds; r++) {
    const t0 = Date.now()
    await waitForQuiet(opts.quietWaitMs)
    waited += Date.now() - t0
    opts.foreign.begin()
    await opts.round(r)
    opts.foreign.end()
  }
  return waited / 1000
}

/** `quietRounds` for two parties, which go first in turn; `measured()` after each round. */
export async function alternateRounds<P extends string>(opts: {
  rounds: number
  quietWaitMs: number
  parties: readonly [P, P]
  foreign: ForeignLoad
  measure(who: P): void | Promise<void>
  measured(): void
}): Promise<number> {
  const [a, b] = opts.parties
  return quietRounds({
    ...opts,
    async round(r) {
      for (const who of r % 2 === 0 ? [a, b] : [b, a]) await opts.measure(who)
      opts.measured()
    },
  })
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2
}

/** One line saying what the numbers were measured on. */
export function machineLine(): string {
  const c = cpus()
  return `${c.length} × ${c[0]?.model.trim() ?? 'unknown CPU'}, Node ${process.version}, OpenSSL ${process.versions.openssl}, ${new Date().toISOString().slice(0, 10)}`
}

/**
 * Makes sure the Debian packages a native-upstream bench needs are there: installs the
 * missing ones with apt-get when running as root, otherwise fails with the command to run.
 */
export function ensurePackages(needs: { cmd: string; pkg: string; file?: string }[]): void {
  const missing = needs.filter((n) => {
    if (n.file !== undefined) return !existsSync(n.file)
    try {
      execFileSync('sh', ['-c', `command -v ${n.cmd}`], { stdio: 'ignore' })
      return false
    } catch {
      return true
    }
  })
  if (missing.length === 0) return
  const pkgs = [...new Set(missing.map((n) => n.pkg))]
  const command = `apt-get install -y ${pkgs.join(' ')}`
  if (process.getuid?.() !== 0) throw new Error(`this benchmark needs ${pkgs.join(', ')}: run \`${command}\` as root`)
  console.log(`installing ${pkgs.join(' ')} (${command})`)
  execFileSync('apt-get', ['install', '-y', '-qq', ...pkgs], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } })
}

/** A TCP port on 127.0.0.1 that was free a moment ago (for peers that need a fixed port). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port
      s.close(() => resolve(p))
    })
    s.once('error', reject)
  })
}

/** Resolves once something accepts TCP connections on 127.0.0.1:port; rejects if `child` exits first. */
export function waitForPort(port: number, child: ChildProcess, what: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let done = false
    let err = ''
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()))
    child.once('exit', (code) => {
      if (!done) reject(new Error(`${what} exited (${code}): ${err}`))
    })
    const poll = () => {
      if (done) return
      const c = net.connect(port, '127.0.0.1')
      c.once('connect', () => {
        c.destroy()
        done = true
        resolve()
      })
      c.once('error', () => setTimeout(poll, 50))
    }
    poll()
  })
}

/** What startNginx needs: nginx-light (Debian 12: nginx plus the echo module) and the stream module. */
export const NGINX_PACKAGES = [
  { cmd: 'nginx', pkg: 'nginx-light' },
  { cmd: 'nginx', pkg: 'nginx-light', file: '/usr/lib/nginx/modules/ngx_http_echo_module.so' },
  { cmd: 'nginx', pkg: 'libnginx-mod-stream', file: '/usr/lib/nginx/modules/ngx_stream_module.so' },
]

/**
 * Starts nginx in the foreground with one worker and the given `stream {}`/`http {}`
 * blocks, everything (pid, logs, temp files) inside the bench's private dir.
 */
export async function startNginx(dir: string, name: string, blocks: string, port: number): Promise<ChildProcess> {
  const conf = path.join(dir, `${name}.conf`)
  writeFileSync(conf, [
    'load_module /usr/lib/nginx/modules/ngx_stream_module.so;',
    'load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;',
    'daemon off;', 'worker_processes 1;', `pid ${path.join(dir, `${name}.pid`)};`,
    `error_log ${path.join(dir, `${name}-error.log`)} warn;`,
    'events { worker_connections 8192; }', blocks, '',
  ].join('\n'))
  const child = spawn('nginx', ['-e', path.join(dir, `${name}-error.log`), '-c', conf, '-p', dir], { stdio: ['ignore', 'ignore', 'pipe'] })
  await waitForPort(port, child, `nginx (${name})`)
  return child
}

/** Writes PEM material the native peers read from files into the bench's private dir; returns the paths. */
export function writePem(dir: string, files: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {}
  for (const [name, pem] of Object.entries(files)) {
    out[name] = path.join(dir, name)
    writeFileSync(out[name], pem, { mode: 0o600 })
  }
  return out
}

/** Compiles bench/native/NAME.c into the bench dir with cc; returns the binary's path. */
export function compileNative(dir: string, name: string, libs: string[] = []): string {
  const src = path.join(path.dirname(fileURLToPath(import.meta.url)), 'native', `${name}.c`)
  const out = path.join(dir, name)
  execFileSync('cc', ['-O2', '-Wall', '-o', out, src, ...libs, '-lpthread'], { stdio: 'inherit' })
  return out
}

/** Parses a `key=value key=value` line (what the native client prints). */
export function keyValues(line: string): Record<string, number> {
  const out: Record<string, number> = {}
  for (const m of line.matchAll(/(\w+)=([\d.]+)/g)) out[m[1] as string] = Number(m[2])
  return out
}

/** Per-percentile latencies (ms) from `wrk --latency` output. */
export function wrkLatencies(out: string): { p50: number; p99: number } {
  const ms = (p: string) => {
    const m = new RegExp(`^\\s*${p}%\\s+([\\d.]+)(us|ms|s)`, 'm').exec(out)
    if (m === null) return NaN
    const v = Number(m[1])
    return m[2] === 'us' ? v / 1000 : m[2] === 's' ? v * 1000 : v
  }
  return { p50: ms('50'), p99: ms('99') }
}

/** The installed nginx's version (nginx prints it on stderr). */
export function nginxVersion(): string {
  return /nginx\/([\d.]+)/.exec(execFileSync('sh', ['-c', 'nginx -v 2>&1'], { encoding: 'utf8' }))?.[1] ?? '?'
}

/** `kubectl proxy` on a free port with the given client certificate; resolves to its URL. */
export async function startKubectlProxy(dir: string, k: ClientMaterial) {
  // kubectl reads its client certificate from a kubeconfig: the peer's requirement (in this private dir), not memid's.
  const b64 = (s: string) => Buffer.from(s).toString('base64')
  const kubeconfig = writePem(dir, {
    kubeconfig: [
      'apiVersion: v1', 'kind: Config', 'current-context: bench',
      `clusters: [{name: bench, cluster: {server: "${k.uri}", certificate-authority-data: ${b64(k.serverCaPem)}}}]`,
      `users: [{name: bench, user: {client-certificate-data: ${b64(k.certPem)}, client-key-data: ${b64(k.keyPem)}}}]`,
      'contexts: [{name: bench, context: {cluster: bench, user: bench}}]', '',
    ].join('\n'),
  }).kubeconfig as string
  const child = spawn('kubectl', ['proxy', '--port=0', '--kubeconfig', kubeconfig], { env: { PATH: process.env.PATH, HOME: dir }, stdio: ['ignore', 'pipe', 'ignore'] })
  const url = await new Promise<string>((resolve, reject) => {
    let out = ''
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString()
      const m = /Starting to serve on ([\d.:[\]]+)/.exec(out)
      if (m) resolve(`http://${m[1]}`)
    })
    child.once('exit', (code) => reject(new Error(`kubectl proxy exited (${code}): ${out}`)))
  })
  return { child, url }
}
