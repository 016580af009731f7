/**
 * The local Kubernetes API proxy: kubectl talks plain HTTP to a loopback port (or a unix
 * socket), the agent forwards to the API server over mutual TLS with the client
 * certificate it holds in memory.
 *
 * Written on node:http / node:https / node:http2 rather than the `http-proxy` package:
 * http-proxy destroys upgrades that are not WebSocket (so SPDY exec and port-forward die)
 * and keeps upstream watch requests running after the client has gone away.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import type net from 'node:net'
import type { Duplex } from 'node:stream'
import type { TlsClientCredential } from '../../credentials/credentials.ts'
import { MemidError, describeError } from '../../core/errors.ts'
import { createHttpServer } from '../../core/http.ts'
import type { Logger } from '../../core/log.ts'
import { ConnectionTracker, closeServer, formatAddress, LocalAccess, removeSocketFile, type ListenAddress, type LocalRefusal } from '../../core/listener.ts'
import { bindListener, speaksForService } from '../../core/shared-port.ts'
import { credentialHealth, type Health, type Service, type ServiceDeps } from '../service.ts'
import { Lifecycle } from '../../core/lifecycle.ts'
import { resolveKubeProxyConfig, type KubeProxyConfig, type ResolvedKubeProxyConfig } from './config.ts'
import { isDiscovery, isWatch } from './headers.ts'
import { KubeProxyMetrics } from './metrics.ts'
import { writeRawStatus, writeStatus } from './status.ts'
import { pipeUpgrade } from './upgrade.ts'
import { CONNECT_TIMEOUT_MS, UpstreamConnections, type ForwardHooks, type UpstreamProtocol } from './upstream-connections.ts'

export type { KubeProxyConfig } from './config.ts'
export { DEFAULT_ALLOWED_HOSTS } from './config.ts'
export type { UpstreamProtocol } from './upstream-connections.ts'

/**
 * Request headers larger than this (all of them together) get 431. kubectl sends about
 * one kilobyte; the cap keeps a hostile local client from making the agent buffer more.
 */
export const MAX_HEADER_BYTES = 16 * 1024

/** Options tests and benchmarks may set; the agent uses the defaults. */
export interface KubeProxyTuning {
  /** `auto` (default) uses HTTP/2 for ordinary requests when the API server offers it. */
  upstreamProtocol?: UpstreamProtocol
  /** TCP + TLS handshake limit towards the API server; 15 s by default. */
  connectTimeoutMs?: number
}

/**
 * Builds the kube proxy for one cluster. `start` binds the listener; requests are
 * forwarded with whatever `deps.credentials.current()` holds at that moment.
 */
export function createKubeProxyService(cfg: KubeProxyConfig & KubeProxyTuning, deps: ServiceDeps<TlsClientCredential>): Service {
  return buildKubeProxyService(resolveKubeProxyConfig(cfg), deps, cfg)
}

/** Builds the proxy from settings the agent already resolved. */
export function buildKubeProxyService(cfg: ResolvedKubeProxyConfig, deps: ServiceDeps<TlsClientCredential>, tuning: KubeProxyTuning = {}): Service {
  return new KubeProxyService(cfg, { upstreamProtocol: tuning.upstreamProtocol ?? 'auto', connectTimeoutMs: tuning.connectTimeoutMs ?? CONNECT_TIMEOUT_MS }, deps)
}

class KubeProxyService implements Service {
  readonly name: string
  readonly #cfg: ResolvedKubeProxyConfig
  readonly #deps: ServiceDeps<TlsClientCredential>
  readonly #log: Logger
  readonly #metrics: KubeProxyMetrics
  readonly #tuning: Required<KubeProxyTuning>
  readonly #tracker = new ConnectionTracker()
  readonly #access: LocalAccess
  /** Connections whose user is still being looked up; requests on them wait. */
  readonly #checking = new WeakMap<Duplex, Promise<void>>()
  /** Connections from a user who may not use the proxy: every request gets 403. */
  readonly #refusedConns = new WeakMap<Duplex, LocalRefusal>()
  readonly #server: Server
  #bound: ListenAddress | undefined
  readonly #life: Lifecycle
  #conns: UpstreamConnections | undefined
  readonly #retired = new Set<UpstreamConnections>()
  #upstreamError: string | undefined
  #activeUpgrades = 0
  #activeWatches = 0
  #refusedHosts = 0
  #refusedLoggedAt = -Infinity
  readonly #onRenewed = (cred: TlsClientCredential) => this.#rotate(cred)
  /** Shared by every forwarded request. */
  readonly #forwardHooks: ForwardHooks = {
    onResponse: (_status, seconds) => {
      this.#upstreamOk()
      this.#metrics.upstreamLatency(seconds)
    },
    onUpstreamError: (err, req, res) => writeStatus(res, 502, 'ServiceUnavailable', this.#upstreamFailed(err), isDiscovery(req.url ?? '')),
  }

