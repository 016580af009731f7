import type { Server, ServerResponse } from 'node:http'
import { MemidError } from '../core/errors.ts'
import { Router, createHttpServer, sendJson } from '../core/http.ts'
import { type Health, Lifecycle } from '../core/lifecycle.ts'
import { closeServer, listen, parseListenAddress, removeSocketFile, type ListenAddress } from '../core/listener.ts'

export interface ControlHandlers {
  status(): unknown
  kubeconfig(): Promise<string>
  knownHosts(): string
}

/**
 * The agent's control socket (0600 in a 0700 directory): status, kubeconfig and
 * known-hosts for the CLI. It serves only public material.
 */
export class ControlSocket {
  readonly name = 'control-socket'
  readonly #server: Server
  readonly #path: string
  readonly #life = new Lifecycle('control-socket')
  #bound: ListenAddress | undefined

  constructor(path: string, h: ControlHandlers) {
    this.#path = path
    const r = new Router()
    r.on('GET', '/v1/status', (_q, res) => sendJson(res, 200, h.status()))
    r.on('GET', '/v1/kubeconfig', async (_q, res) => text(res, await h.kubeconfig()))
    r.on('GET', '/v1/known-hosts', (_q, res) => text(res, h.knownHosts()))
    this.#server = createHttpServer((req, res) => void r.handle(req, res))
    this.#server.headersTimeout = 5_000
    this.#server.requestTimeout = 10_000
    this.#server.on('clientError', (_err, socket) => socket.destroy())
  }

  get path(): string {
    return this.#path
  }

  get address(): string {
    return this.#path
  }

  async start(): Promise<void> {
    this.#life.beginStart()
    const addr = parseListenAddress(this.#path)
    if (addr.kind !== 'unix') throw new MemidError('ERR_CONFIG', 'control_socket: must be an absolute socket path')
    this.#bound = await listen(this.#server, addr)
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

function text(res: ServerResponse, body: string): void {
  res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body) })
  res.end(body)
}
