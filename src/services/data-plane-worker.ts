/**
 * One worker thread of a service's data plane (see `workers.ts`): the same service, built
 * from the same options, on the shared port. Credentials arrive from the main thread by
 * message; log lines and metrics go back the same way, so this thread writes nothing.
 */
import { parentPort, workerData } from 'node:worker_threads'
import { Registry } from 'prom-client'
import { systemClock } from '../core/clock.ts'
import { describeError } from '../core/errors.ts'
import { createLogger } from '../core/log.ts'
import { SharedPort } from '../core/shared-port.ts'
import { serviceFromOptions } from './registry.ts'
import type { Service } from './service.ts'
import type { DataPlaneInit, FromDataPlane, ToDataPlane, WorkerState } from './workers.ts'

const port = parentPort
if (port === null) throw new Error('services/data-plane-worker.ts runs only as a worker thread')
const init = workerData as DataPlaneInit
const send = (m: FromDataPlane) => port.postMessage(m)
const log = createLogger({ level: init.logLevel, sink: { write: (line) => send({ type: 'log', line }) } })

/** How often the worker's health and counters are compared with what it last reported. */
const STATE_EVERY_MS = 500

const registry = new Registry()
const shared = new SharedPort(init.index)
// The main thread resolved these options already; any error would have stopped it there.
const slot = serviceFromOptions(init.options, init.at).open(systemClock)
let service: Service | undefined
let reported = ''
// Built at once, while the main thread is still joining; it listens on `start`. Messages
// that change the service run one after another on this chain.
let chain: Promise<unknown> = slot.build({ logger: log, clock: systemClock, metrics: registry, sharedPort: shared }).then((s) => (service = s))

function report(): void {
  if (service === undefined) return
  const state: WorkerState = {
    health: service.health(), describe: service.describe?.() ?? {}, accepted: shared.accepted, open: shared.open,
    ...(slot.credential.state().status !== 'pending' ? { serial: (slot.credential.state() as { serial: string }).serial } : {}),
  }
  const text = JSON.stringify(state)
  if (text === reported) return
  reported = text
  send({ type: 'state', state })
}

async function start(m: ToDataPlane & { type: 'start' }): Promise<void> {
  if (m.credential !== undefined) slot.receive(m.credential)
  if (m.failure !== undefined) slot.credential.fail(m.failure)
  if (service === undefined) throw new Error('the service was not built')
  shared.port = m.port
  await service.start()
  // Its state goes first, so the pool never counts it serving without one.
  report()
  const bound = /:(\d+)$/.exec(service.address)
  send({ type: 'ready', port: bound ? Number(bound[1]) : m.port })
  setInterval(report, STATE_EVERY_MS).unref()
}

port.on('message', (m: ToDataPlane) => {
  switch (m.type) {
    case 'start':
      chain = chain.then(() => start(m)).catch((err: unknown) => {
        send({ type: 'failed', message: describeError(err) })
        process.exit(1)
      })
      return
    case 'credential':
      slot.receive(m.credential)
      report()
      return
    case 'fail':
      slot.credential.fail(m.reason)
      return
    case 'metrics':
      void registry.getMetricsAsJSON().then((metrics) => send({ type: 'metrics', id: m.id, metrics }))
      return
    case 'stop':
      chain = chain.catch(() => undefined).then(async () => {
        try {
          await service?.stop(m.deadlineMs)
        } catch (err) {
          log.warn({ reason: describeError(err) }, 'data-plane worker did not stop cleanly')
        }
        // Ends the thread even if a pooled upstream session still holds the loop open.
        process.exit(0)
      })
  }
})