  constructor(cfg: ResolvedKubeProxyConfig, tuning: Required<KubeProxyTuning>, deps: ServiceDeps<TlsClientCredential>) {
    this.name = `kube-proxy:${cfg.cluster}`
    this.#life = new Lifecycle(this.name)
    this.#cfg = cfg
    this.#deps = deps
    this.#tuning = tuning
    this.#log = deps.logger.child({ service: this.name })
    this.#metrics = new KubeProxyMetrics(deps.metrics, cfg.cluster)
    this.#access = new LocalAccess(this.name, cfg.exposure, { logger: this.#log, metrics: deps.metrics, clock: deps.clock })
    this.#server = createHttpServer({
      maxHeaderSize: MAX_HEADER_BYTES,
      // Watches and `logs -f` stay open for as long as kubectl wants: no idle timeout.
      requestTimeout: 0,
      headersTimeout: 30_000,
      keepAliveTimeout: 30_000,
    })
    this.#server.on('connection', (socket: net.Socket) => {
      this.#tracker.add(socket)
      // The lookup runs while the request arrives; nothing is forwarded before it answers.
      this.#checking.set(socket, this.#access.check(socket).then((refusal) => {
        this.#checking.delete(socket)
        if (refusal !== undefined) this.#refusedConns.set(socket, refusal)
      }))
    })
    this.#server.on('request', (req, res) => this.#onRequest(req, res))
    this.#server.on('upgrade', (req, socket, head) => this.#onUpgrade(req, socket, head))
    this.#server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => this.#onClientError(err, socket))
  }

  get address(): string {
    return formatAddress(this.#bound ?? this.#cfg.listen)
  }

  async start(): Promise<void> {
    this.#life.beginStart()
    this.#bound = await bindListener(this.#server, this.#cfg.listen, this.#deps.sharedPort)
    this.#life.listening()
    this.#deps.credentials.on('renewed', this.#onRenewed)
    this.#log.info({ listen: this.address, upstream: this.#deps.credentials.peek()?.upstream.uri }, 'kube proxy listening')
    if (speaksForService(this.#deps.sharedPort)) this.#access.announce(this.#bound)
  }

  async stop(deadlineMs: number): Promise<void> {
    const was = this.#life.beginStop()
    if (was === undefined) return
    this.#deps.credentials.off('renewed', this.#onRenewed)
    const closed = closeServer(this.#server)
    this.#server.closeIdleConnections()
    await this.#tracker.drain(deadlineMs)
    await closed
    this.#conns?.destroy()
    for (const c of this.#retired) c.destroy()
    this.#retired.clear()
    if (was === 'listening' && this.#bound !== undefined) removeSocketFile(this.#bound)
    this.#life.stopped()
  }

  health(): Health {
    const h = this.#life.health() ?? credentialHealth(this.#deps.credentials, 'requests get 503')
    if (h !== undefined) return h
    if (this.#upstreamError !== undefined) return { status: 'degraded', reason: this.#upstreamError }
    return { status: 'ok' }
  }

  describe(): Record<string, unknown> {
    const c = this.#deps.credentials.peek()
    return {
      cluster: this.#cfg.cluster,
      listen: this.address,
      ...(c !== undefined ? { upstream: c.upstream.uri, user: c.user, groups: c.groups, serial: c.serial, notAfter: c.notAfter.toISOString() } : {}),
      activeUpgrades: this.#activeUpgrades,
      activeWatches: this.#activeWatches,
    }
  }

  /** The connections for the current credential, or the reason there is none. */
  #current(): UpstreamConnections | MemidError {
    let cred: TlsClientCredential
    try {
      cred = this.#deps.credentials.current()
    } catch (err) {
      return err instanceof MemidError ? err : new MemidError('ERR_NOT_READY', describeError(err))
    }
    if (this.#conns === undefined || this.#conns.credential !== cred) this.#rotate(cred)
    return this.#conns as UpstreamConnections
  }

  /** A new credential: new connections for new requests; the old ones finish what they carry. */
  #rotate(cred: TlsClientCredential): void {
    if (this.#conns?.credential === cred || this.#life.state === 'stopping' || this.#life.state === 'stopped') return
    const old = this.#conns
    const conns: UpstreamConnections = new UpstreamConnections(cred, {
      protocol: this.#tuning.upstreamProtocol,
      connectTimeoutMs: this.#tuning.connectTimeoutMs,
      onClosed: () => this.#retired.delete(conns),
    })
    this.#conns = conns
    if (old !== undefined) {
      // Kept until its last open request ends, so stop() can close what is left.
      this.#retired.add(old)
      old.retire()
      this.#log.debug({ serial: cred.serial }, 'kube proxy switched to the renewed certificate')
    }
  }

  #hostAllowed(req: IncomingMessage): boolean {
    if (this.#cfg.allowedHosts.allows(req.headers.host)) return true
    // A hostile page can send these in a loop: one line per 10 s at most, with a count.
    this.#refusedHosts++
    const now = this.#deps.clock.now()
    if (now - this.#refusedLoggedAt >= 10_000) {
      this.#log.warn({ host: String(req.headers.host ?? '').slice(0, 100), refused: this.#refusedHosts }, 'kube proxy refused requests with a foreign Host header')
      this.#refusedLoggedAt = now
      this.#refusedHosts = 0
    }
    return false
  }

  #upstreamFailed(err: Error): string {
    const uri = this.#conns?.credential.upstream.uri ?? 'the API server'
    const message = `memid: cannot reach the Kubernetes API server ${uri}: ${describeError(err)}`
    if (this.#upstreamError === undefined) this.#log.warn({ upstream: uri, reason: describeError(err) }, 'kube API server unreachable')
    this.#upstreamError = `API server unreachable: ${describeError(err)}`
    return message
  }

  #upstreamOk(): void {
    if (this.#upstreamError !== undefined) this.#log.info('kube API server reachable again')
    this.#upstreamError = undefined
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    const checking = this.#checking.get(req.socket)
    if (checking !== undefined) return void checking.then(() => this.#onRequest(req, res))
    const watch = isWatch(req.url ?? '')
    if (watch) {
      this.#activeWatches++
      this.#metrics.watchOpened()
    }
    // 'close' fires once; on() spares the wrapper once() would allocate for every request.
    res.on('close', () => {
      // 499 (nginx's "client closed request") when the client left before any answer.
      this.#metrics.request(res.headersSent ? res.statusCode : 499)
      if (watch) {
        this.#activeWatches--
        this.#metrics.watchClosed()
      }
    })
    const refusal = this.#refusedConns.get(req.socket)
    if (refusal !== undefined) {
      res.shouldKeepAlive = false
      return writeStatus(res, 403, 'Forbidden', `memid: ${refusal.message}`, isDiscovery(req.url ?? ''))
    }
    if (!this.#hostAllowed(req)) {
      return writeStatus(res, 403, 'Forbidden', 'memid: the Host header is not in this proxy\'s allowed hosts (DNS rebinding protection)')
    }
    const conns = this.#current()
    if (conns instanceof MemidError) return writeStatus(res, 503, 'ServiceUnavailable', `memid: ${conns.message}`, isDiscovery(req.url ?? ''))
    conns.forward(req, res, this.#forwardHooks)
  }

  #onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => socket.destroy())
    const checking = this.#checking.get(socket)
    if (checking === undefined) return this.#upgradeChecked(req, socket, head)
    // Held until the answer: bytes sent after the upgrade request stay in the socket's buffer.
    socket.pause()
    void checking.then(() => this.#upgradeChecked(req, socket, head))
  }

  #upgradeChecked(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const refusal = this.#refusedConns.get(socket)
    if (refusal !== undefined) {
      this.#metrics.request(403)
      return writeRawStatus(socket, 403, 'Forbidden', `memid: ${refusal.message}`)
    }
    if (!this.#hostAllowed(req)) {
      this.#metrics.request(403)
      return writeRawStatus(socket, 403, 'Forbidden', 'memid: the Host header is not in this proxy\'s allowed hosts (DNS rebinding protection)')
    }
    const conns = this.#current()
    if (conns instanceof MemidError) {
      this.#metrics.request(503)
      return writeRawStatus(socket, 503, 'ServiceUnavailable', `memid: ${conns.message}`)
    }
    pipeUpgrade(req, socket, head, conns, {
      onStatus: (status, seconds) => {
        this.#upstreamOk()
        this.#metrics.request(status)
        this.#metrics.upstreamLatency(seconds)
        if (status === 101) {
          this.#activeUpgrades++
          this.#metrics.upgradeOpened()
        }
      },
      onUpstreamError: (err) => {
        this.#metrics.request(502)
        this.#upstreamFailed(err)
      },
      onClosed: () => {
        this.#activeUpgrades--
        this.#metrics.upgradeClosed()
      },
    })
  }

  /** Unparseable bytes, oversized headers, timeouts: answer if the socket can still take it, never throw. */
  #onClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy()
      return
    }
    if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
      this.#metrics.request(408)
      return writeRawStatus(socket, 408, 'Timeout', 'memid: the request headers did not arrive in time')
    }
    if (err.code === 'HPE_HEADER_OVERFLOW') {
      this.#metrics.request(431)
      return writeRawStatus(socket, 431, 'BadRequest', `memid: request headers exceed ${MAX_HEADER_BYTES} bytes`)
    }
    this.#metrics.request(400)
    writeRawStatus(socket, 400, 'BadRequest', 'memid: malformed HTTP request')
  }
}
