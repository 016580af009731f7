/**
 * One thread of the agent's data plane (see `workers.ts`): an instance of every TCP service
 * that runs on worker threads, built from the same options, on the service's shared port.
 * Credentials arrive from the main thread by message; log lines and metrics go back the
 * same way, so this thread writes nothing.
 */
import { parentPort, workerData } from 'node:worker_threads'
import { Registry } from '../core/metrics.ts'
import { systemClock } from '../core/clock.ts'
import { describeError } from '../core/errors.ts'
import { createLogger } from '../core/log.ts'
import { collectAfterRenewal } from '../core/gc.ts'
import { SharedPort } from '../core/shared-port.ts'
import { CredentialSource, type IssuedCredential } from '../credentials/credentials.ts'
import type { ThreadEntry } from './definition.ts'
import type { Service } from './service.ts'
import type { DataPlaneInit, FromDataPlane, ToDataPlane, WorkerState } from './workers.ts'

const port = parentPort
if (port === null) throw new Error('services/data-plane-worker.ts runs only as a worker thread')
const init = workerData as DataPlaneInit
const send = (m: FromDataPlane) => port.postMessage(m)
const log = createLogger({ level: init.logLevel, sink: { write: (line) => send({ type: 'log', line }) } })

/** How often each service's health and counters are compared with what it last reported (bench/_common.ts waits a little longer for them). */
const STATE_EVERY_MS = 500

/** One service in this thread. Messages that change it run one after another on `chain`. */
interface Hosted {
  key: number
  credentials: CredentialSource<IssuedCredential>
  entry: ThreadEntry | undefined
  registry: Registry
  shared: SharedPort
  service: Service | undefined
  chain: Promise<unknown>
  reported: string
}

const hosted = new Map<number, Hosted>()

function report(h: Hosted): void {
  if (h.service === undefined) return
  const cred = h.credentials.state()
  const state: WorkerState = {
    health: h.service.health(), describe: h.service.describe?.() ?? {}, accepted: h.shared.accepted, open: h.shared.open,
    ...(cred.status !== 'pending' && cred.serial !== undefined ? { serial: cred.serial } : {}),
  }
  const text = JSON.stringify(state)
  if (text === h.reported) return
  h.reported = text
  send({ type: 'state', key: h.key, state })
}

setInterval(() => {
  for (const h of hosted.values()) report(h)
}, STATE_EVERY_MS).unref()

function add(m: ToDataPlane & { type: 'add' }): void {
  const h: Hosted = {
    key: m.key, credentials: new CredentialSource(m.name, systemClock), entry: undefined, registry: new Registry(), shared: new SharedPort(init.index),
    service: undefined, chain: Promise.resolve(), reported: '',
  }
  // Built at once (while the main thread may still be joining); it listens on `start`.
  h.chain = (async () => {
    h.entry = ((await import(m.module)) as { thread: ThreadEntry }).thread
    h.service = await h.entry.build(m.data, { credentials: h.credentials, logger: log, clock: systemClock, metrics: h.registry, sharedPort: h.shared })
  })()
  hosted.set(m.key, h)
}

function receive(h: Hosted, packed: unknown): void {
  if (h.entry === undefined) return
  h.credentials.set(h.entry.unpack(packed))
  collectAfterRenewal()
}

async function start(h: Hosted, m: ToDataPlane & { type: 'start' }): Promise<void> {
  if (m.credential !== undefined) receive(h, m.credential)
  if (m.failure !== undefined) h.credentials.fail(m.failure)
  if (h.service === undefined) throw new Error('the service was not built')
  h.shared.port = m.port
  await h.service.start()
  // Its state goes first, so the main thread never counts it serving without one.
  report(h)
  const bound = /:(\d+)$/.exec(h.service.address)
  send({ type: 'ready', key: h.key, port: bound ? Number(bound[1]) : m.port })
}

async function stop(h: Hosted, deadlineMs: number): Promise<void> {
  try {
    await h.service?.stop(deadlineMs)
  } catch (err) {
    log.warn({ reason: describeError(err) }, 'data-plane service did not stop cleanly')
  }
  hosted.delete(h.key)
  send({ type: 'stopped', key: h.key })
  // Ends the thread even if a pooled upstream session still holds the loop open.
  if (hosted.size === 0) process.exit(0)
}

port.on('message', (m: ToDataPlane) => {
  if (m.type === 'log-level') {
    log.level = m.level
    return
  }
  if (m.type === 'add') return add(m)
  const h = hosted.get(m.key)
  if (h === undefined) return
  switch (m.type) {
    case 'start':
      h.chain = h.chain.then(() => start(h, m)).catch((err: unknown) => {
        send({ type: 'failed', key: h.key, message: describeError(err) })
      })
      return
    case 'credential':
      // After the build (which loads the unpacking code); in order with start and stop.
      h.chain = h.chain.then(() => {
        receive(h, m.credential)
        report(h)
      })
      return
    case 'fail':
      h.credentials.fail(m.reason)
      return
    case 'metrics':
      void h.registry.getMetricsAsJSON().then((metrics) => send({ type: 'metrics', id: m.id, metrics }))
      return
    case 'stop':
      h.chain = h.chain.catch(() => undefined).then(() => stop(h, m.deadlineMs))
  }
})
