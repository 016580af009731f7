import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'
import { ERROR_STATUS, MemidError, type ErrorCode } from '../core/errors.ts'
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
 * Serves the agent API from `count` worker threads sharing one port (SO_REUSEPORT). The
 * first worker binds (so `HOST:0` picks the port), the others join it. A worker that
 * dies while serving is reported through `failed`; the others keep serving.
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
  running.forEach((r, i) => r.worker.on('message', (m: FromWorker) => {
    if (m.type !== 'stopped') return
    served += m.served
    o.logger.info({ worker: i, served: m.served }, 'auth worker stopped')
  }))
  const failed = new Promise<string>((resolve) => {
    running.forEach((r, i) => void r.exited.then((code) => {
      if (!stopping) resolve(`auth worker ${i} exited (${code}) while serving`)
    }))
  })
  return {
    address: { kind: 'tcp', host: o.addr.host, port },
    failed,
    served: () => served,
    async stop(deadlineMs) {
      stopping = true
      for (const r of running) r.worker.postMessage({ type: 'stop', deadlineMs } satisfies ToWorker)
      // A worker that does not drain in time (plus a margin) is ended.
      const timer = setTimeout(() => void stopAll(), deadlineMs + 2_000)
      await Promise.all(running.map((r) => r.exited))
      clearTimeout(timer)
    },
  }
}
