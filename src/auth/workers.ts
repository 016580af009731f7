import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'
import { describeError, ERROR_STATUS, MemidError, type ErrorCode } from '../core/errors.ts'
import type { ListenAddress } from '../core/listener.ts'
import type { Logger, LogFormat } from '../core/log.ts'
import type { CaSet } from './cas.ts'
import { DEFAULT_JOIN_RATE } from './rate-limit.ts'
import type { RunningApi, ServerIdentity } from './server.ts'

/** What a worker needs besides the keys (cloned at start; holds no key material). */
export interface ApiWorkerInit {
  index: number
  storage: string
  host: string
  port: number
  clusterName: string
  logFormat: LogFormat
  joinRate?: number
}

/** Main → worker. The keys travel as KeyObjects through postMessage: never a file, argv or env. */
export type ToWorker =
  | { type: 'keys'; cas: CaSet; identity: ServerIdentity }
  | { type: 'stop'; deadlineMs: number }

/** Worker → main. */
export type FromWorker =
  | { type: 'ready'; port: number }
  | { type: 'failed'; code: string; message: string }
  | { type: 'stopped'; served: number }

// The worker module sits next to this one: .ts when run from source, .js from dist.
const WORKER_URL = new URL(`./api-worker${path.extname(fileURLToPath(import.meta.url))}`, import.meta.url)

interface Running {
  worker: Worker
  exited: Promise<number>
}

/** Starts one worker and waits until it serves (or says why it could not). */
async function startWorker(init: ApiWorkerInit, cas: CaSet, identity: ServerIdentity, log: Logger): Promise<Running & { port: number }> {
  const worker = new Worker(WORKER_URL, { workerData: init, stdout: false, stderr: false })
  const exited = new Promise<number>((resolve) => worker.once('exit', resolve))
  worker.on('error', (err) => log.error({ worker: init.index, reason: err.message }, 'auth worker crashed'))
  const ready = new Promise<number>((resolve, reject) => {
    const onMessage = (m: FromWorker) => {
      if (m.type === 'ready') resolve(m.port)
      else if (m.type === 'failed') reject(new MemidError((m.code in ERROR_STATUS ? m.code : 'ERR_INTERNAL') as ErrorCode, m.message))
      else return
      worker.off('message', onMessage)
    }
    worker.on('message', onMessage)
    void exited.then((code) => reject(new MemidError('ERR_INTERNAL', `auth worker ${init.index} exited (${code}) before serving`)))
  })
  worker.postMessage({ type: 'keys', cas, identity } satisfies ToWorker)
  try {
    return { worker, exited, port: await ready }
  } catch (err) {
    await worker.terminate()
    throw err
  }
}

/**
 * Waits before restarting a worker that died, by how many times in a row it died before
 * serving for STABLE_MS; one more and the service gives up (`failed`).
 */
const RESTART_BACKOFF_MS = [250, 1_000, 5_000, 15_000, 30_000]
const STABLE_MS = 60_000

/**
 * Serves the agent API from `count` worker threads sharing one port (SO_REUSEPORT). The
 * first worker binds (so `HOST:0` picks the port), the others join it. A worker that dies
 * while serving is logged and started again on the same port, with backoff, while the
 * others keep serving; only when its restarts keep failing does `failed` resolve (and
 * `memid auth start` exit 1 for its supervisor).
 */
export async function startApiWorkers(o: {
  count: number; storage: string; logFormat: LogFormat; cas: CaSet; identity: ServerIdentity; addr: ListenAddress & { kind: 'tcp' }
  clusterName: string; logger: Logger; joinRate?: number
}): Promise<RunningApi> {
  // Each worker limits joins on its own; the kernel spreads a client's connections evenly
  // over the workers, so each gets its share and the address's total stays the configured one.
  const joinRate = (o.joinRate ?? DEFAULT_JOIN_RATE) / o.count
  const base = { storage: o.storage, host: o.addr.host, clusterName: o.clusterName, logFormat: o.logFormat, joinRate }
  const running: Running[] = []
  const stopAll = () => Promise.all(running.map((r) => r.worker.terminate()))
  let port: number
  try {
    const first = await startWorker({ ...base, index: 0, port: o.addr.port }, o.cas, o.identity, o.logger)
    running.push(first)
    port = first.port
    const rest = await Promise.allSettled(Array.from({ length: o.count - 1 }, (_, i) => startWorker({ ...base, index: i + 1, port }, o.cas, o.identity, o.logger)))
    for (const r of rest) if (r.status === 'fulfilled') running.push(r.value)
    const bad = rest.find((r) => r.status === 'rejected')
    if (bad !== undefined) throw bad.reason
  } catch (err) {
    await stopAll()
    throw err
  }
  let stopping = false
  let served = 0
  let giveUp: (why: string) => void = () => undefined
  const failed = new Promise<string>((resolve) => (giveUp = resolve))
  const restarts = new Map<number, NodeJS.Timeout>()

  /** `failures`: exits in a row that came before the worker had served for STABLE_MS. */
  const restart = (index: number, code: number, failures: number) => {
    if (stopping) return
    const delay = RESTART_BACKOFF_MS[failures]
    if (delay === undefined) {
      giveUp(`auth worker ${index} exited (${code}) ${failures} times in a row without serving for long; giving up`)
      return
    }
    o.logger.error({ worker: index, code, restartInMs: delay }, `auth worker ${index} exited; restarting it`)
    restarts.set(index, setTimeout(() => {
      restarts.delete(index)
      if (stopping) return
      startWorker({ ...base, index, port }, o.cas, o.identity, o.logger).then((next) => {
        if (stopping) return void next.worker.terminate()
        running[index] = next
        o.logger.info({ worker: index }, `auth worker ${index} serves again`)
        watch(index, next, failures + 1)
      }, (err: unknown) => {
        o.logger.error({ worker: index, reason: describeError(err) }, `auth worker ${index} did not restart`)
        restart(index, code, failures + 1)
      })
    }, delay))
  }
  const watch = (index: number, r: Running, failures: number) => {
    const since = Date.now()
    r.worker.on('message', (m: FromWorker) => {
      if (m.type !== 'stopped') return
      served += m.served
      o.logger.info({ worker: index, served: m.served }, 'auth worker stopped')
    })
    void r.exited.then((code) => restart(index, code, Date.now() - since >= STABLE_MS ? 0 : failures))
  }
  running.forEach((r, i) => watch(i, r, 0))

  return {
    address: { kind: 'tcp', host: o.addr.host, port },
    failed,
    served: () => served,
    async crashWorker(index) {
      await running[index]?.worker.terminate()
    },
    async stop(deadlineMs) {
      stopping = true
      for (const t of restarts.values()) clearTimeout(t)
      for (const r of running) r.worker.postMessage({ type: 'stop', deadlineMs } satisfies ToWorker)
      // A worker that does not drain in time (plus a margin) is ended.
      const timer = setTimeout(() => void stopAll(), deadlineMs + 2_000)
      await Promise.all(running.map((r) => r.exited))
      clearTimeout(timer)
    },
  }
}
