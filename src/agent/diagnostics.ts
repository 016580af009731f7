import type { Server } from 'node:http'
import { Registry } from '../core/metrics.ts'
import { createHttpServer, sendJson } from '../core/http.ts'
import { type Health, Lifecycle } from '../core/lifecycle.ts'
import { closeServer, formatAddress, isLoopback, isLoopbackHost, listen, removeSocketFile, type ListenAddress } from '../core/listener.ts'

export interface Readiness {
  status: 'ok' | 'unavailable'
  services: Record<string, { status: string; reason?: string }>
}

/**
 * The host part of a `Host` header (`name`, `name:port`, `[v6]`, `[v6]:port`), or
 * undefined when it is none of these.
 */
function hostOf(header: string | undefined): string | undefined {
  if (header === undefined) return undefined
  const m = /^(\[[0-9A-Fa-f:.]+\]|[^:[\]]+)(?::\d{1,5})?$/.exec(header)
  return m ? m[1] : undefined
}

/**
 * `/livez` (the process answers), `/readyz` (200 only while the identity is valid and every
 * service listens) and `/metrics` (Prometheus text). Read-only; no secrets in any of them.
 *
 * Bound to loopback, it answers only requests whose `Host` is a loopback name or address:
 * a web page in a browser on this host could otherwise read `/readyz` (instance ids, lock
 * reasons) by pointing its own DNS name at 127.0.0.1 (DNS rebinding). Bound to another
 * address (Prometheus scraping a pod IP), any `Host` is answered.
 */
export class DiagnosticsServer {
  readonly name = 'diagnostics'
  readonly #server: Server
  readonly #listen: ListenAddress
  readonly #life = new Lifecycle('diagnostics')
  #bound: ListenAddress | undefined
  /** Set once bound to a loopback TCP address. */
  #loopbackHostsOnly = false

  /** `metrics` renders the Prometheus text (the agent's registry and its workers', summed). */
  constructor(listenAddr: ListenAddress, metrics: () => Promise<string>, readiness: () => Readiness) {
    this.#listen = listenAddr
    this.#server = createHttpServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0]
      if (this.#loopbackHostsOnly) {
        const host = hostOf(req.headers.host)
        if (host === undefined || !isLoopbackHost(host)) {
          return sendJson(res, 403, { error: { code: 'ERR_ACCESS_DENIED', message: 'the Host header must be a loopback name or address (DNS rebinding protection)' } })
        }
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') return sendJson(res, 405, { error: { code: 'ERR_METHOD_NOT_ALLOWED', message: 'GET only' } })
      if (path === '/livez') return sendJson(res, 200, { status: 'ok' })
      if (path === '/readyz') {
        const r = readiness()
        return sendJson(res, r.status === 'ok' ? 200 : 503, r)
      }
      if (path === '/metrics') {
        metrics().then((text) => {
          res.writeHead(200, { 'content-type': Registry.PROMETHEUS_CONTENT_TYPE })
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
    this.#loopbackHostsOnly = this.#bound.kind === 'tcp' && isLoopback(this.#bound)
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
