import http from 'node:http'
import type { Registry } from 'prom-client'
import { sendJson } from '../core/http.ts'
import { type Health, Lifecycle } from '../core/lifecycle.ts'
import { closeServer, formatAddress, listen, removeSocketFile, type ListenAddress } from '../core/listener.ts'

export interface Readiness {
  status: 'ok' | 'unavailable'
  services: Record<string, { status: string; reason?: string }>
}

/**
 * `/livez` (the process answers), `/readyz` (200 only while the identity is valid and every
 * service listens) and `/metrics` (Prometheus text). Read-only; no secrets in any of them.
 */
export class DiagnosticsServer {
  readonly name = 'diagnostics'
  readonly #server: http.Server
  readonly #listen: ListenAddress
  readonly #life = new Lifecycle('diagnostics')
  #bound: ListenAddress | undefined

  constructor(listenAddr: ListenAddress, registry: Registry, readiness: () => Readiness) {
    this.#listen = listenAddr
    this.#server = http.createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0]
      if (req.method !== 'GET' && req.method !== 'HEAD') return sendJson(res, 405, { error: { code: 'ERR_METHOD_NOT_ALLOWED', message: 'GET only' } })
      if (path === '/livez') return sendJson(res, 200, { status: 'ok' })
      if (path === '/readyz') {
        const r = readiness()
        return sendJson(res, r.status === 'ok' ? 200 : 503, r)
      }
      if (path === '/metrics') {
        registry.metrics().then((text) => {
          res.writeHead(200, { 'content-type': registry.contentType })
          res.end(text)
        }, () => sendJson(res, 500, { error: { code: 'ERR_INTERNAL', message: 'metrics unavailable' } }))
        return
      }
      sendJson(res, 404, { error: { code: 'ERR_NOT_FOUND', message: 'try /livez, /readyz or /metrics' } })
    })
    this.#server.headersTimeout = 5_000
    this.#server.requestTimeout = 10_000
    this.#server.on('clientError', (_err, socket) => socket.destroy())
  }

  get address(): string {
    return formatAddress(this.#bound ?? this.#listen)
  }

  async start(): Promise<void> {
    this.#life.beginStart()
    this.#bound = await listen(this.#server, this.#listen)
    this.#life.listening()
  }

  /** Requests here are short: open ones are cut rather than drained. */
  async stop(_deadlineMs = 0): Promise<void> {
    if (this.#life.beginStop() === undefined) return
    this.#server.closeAllConnections()
    await closeServer(this.#server)
    if (this.#bound) removeSocketFile(this.#bound)
    this.#life.stopped()
  }

  health(): Health {
    return this.#life.health() ?? { status: 'ok' }
  }
}
