/**
 * The TCP data plane on worker threads. One `WorkerGroup` per agent holds N threads; every
 * service type that supports it (a `worker` entry in its definition) and listens on TCP
 * runs one instance in each thread, all bound to the service's port with SO_REUSEPORT, and
 * the kernel spreads new connections over them. The main thread stays the only one that
 * talks to the auth service: every credential it receives is posted to each thread (the
 * private key as a KeyObject, cloned between threads of this process, never written or put
 * in argv/env), and each thread builds its own TLS contexts and upstream sessions from it.
 *
 * Threads write nothing themselves: their log lines come here by message and go out
 * through the agent's logger, their metrics are summed into the agent's `/metrics`.
 */
import type { Worker } from 'node:worker_threads'
import { describeError, MemidError } from '../core/errors.ts'
import { Lifecycle, type Health } from '../core/lifecycle.ts'
import { formatAddress, type ListenAddress } from '../core/listener.ts'
import type { Logger } from '../core/log.ts'
import type { CredentialSource, IssuedCredential } from '../credentials/credentials.ts'
import { startThread, takePrestarted } from './prestart.ts'
import type { RegistryMetrics, Service } from './service.ts'

/** What a thread is started with (cloned; holds no key material). */
export interface DataPlaneInit {
  index: number
  logLevel: string
}

/** What a service in a thread reports of itself, pushed whenever it changes. */
export interface WorkerState {
  health: Health
  describe: Record<string, unknown>
  /** The serial of the credential it holds now. */
  serial?: string
  /** Connections it accepted so far, and has open now. */
  accepted: number
  open: number
}

/** Main → thread; `key` names the service within the thread. */
export type ToDataPlane =
  /** Builds the service from its thread module (code loads while the agent joins); it listens on `start`. */
  | { type: 'add'; key: number; name: string; module: string; data: unknown }
  /** `port`: the port to join; the first thread binds the configured one (0 lets the kernel pick). */
  | { type: 'start'; key: number; port: number; credential?: unknown; failure?: string }
  | { type: 'credential'; key: number; credential: unknown }
  | { type: 'fail'; key: number; reason: string }
  | { type: 'metrics'; key: number; id: number }
  /** The thread exits once its last service stopped. */
  | { type: 'stop'; key: number; deadlineMs: number }
  /** The agent's log level, for a thread started before the config was read (`prestartDataPlane`). */
  | { type: 'log-level'; level: string }

/** Thread → main. */
export type FromDataPlane =
  | { type: 'ready'; key: number; port: number }
  | { type: 'failed'; key: number; message: string }
  | { type: 'stopped'; key: number }
  | { type: 'log'; line: string }
  | { type: 'state'; key: number; state: WorkerState }
  | { type: 'metrics'; id: number; metrics: RegistryMetrics }

/** How long `/metrics` waits for a thread's numbers before leaving them out. */
const METRICS_TIMEOUT_MS = 2_000
/** A thread that keeps dying is restarted at most this often. */
const MAX_RESTART_DELAY_MS = 5_000
/** How long a thread that does not drain is given after the deadline before it is ended. */
const STOP_MARGIN_MS = 2_000

type Level = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace'
const LEVELS: Record<number, Level> = { 60: 'fatal', 50: 'error', 40: 'warn', 30: 'info', 20: 'debug', 10: 'trace' }
const RANK: Record<Health['status'], number> = { ok: 0, starting: 1, degraded: 2, stopped: 3, failed: 4 }

interface Thread {
  readonly index: number
  worker: Worker | undefined
  exited: Promise<number> | undefined
  /** Consecutive restarts without a service serving, for the backoff. */
  failures: number
  restart: NodeJS.Timeout | undefined
}

/** What one service's handle knows of its instance in one thread. */
interface Instance {
  serving: Promise<number> | undefined
  /** Resolves once the thread stopped the service, or the thread is gone. */
  stopped: Promise<void>
  done: () => void
  resolve: ((port: number) => void) | undefined
  reject: ((err: Error) => void) | undefined
  ready: boolean
  /** Its thread died after serving; until it serves again the service is degraded. */
  lost: boolean
  state: WorkerState | undefined
}

/**
 * Groups running now, for tests that end a thread (`terminateWorker`) to check that it is
 * restarted. Not part of the package's API.
 */
export const runningGroups = new Set<WorkerGroup>()

