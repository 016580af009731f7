/**
 * The TCP data plane of a service on several worker threads. Each worker builds the same
 * service from the same options and binds the same port with SO_REUSEPORT; the kernel
 * spreads new connections over them. The main thread stays the only one that talks to the
 * auth service: every credential it receives is posted to each worker (the private key as
 * a KeyObject, cloned between threads of this process, never written or put in argv/env),
 * and each worker builds its own TLS contexts and upstream sessions from it.
 *
 * Workers write nothing themselves: their log lines come here by message and go out
 * through the agent's logger, their metrics are summed into the agent's `/metrics`.
 */
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'
import { describeError, MemidError } from '../core/errors.ts'
import { Lifecycle, type Health } from '../core/lifecycle.ts'
import { formatAddress, type ListenAddress } from '../core/listener.ts'
import type { Logger } from '../core/log.ts'
import type { CredentialSource, IssuedCredential } from '../credentials/credentials.ts'
import type { RegistryMetrics, Service } from './service.ts'

/** What a worker is started with (cloned; holds no key material). */
export interface DataPlaneInit {
  type: string
  at: string
  options: unknown
  index: number
  logLevel: string
}

/** What a worker reports of itself, pushed whenever it changes. */
export interface WorkerState {
  health: Health
  describe: Record<string, unknown>
  /** The serial of the credential it holds now. */
  serial?: string
  /** Connections this worker accepted so far, and has open now. */
  accepted: number
  open: number
}

/** Main → worker. */
export type ToDataPlane =
  /** `port`: the port to join; the first worker binds the configured one (0 lets the kernel pick). */
  | { type: 'start'; port: number; credential?: unknown; failure?: string }
  | { type: 'credential'; credential: unknown }
  | { type: 'fail'; reason: string }
  | { type: 'metrics'; id: number }
  | { type: 'stop'; deadlineMs: number }

/** Worker → main. */
export type FromDataPlane =
  | { type: 'ready'; port: number }
  | { type: 'failed'; message: string }
  | { type: 'log'; line: string }
  | { type: 'state'; state: WorkerState }
  | { type: 'metrics'; id: number; metrics: RegistryMetrics }

// Next to this module: .ts when run from source, .js from dist.
const WORKER_URL = new URL(`./data-plane-worker${path.extname(fileURLToPath(import.meta.url))}`, import.meta.url)

/** How long `/metrics` waits for a worker's numbers before leaving that worker out. */
const METRICS_TIMEOUT_MS = 2_000
/** A worker that keeps dying is restarted at most this often. */
const MAX_RESTART_DELAY_MS = 5_000
/** How long a worker that does not drain is given after the deadline before it is ended. */
const STOP_MARGIN_MS = 2_000

type Level = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace'
const LEVELS: Record<number, Level> = { 60: 'fatal', 50: 'error', 40: 'warn', 30: 'info', 20: 'debug', 10: 'trace' }
const RANK: Record<Health['status'], number> = { ok: 0, starting: 1, degraded: 2, stopped: 3, failed: 4 }

interface Thread {
  readonly index: number
  worker: Worker | undefined
  exited: Promise<number> | undefined
  /** Resolves with the port once the worker serves. */
  serving: Promise<number> | undefined
  ready: boolean
  state: WorkerState | undefined
  /** Consecutive failed starts, for the restart backoff. */
  failures: number
  restart: NodeJS.Timeout | undefined
}

export interface DataPlanePoolOptions<C extends IssuedCredential> {
  type: string
  name: string
  at: string
  address: ListenAddress & { kind: 'tcp' }
  count: number
  options: unknown
  credentials: CredentialSource<C>
  pack(credential: C): unknown
  counters: readonly string[]
  logger: Logger
}

/**
 * Pools running now, for tests that end a worker (`terminateWorker`) to check that it is
 * restarted. Not part of the package's API.
 */
export const runningPools = new Set<DataPlanePool<IssuedCredential>>()

