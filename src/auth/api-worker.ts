/**
 * One worker thread of `memid auth start --workers N`: the agent API on the shared port
 * with its own store connection. The main thread keeps the admin socket, migrations and
 * the retention sweep; the CA keys and the server identity arrive by postMessage.
 */
import { parentPort, threadId, workerData } from 'node:worker_threads'
import { systemClock } from '../core/clock.ts'
import { describeError, MemidError } from '../core/errors.ts'
import { createLogger } from '../core/log.ts'
import { openStore } from '../storage/open.ts'
import { AuthService } from './auth-service.ts'
import { serveAgentApi } from './server.ts'
import type { ApiWorkerInit, FromWorker, ToWorker } from './workers.ts'

const port = parentPort
if (port === null) throw new Error('auth/api-worker.ts runs only as a worker thread')
const init = workerData as ApiWorkerInit
const log = createLogger({ format: init.logFormat, base: { component: 'auth', worker: init.index, thread: threadId } })
const send = (m: FromWorker) => port.postMessage(m)

port.once('message', (m: ToWorker) => {
  if (m.type !== 'keys') return
  void (async () => {
    // The main thread migrated the store before starting workers: this open finds it current.
    const store = await openStore(init.storage)
    try {
      const auth = new AuthService({ store, cas: m.cas, clock: systemClock, logger: log })
      const api = await serveAgentApi({
        auth, cas: m.cas, identity: m.identity, logger: log, reusePort: true,
        addr: { kind: 'tcp', host: init.host, port: init.port }, ...(init.joinRate !== undefined ? { joinRate: init.joinRate } : {}),
      })
      if (api.address.kind !== 'tcp') throw new MemidError('ERR_INTERNAL', 'the agent API must listen on TCP')
      port.on('message', (s: ToWorker) => {
        if (s.type !== 'stop') return
        void api.stop(s.deadlineMs).then(() => store.close()).finally(() => {
          send({ type: 'stopped', served: api.served() })
          port.close()
        })
      })
      log.debug({ port: api.address.port }, 'auth worker serving')
      send({ type: 'ready', port: api.address.port })
    } catch (err) {
      await store.close()
      throw err
    }
  })().catch((err: unknown) => {
    send({ type: 'failed', code: err instanceof MemidError ? err.code : 'ERR_INTERNAL', message: describeError(err) })
    port.close()
  })
})
