/**
 * The local Kubernetes API proxy: kubectl talks plain HTTP to a loopback port (or a unix
 * socket), the agent forwards to the API server over mutual TLS with the client
 * certificate it holds in memory.
 *
 * An HTTP/1.1 pass-through (`connection.ts`): each kubectl connection is paired with its
 * own connection to the API server; request heads are parsed (llhttp) and rewritten, bodies
 * and answers pass through as bytes. Not the `http-proxy` package: it destroys upgrades that
 * are not WebSocket (so SPDY exec and port-forward die) and keeps upstream watch requests
 * running after the client has gone away.
 */
import net from 'node:net'
import type { TlsClientCredential } from '../../credentials/credentials.ts'
import { MemidError, describeError } from '../../core/errors.ts'
import type { Logger } from '../../core/log.ts'
import { ConnectionTracker, closeServer, formatAddress, LocalAccess, removeSocketFile, type ListenAddress } from '../../core/listener.ts'
import { bindListener, speaksForService } from '../../core/shared-port.ts'
import { credentialHealth, type Health, type Service, type ServiceDeps } from '../service.ts'
import { Lifecycle } from '../../core/lifecycle.ts'
import { resolveKubeProxyConfig, type KubeProxyConfig, type ResolvedKubeProxyConfig } from './config.ts'
import { ProxyConnection, type ProxyHost } from './connection.ts'
import { KubeProxyMetrics } from './metrics.ts'
import { CONNECT_TIMEOUT_MS, UpstreamDialer } from './upstream-dialer.ts'

export type { KubeProxyConfig } from './config.ts'
export { DEFAULT_ALLOWED_HOSTS } from './config.ts'
export { MAX_HEADER_BYTES } from './connection.ts'

/** Options tests and benchmarks may set; the agent uses the defaults. */
export interface KubeProxyTuning {
  /** TCP + TLS handshake limit towards the API server; 15 s by default. */
  connectTimeoutMs?: number
  /** A request head must arrive within this (else 408); 30 s by default. */
  headersTimeoutMs?: number
  /** An idle kubectl connection is closed after this; 30 s by default. */
  idleTimeoutMs?: number
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
  return new KubeProxyService(cfg, {
    connectTimeoutMs: tuning.connectTimeoutMs ?? CONNECT_TIMEOUT_MS,
    headersTimeoutMs: tuning.headersTimeoutMs ?? 30_000,
    idleTimeoutMs: tuning.idleTimeoutMs ?? 30_000,
  }, deps)
}

class KubeProxyService implements Service, ProxyHost {
  readonly name: string
  readonly #cfg: ResolvedKubeProxyConfig
  readonly #deps: ServiceDeps<TlsClientCredential>
  readonly #log: Logger
  readonly #metrics: KubeProxyMetrics
  readonly #tuning: Required<KubeProxyTuning>
  readonly #tracker = new ConnectionTracker()
  readonly #access: LocalAccess
  readonly #server: net.Server
  readonly #conns = new Set<ProxyConnection>()
  #bound: ListenAddress | undefined
  readonly #life: Lifecycle
  #dialer: UpstreamDialer | undefined
  #sweeper: NodeJS.Timeout | undefined
  #upstreamError: string | undefined
  #activeUpgrades = 0
  #activeWatches = 0
  #refusedHosts = 0
  #refusedLoggedAt = -Infinity
  readonly #onRenewed = (cred: TlsClientCredential) => this.#rotate(cred)

  constructor(cfg: ResolvedKubeProxyConfig, tuning: Required<KubeProxyTuning>, deps: ServiceDeps<TlsClientCredential>) {
    this.name = `kube-proxy:${cfg.cluster}`
    this.#life = new Lifecycle(this.name)
    this.#cfg = cfg
    this.#deps = deps
    this.#tuning = tuning
    this.#log = deps.logger.child({ service: this.name })
    this.#metrics = new KubeProxyMetrics(deps.metrics, cfg.cluster)
    this.#access = new LocalAccess(this.name, cfg.exposure, { logger: this.#log, metrics: deps.metrics, clock: deps.clock })
    // Nothing is read from a connection before its user is known; an upgraded connection
    // half-closes as a pipe does.
    this.#server = net.createServer({ pauseOnConnect: true, noDelay: true, allowHalfOpen: true })
    this.#server.on('connection', (socket: net.Socket) => this.#accept(socket))
  }