/** One service served by `count` worker threads sharing its TCP port. */
export class DataPlanePool<C extends IssuedCredential> implements Service {
  readonly name: string
  readonly #o: DataPlanePoolOptions<C>
  readonly #log: Logger
  readonly #life: Lifecycle
  readonly #threads: Thread[]
  readonly #waiting = new Map<number, (m: RegistryMetrics) => void>()
  #nextId = 0
  #port: number
  readonly #onRenewed = (c: C) => this.#broadcast({ type: 'credential', credential: this.#o.pack(c) })
  readonly #onFailed = (reason: string) => this.#broadcast({ type: 'fail', reason })

  constructor(o: DataPlanePoolOptions<C>) {
    this.#o = o
    this.name = o.name
    this.#log = o.logger
    this.#life = new Lifecycle(o.name)
    this.#port = o.address.port
    this.#threads = Array.from({ length: o.count }, (_, index) => ({ index, worker: undefined, exited: undefined, serving: undefined, ready: false, state: undefined, failures: 0, restart: undefined }))
    for (const t of this.#threads) this.#spawn(t)
  }

  get address(): string {
    return formatAddress({ ...this.#o.address, port: this.#port })
  }

  /** Worker threads serving this service. */
  get workers(): number {
    return this.#threads.length
  }

  async start(): Promise<void> {
    this.#life.beginStart()
    this.#o.credentials.on('renewed', this.#onRenewed)
    this.#o.credentials.on('failed', this.#onFailed)
    try {
      // The first worker binds (so port 0 becomes a real port); the others join it.
      const [first, ...rest] = this.#threads as [Thread, ...Thread[]]
      this.#port = await this.#begin(first)
      await Promise.all(rest.map((t) => this.#begin(t)))
    } catch (err) {
      this.#o.credentials.off('renewed', this.#onRenewed)
      this.#o.credentials.off('failed', this.#onFailed)
      this.#life.beginStop()
      await Promise.all(this.#threads.map((t) => t.worker?.terminate()))
      this.#life.stopped()
      throw err
    }
    this.#life.listening()
    runningPools.add(this as unknown as DataPlanePool<IssuedCredential>)
    this.#log.info({ listen: this.address, workers: this.#threads.length }, `${this.name} serves from ${this.#threads.length} worker threads`)
  }

  /**
   * Starts a worker thread, which loads its code and builds the service, then waits for
   * `start`: the pool is built before the agent has joined, so this overlaps the join.
   */
  #spawn(t: Thread): void {
    const init: DataPlaneInit = { type: this.#o.type, at: this.#o.at, options: this.#o.options, index: t.index, logLevel: this.#log.level }
    const worker = new Worker(WORKER_URL, { workerData: init })
    t.worker = worker
    t.ready = false
    t.exited = new Promise<number>((resolve) => worker.once('exit', resolve))
    worker.on('error', (err) => this.#log.error({ worker: t.index, reason: describeError(err) }, 'data-plane worker failed'))
    t.serving = new Promise<number>((resolve, reject) => {
      worker.on('message', (m: FromDataPlane) => {
        if (m.type === 'ready') {
          t.ready = true
          t.failures = 0
          resolve(m.port)
        } else if (m.type === 'failed') {
          reject(new MemidError('ERR_LISTEN', m.message))
        } else {
          this.#message(t, m)
        }
      })
      void t.exited?.then((code) => {
        reject(new MemidError('ERR_INTERNAL', `${this.name}: worker ${t.index} exited (${code}) before serving`))
        this.#exited(t, worker, code)
      })
    })
    t.serving.catch(() => undefined)
  }

  /** Hands a spawned worker the credential and the port; resolves with the port it bound once it serves. */
  #begin(t: Thread): Promise<number> {
    // The worker binds only after this arrives, so it never serves without the credential.
    const cred = this.#o.credentials.peek()
    const failure = this.#o.credentials.lastError
    t.worker?.postMessage({
      type: 'start', port: this.#port, ...(cred !== undefined ? { credential: this.#o.pack(cred) } : {}), ...(failure !== undefined ? { failure } : {}),
    } satisfies ToDataPlane)
    return t.serving ?? Promise.reject(new MemidError('ERR_INTERNAL', `${this.name}: worker ${t.index} is not running`))
  }

  #message(t: Thread, m: FromDataPlane): void {
    if (m.type === 'log') this.#relay(t, m.line)
    else if (m.type === 'state') t.state = m.state
    else if (m.type === 'metrics') {
      this.#waiting.get(m.id)?.(m.metrics)
      this.#waiting.delete(m.id)
    }
  }

  /** A worker's log line, written through the agent's logger with the worker's number. */
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
    t.ready = false
    t.state = undefined
    if (this.#life.state !== 'listening') return
    // Its connections are gone with it; the other workers' are untouched.
    t.failures++
    const delay = Math.min(MAX_RESTART_DELAY_MS, 100 * 2 ** (t.failures - 1))
    this.#log.error({ worker: t.index, code, restartInMs: delay }, `${this.name}: worker ${t.index} exited; restarting it`)
    t.restart = setTimeout(() => {
      t.restart = undefined
      if (this.#life.state !== 'listening') return
      this.#spawn(t)
      this.#begin(t).then(
        () => this.#log.info({ worker: t.index }, `${this.name}: worker ${t.index} serves again`),
        (err: unknown) => this.#log.error({ worker: t.index, reason: describeError(err) }, `${this.name}: worker ${t.index} did not restart`),
      )
    }, delay)
  }

  #broadcast(m: ToDataPlane): void {
    for (const t of this.#threads) t.worker?.postMessage(m)
  }

  /** Ends one worker as a crash would (tests); it is restarted like any worker that died. */
  async terminateWorker(index: number): Promise<void> {
    await this.#threads[index]?.worker?.terminate()
  }

  async stop(deadlineMs: number): Promise<void> {
    if (this.#life.beginStop() === undefined) return
    runningPools.delete(this as unknown as DataPlanePool<IssuedCredential>)
    this.#o.credentials.off('renewed', this.#onRenewed)
    this.#o.credentials.off('failed', this.#onFailed)
    for (const t of this.#threads) clearTimeout(t.restart)
    // Every worker stops accepting and drains against the same deadline.
    this.#broadcast({ type: 'stop', deadlineMs })
    const late = setTimeout(() => {
      for (const t of this.#threads) {
        if (t.worker === undefined) continue
        this.#log.warn({ worker: t.index }, `${this.name}: worker ${t.index} did not stop in time; ending it`)
        void t.worker.terminate()
      }
    }, deadlineMs + STOP_MARGIN_MS)
    await Promise.all(this.#threads.map((t) => t.exited))
    clearTimeout(late)
    this.#life.stopped()
  }

  health(): Health {
    const h = this.#life.health()
    if (h !== undefined) return h
    let worst: Health = { status: 'ok' }
    for (const t of this.#threads) {
      const th: Health = t.ready ? (t.state?.health ?? { status: 'starting' }) : { status: 'degraded', reason: `worker ${t.index} is restarting` }
      if (RANK[th.status] > RANK[worst.status]) worst = th
    }
    return worst
  }

  describe(): Record<string, unknown> {
    const states = this.#threads.flatMap((t) => (t.state !== undefined ? [t.state] : []))
    const out: Record<string, unknown> = { ...(states[0]?.describe ?? {}) }
    for (const key of this.#o.counters) {
      out[key] = states.reduce((sum, s) => sum + (typeof s.describe[key] === 'number' ? s.describe[key] : 0), 0)
    }
    out.workers = this.#threads.map((t) => ({
      worker: t.index,
      status: t.ready ? (t.state?.health.status ?? 'starting') : 'restarting',
      ...(t.state?.serial !== undefined ? { serial: t.state.serial } : {}),
      accepted: t.state?.accepted ?? 0,
      open: t.state?.open ?? 0,
    }))
    return out
  }

  /** Each serving worker's metrics; a worker that does not answer in time is left out. */
  async metrics(): Promise<RegistryMetrics[]> {
    const asks = this.#threads.filter((t) => t.ready && t.worker !== undefined).map((t) => new Promise<RegistryMetrics | undefined>((resolve) => {
      const id = this.#nextId++
      const timer = setTimeout(() => {
        this.#waiting.delete(id)
        resolve(undefined)
      }, METRICS_TIMEOUT_MS)
      this.#waiting.set(id, (m) => {
        clearTimeout(timer)
        resolve(m)
      })
      t.worker?.postMessage({ type: 'metrics', id } satisfies ToDataPlane)
    }))
    return (await Promise.all(asks)).filter((m): m is RegistryMetrics => m !== undefined)
  }
}