/** The worker threads of one agent, shared by every service that runs its data plane there. */
export class WorkerGroup {
  readonly size: number
  readonly #log: Logger
  readonly #threads: Thread[]
  readonly #services = new Map<number, WorkerService<IssuedCredential>>()
  readonly #waiting = new Map<number, (m: RegistryMetrics) => void>()
  #nextKey = 0
  #nextId = 0
  #closing = false

  /** `logger` is the agent's; thread log lines go out through it with a `worker` field. */
  constructor(size: number, logger: Logger) {
    this.size = size
    this.#log = logger
    this.#threads = Array.from({ length: size }, (_, index) => ({ index, worker: undefined, exited: undefined, failures: 0, restart: undefined }))
  }

  /** Runs a service in every thread (threads start with the first one); returns its handle. */
  attach<C extends IssuedCredential>(o: WorkerServiceOptions<C>): Service {
    runningGroups.add(this)
    const key = this.#nextKey++
    const service = new WorkerService<C>(this, key, o, this.#log)
    this.#services.set(key, service as unknown as WorkerService<IssuedCredential>)
    this.#broadcast(service.addMessage)
    // Only the first thread loads its code during the join; more would slow the join down.
    this.#ensure(this.#threads[0] as Thread)
    return service
  }

  /** Starts the thread if it is not running, with every service built in it. */
  #ensure(t: Thread): void {
    if (t.worker !== undefined || this.#closing) return
    this.#spawn(t)
    for (const s of this.#services.values()) if (s.live) this.post(t.index, s.addMessage)
  }

  /** Once a service serves from the first thread: the other threads start and load. */
  widen(): void {
    for (const t of this.#threads.slice(1)) if (t.restart === undefined) this.#ensure(t)
  }

  #spawn(t: Thread): void {
    const worker = (t.index === 0 ? takePrestarted(this.#log.level) : undefined) ?? startThread({ index: t.index, logLevel: this.#log.level })
    t.worker = worker
    t.exited = new Promise<number>((resolve) => worker.once('exit', resolve))
    worker.on('error', (err) => this.#log.error({ worker: t.index, reason: describeError(err) }, 'data-plane worker failed'))
    worker.on('message', (m: FromDataPlane) => {
      if (m.type === 'log') this.#relay(t, m.line)
      else if (m.type === 'metrics') {
        this.#waiting.get(m.id)?.(m.metrics)
        this.#waiting.delete(m.id)
      } else this.#services.get(m.key)?.message(t.index, m)
    })
    void t.exited.then((code) => this.#exited(t, worker, code))
  }

  /** A thread's log line, written through the agent's logger with the thread's number. */
  #relay(t: Thread, line: string): void {
    let rec: Record<string, unknown>
    try {
      rec = JSON.parse(line) as Record<string, unknown>
    } catch {
      return
    }
    const { level, time: _time, msg, ...fields } = rec
    this.#log[LEVELS[level as number] ?? 'info']({ ...fields, worker: t.index }, typeof msg === 'string' ? msg : '')
  }

  #exited(t: Thread, worker: Worker, code: number): void {
    if (t.worker !== worker) return
    t.worker = undefined
    const live = [...this.#services.values()].filter((s) => s.live)
    for (const s of this.#services.values()) s.lost(t.index, code)
    if (this.#closing || live.length === 0) return
    // Its connections are gone with it; the other threads' are untouched.
    t.failures++
    const delay = Math.min(MAX_RESTART_DELAY_MS, 100 * 2 ** (t.failures - 1))
    this.#log.error({ worker: t.index, code, restartInMs: delay }, `data-plane worker ${t.index} exited; restarting it`)
    t.restart = setTimeout(() => {
      t.restart = undefined
      if (this.#closing) return
      this.#ensure(t)
      const again = [...this.#services.values()].filter((s) => s.live && s.begun)
      Promise.all(again.map((s) => s.begin(t.index))).then(
        () => {
          t.failures = 0
          this.#log.info({ worker: t.index }, `data-plane worker ${t.index} serves again`)
        },
        (err: unknown) => this.#log.error({ worker: t.index, reason: describeError(err) }, `data-plane worker ${t.index} did not restart`),
      )
    }, delay)
  }

  post(index: number, m: ToDataPlane): void {
    this.#threads[index]?.worker?.postMessage(m)
  }

  #broadcast(m: ToDataPlane): void {
    for (const t of this.#threads) t.worker?.postMessage(m)
  }

  /** A thread's exit, or undefined when it is not running. */
  exited(index: number): Promise<number> | undefined {
    const t = this.#threads[index]
    return t?.worker === undefined ? undefined : t.exited
  }

  /** Asks one thread for one service's metrics; undefined when it does not answer in time. */
  metricsOf(index: number, key: number): Promise<RegistryMetrics | undefined> {
    const worker = this.#threads[index]?.worker
    if (worker === undefined) return Promise.resolve(undefined)
    return new Promise((resolve) => {
      const id = this.#nextId++
      const timer = setTimeout(() => {
        this.#waiting.delete(id)
        resolve(undefined)
      }, METRICS_TIMEOUT_MS)
      this.#waiting.set(id, (m) => {
        clearTimeout(timer)
        resolve(m)
      })
      worker.postMessage({ type: 'metrics', key, id } satisfies ToDataPlane)
    })
  }

  /** Called by a handle once stopped: the group ends when every service has. */
  released(): void {
    if ([...this.#services.values()].some((s) => s.live)) return
    this.#closing = true
    runningGroups.delete(this)
    for (const t of this.#threads) clearTimeout(t.restart)
  }

  /** Ends one thread as a crash would (tests); it is restarted like any thread that died. */
  async terminateWorker(index: number): Promise<void> {
    await this.#threads[index]?.worker?.terminate()
  }
}

export interface WorkerServiceOptions<C extends IssuedCredential> {
  name: string
  address: ListenAddress & { kind: 'tcp' }
  /** The service type's thread module and what its `build` is handed. */
  module: string
  data: unknown
  credentials: CredentialSource<C>
  pack(credential: C): unknown
  counters: readonly string[]
}

/** One service as the agent sees it: its instances in every thread of the group. */
class WorkerService<C extends IssuedCredential> implements Service {
  readonly name: string
  readonly addMessage: ToDataPlane
  readonly #group: WorkerGroup
  readonly #key: number
  readonly #o: WorkerServiceOptions<C>
  readonly #log: Logger
  readonly #life: Lifecycle
  readonly #instances: Instance[]
  #port: number
  readonly #onRenewed = (c: C) => {
    const credential = this.#o.pack(c)
    for (let i = 0; i < this.#instances.length; i++) this.#group.post(i, { type: 'credential', key: this.#key, credential })
  }
  readonly #onFailed = (reason: string) => {
    for (let i = 0; i < this.#instances.length; i++) this.#group.post(i, { type: 'fail', key: this.#key, reason })
  }

  constructor(group: WorkerGroup, key: number, o: WorkerServiceOptions<C>, logger: Logger) {
    this.#group = group
    this.#log = logger
    this.#key = key
    this.#o = o
    this.name = o.name
    this.addMessage = { type: 'add', key, name: o.name, module: o.module, data: o.data }
    this.#life = new Lifecycle(o.name)
    this.#port = o.address.port
    this.#instances = Array.from({ length: group.size }, () => this.#fresh())
  }

  #fresh(): Instance {
    let done = () => undefined as void
    const stopped = new Promise<void>((r) => (done = r))
    const inst: Instance = { serving: undefined, stopped, done, resolve: undefined, reject: undefined, ready: false, lost: false, state: undefined }
    inst.serving = new Promise<number>((resolve, reject) => {
      inst.resolve = resolve
      inst.reject = reject
    })
    inst.serving.catch(() => undefined)
    return inst
  }

  /** True until stopped: a restarted thread builds it again. */
  get live(): boolean {
    return this.#life.state === 'new' || this.#life.state === 'listening'
  }

  /** True once `start` was called: a restarted thread starts it again. */
  get begun(): boolean {
    return this.#begun
  }

  #begun = false

  get address(): string {
    return formatAddress({ ...this.#o.address, port: this.#port })
  }

  async start(): Promise<void> {
    this.#life.beginStart()
    this.#begun = true
    this.#o.credentials.on('renewed', this.#onRenewed)
    this.#o.credentials.on('failed', this.#onFailed)
    try {
      // The first thread binds (so port 0 becomes a real port) and the service is up; the
      // others join the port as they finish loading, which on a busy machine can take seconds.
      this.#port = await this.begin(0)
    } catch (err) {
      this.#o.credentials.off('renewed', this.#onRenewed)
      this.#o.credentials.off('failed', this.#onFailed)
      await this.stop(0)
      throw err
    }
    this.#life.listening()
    this.#group.widen()
    for (let i = 1; i < this.#instances.length; i++) {
      this.begin(i).catch((err: unknown) => this.#log.error({ worker: i, reason: describeError(err) }, `${this.name}: worker ${i} did not start`))
    }
  }

  /** Hands one thread the credential and the port; resolves with the port it bound once it serves. */
  begin(index: number): Promise<number> {
    const inst = this.#instances[index] as Instance
    // The thread binds only after this arrives, so it never serves without the credential.
    const cred = this.#o.credentials.peek()
    const failure = this.#o.credentials.lastError
    this.#group.post(index, {
      type: 'start', key: this.#key, port: this.#port,
      ...(cred !== undefined ? { credential: this.#o.pack(cred) } : {}), ...(failure !== undefined ? { failure } : {}),
    })
    return inst.serving as Promise<number>
  }

  message(index: number, m: FromDataPlane): void {
    const inst = this.#instances[index]
    if (inst === undefined) return
    if (m.type === 'ready') {
      inst.ready = true
      inst.resolve?.(m.port)
    } else if (m.type === 'failed') {
      inst.reject?.(new MemidError('ERR_LISTEN', m.message))
    } else if (m.type === 'state') {
      inst.state = m.state
    } else if (m.type === 'stopped') {
      inst.done()
    }
  }

  /** Its thread died: the instance is gone until the thread is restarted. */
  lost(index: number, code: number): void {
    const old = this.#instances[index]
    old?.reject?.(new MemidError('ERR_INTERNAL', `${this.name}: worker ${index} exited (${code})`))
    old?.done()
    const fresh = this.#fresh()
    fresh.lost = true
    this.#instances[index] = fresh
  }

  async stop(deadlineMs: number): Promise<void> {
    if (this.#life.beginStop() === undefined) return
    this.#o.credentials.off('renewed', this.#onRenewed)
    this.#o.credentials.off('failed', this.#onFailed)
    // Every thread stops accepting and drains against the same deadline.
    const running = this.#instances.flatMap((inst, i) => (this.#group.exited(i) === undefined ? [] : [[inst, i] as const]))
    for (const [, i] of running) this.#group.post(i, { type: 'stop', key: this.#key, deadlineMs })
    this.#group.released()
    // A thread that does not drain in time is ended (with whatever else it still runs:
    // every service is stopping against the same deadline).
    const late = setTimeout(() => {
      for (const [, i] of running) this.#group.terminateWorker(i).catch(() => undefined)
    }, deadlineMs + STOP_MARGIN_MS)
    await Promise.all(running.map(([inst]) => inst.stopped))
    clearTimeout(late)
    this.#life.stopped()
  }

  health(): Health {
    const h = this.#life.health()
    if (h !== undefined) return h
    let worst: Health = { status: 'ok' }
    this.#instances.forEach((inst, i) => {
      // A thread still joining is not a fault: the service serves from the others meanwhile.
      if (!inst.ready && !inst.lost) return
      const th: Health = inst.ready ? (inst.state?.health ?? { status: 'starting' }) : { status: 'degraded', reason: `worker ${i} is restarting` }
      if (RANK[th.status] > RANK[worst.status]) worst = th
    })
    return worst
  }

  describe(): Record<string, unknown> {
    const states = this.#instances.flatMap((inst) => (inst.state !== undefined ? [inst.state] : []))
    const out: Record<string, unknown> = { ...(states[0]?.describe ?? {}) }
    for (const key of this.#o.counters) {
      out[key] = states.reduce((sum, s) => sum + (typeof s.describe[key] === 'number' ? s.describe[key] : 0), 0)
    }
    out.workers = this.#instances.map((inst, i) => ({
      worker: i,
      status: inst.ready ? (inst.state?.health.status ?? 'starting') : inst.lost ? 'restarting' : 'starting',
      ...(inst.state?.serial !== undefined ? { serial: inst.state.serial } : {}),
      accepted: inst.state?.accepted ?? 0,
      open: inst.state?.open ?? 0,
    }))
    return out
  }

  /** Each serving thread's metrics of this service; a thread that does not answer in time is left out. */
  async metrics(): Promise<RegistryMetrics[]> {
    const got = await Promise.all(this.#instances.map((inst, i) => (inst.ready ? this.#group.metricsOf(i, this.#key) : undefined)))
    return got.filter((m): m is RegistryMetrics => m !== undefined)
  }
}