  get address(): string {
    return formatAddress(this.#bound ?? this.#cfg.listen)
  }

  get stopping(): boolean {
    return this.#life.state === 'stopping' || this.#life.state === 'stopped'
  }

  async start(): Promise<void> {
    this.#life.beginStart()
    this.#bound = await bindListener(this.#server, this.#cfg.listen, this.#deps.sharedPort)
    this.#life.listening()
    this.#deps.credentials.on('renewed', this.#onRenewed)
    // Headers and keep-alive timeouts: one timer for every connection, not one per request.
    this.#sweeper = setInterval(() => {
      const now = performance.now()
      for (const c of this.#conns) c.sweep(now, this.#tuning.headersTimeoutMs, this.#tuning.idleTimeoutMs)
    }, Math.min(1000, this.#tuning.headersTimeoutMs, this.#tuning.idleTimeoutMs)).unref()
    this.#log.info({ listen: this.address, upstream: this.#deps.credentials.peek()?.upstream.uri }, 'kube proxy listening')
    if (speaksForService(this.#deps.sharedPort)) this.#access.announce(this.#bound)
  }

  async stop(deadlineMs: number): Promise<void> {
    const was = this.#life.beginStop()
    if (was === undefined) return
    this.#deps.credentials.off('renewed', this.#onRenewed)
    clearInterval(this.#sweeper)
    const closed = closeServer(this.#server)
    // Idle connections close now; the others once their exchange is over (or at the deadline).
    for (const c of this.#conns) c.stop()
    await this.#tracker.drain(deadlineMs)
    for (const c of this.#conns) c.destroy()
    await closed
    this.#dialer?.retire()
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

  #accept(socket: net.Socket): void {
    this.#tracker.add(socket)
    if (this.stopping) return void socket.destroy()
    // The lookup runs before a byte is read; the connection is served (or refused, request by request) after it.
    void this.#access.check(socket).then((refusal) => {
      if (socket.destroyed) return
      if (this.stopping) return void socket.destroy()
      this.#conns.add(new ProxyConnection(this, socket, refusal))
    })
  }

  // ProxyHost: what each connection asks of the service.

  /** The dialer for the current credential, or the reason there is none. */
  dialer(): UpstreamDialer | MemidError {
    let cred: TlsClientCredential
    try {
      cred = this.#deps.credentials.current()
    } catch (err) {
      return err instanceof MemidError ? err : new MemidError('ERR_NOT_READY', describeError(err))
    }
    if (this.#dialer === undefined || this.#dialer.credential !== cred) this.#rotate(cred)
    return this.#dialer as UpstreamDialer
  }

  hostAllowed(host: string | undefined): boolean {
    if (this.#cfg.allowedHosts.allows(host)) return true
    // A hostile page can send these in a loop: one line per 10 s at most, with a count.
    this.#refusedHosts++
    const now = this.#deps.clock.now()
    if (now - this.#refusedLoggedAt >= 10_000) {
      this.#log.warn({ host: String(host ?? '').slice(0, 100), refused: this.#refusedHosts }, 'kube proxy refused requests with a foreign Host header')
      this.#refusedLoggedAt = now
      this.#refusedHosts = 0
    }
    return false
  }

  upstreamAnswered(seconds: number): void {
    if (this.#upstreamError !== undefined) {
      this.#log.info('kube API server reachable again')
      this.#upstreamError = undefined
    }
    this.#metrics.upstreamLatency(seconds)
  }

  upstreamFailed(err: Error, dialer: UpstreamDialer): string {
    const uri = dialer.credential.upstream.uri
    const message = `memid: cannot reach the Kubernetes API server ${uri}: ${describeError(err)}`
    if (this.#upstreamError === undefined) this.#log.warn({ upstream: uri, reason: describeError(err) }, 'kube API server unreachable')
    this.#upstreamError = `API server unreachable: ${describeError(err)}`
    return message
  }

  counted(status: number): void {
    this.#metrics.request(status)
  }

  watch(delta: 1 | -1): void {
    this.#activeWatches += delta
    if (delta === 1) this.#metrics.watchOpened()
    else this.#metrics.watchClosed()
  }

  upgrade(delta: 1 | -1): void {
    this.#activeUpgrades += delta
    if (delta === 1) this.#metrics.upgradeOpened()
    else this.#metrics.upgradeClosed()
  }

  closed(conn: ProxyConnection): void {
    this.#conns.delete(conn)
  }

  /**
   * A new credential: new requests dial with it. Idle connections let go of their upstream
   * connection now, busy ones when their exchange ends; open watches and upgrades keep
   * theirs until they end.
   */
  #rotate(cred: TlsClientCredential): void {
    if (this.#dialer?.credential === cred || this.stopping) return
    const old = this.#dialer
    this.#dialer = new UpstreamDialer(cred, { connectTimeoutMs: this.#tuning.connectTimeoutMs })
    if (old === undefined) return
    old.retire()
    for (const c of this.#conns) c.renewed()
    this.#log.debug({ serial: cred.serial }, 'kube proxy switched to the renewed certificate')
  }
}
