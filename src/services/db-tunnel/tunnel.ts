import net from 'node:net'
import type tls from 'node:tls'
import type { TlsClientCredential } from '../../credentials/credentials.ts'
import { UpstreamSessions } from '../../credentials/tls-sessions.ts'
import { describeError, hasCode } from '../../core/errors.ts'
import type { Logger } from '../../core/log.ts'
import { closeServer, ConnectionTracker, formatAddress, hostPort, LocalAccess, removeSocketFile, type ListenAddress, type LocalRefusal } from '../../core/listener.ts'
import { bindListener, speaksForService } from '../../core/shared-port.ts'
import { credentialHealth, type Health, type Service, type ServiceDeps } from '../service.ts'
import { Lifecycle } from '../../core/lifecycle.ts'
import type { ResolvedDbTunnelConfig } from './config.ts'
import { socketPort } from './socket-name.ts'
import { TunnelMetrics, type TunnelStats } from './metrics.ts'
import { errorResponse, printable, readClientHello, SqlState, TunnelRefusal, type ErrorFields } from './postgres.ts'
import { DirectReads, relay, RELAY_HIGH_WATER_MARK } from './relay.ts'
import { classify, dialUpstream, firstChunk } from './upstream.ts'

/** How long a client may take to send its startup packet (PostgreSQL allows 60 s). */
const STARTUP_TIMEOUT_MS = 15_000
/** Connections allowed to be negotiating on top of max_connections, before the kernel-level cut. */
const NEGOTIATION_SLACK = 64
/** How long a refused or finished socket may linger half-closed before it is destroyed. */
const LINGER_MS = 5_000

/**
 * One database tunnel: a local plaintext listener, and for every client a fresh
 * upstream TLS connection made with the credential current at that moment. Open
 * connections keep the credential they started with across renewals.
 */
export class DbTunnelService implements Service, TunnelStats {
  readonly name: string
  readonly service: string
  readonly #cfg: ResolvedDbTunnelConfig
  readonly #deps: ServiceDeps<TlsClientCredential>
  readonly #log: Logger
  readonly #metrics: TunnelMetrics
  readonly #access: LocalAccess
  readonly #tracker = new ConnectionTracker()
  readonly #open = new Set<net.Socket>()
  readonly #closedBytes: [number, number] = [0, 0]
  #server: net.Server | undefined
  #bound: ListenAddress | undefined
  readonly #life: Lifecycle
  /** Connections holding (or dialing) an upstream session; what max_connections limits. */
  #sessions = 0
  #lastUpstreamError: string | undefined
  /** The upstream TLS session new connections resume (stunnel does the same); dropped on renewal. */
  readonly #tlsSessions = new UpstreamSessions(() => this.#deps.clock.now())
  readonly #resume = { sessions: this.#tlsSessions, current: () => this.#deps.credentials.peek() }
  readonly #onRenewed = () => this.#tlsSessions.drop()

  constructor(cfg: ResolvedDbTunnelConfig, deps: ServiceDeps<TlsClientCredential>) {
    this.#cfg = cfg
    this.#deps = deps
    this.service = cfg.service
    this.name = `db-tunnel:${cfg.service}`
    this.#life = new Lifecycle(this.name)
    this.#log = deps.logger.child({ service: this.name })
    this.#metrics = TunnelMetrics.for(deps.metrics)
    this.#access = new LocalAccess(this.name, cfg.exposure, { logger: this.#log, metrics: deps.metrics, clock: deps.clock })
  }

  get address(): string {
    return formatAddress(this.#bound ?? this.#cfg.address)
  }

  async start(): Promise<void> {
    this.#life.beginStart()
    // Half-open on both legs: a client may shut down its sending side and still read the
    // answer (each direction ends on its own; the socket closes once both have).
    const server = net.createServer({ pauseOnConnect: true, noDelay: true, allowHalfOpen: true, highWaterMark: RELAY_HIGH_WATER_MARK })
    server.maxConnections = this.#cfg.maxConnections + NEGOTIATION_SLACK
    server.on('connection', (socket) => this.#accept(socket))
    server.on('drop', () => this.#metrics.errors.inc({ service: this.service, reason: 'listener_full' }))
    server.on('error', (err) => this.#log.error({ err: describeError(err) }, 'database tunnel listener error'))
    this.#bound = await bindListener(server, this.#cfg.address, this.#deps.sharedPort)
    this.#server = server
    this.#deps.credentials.on('renewed', this.#onRenewed)
    this.#life.listening()
    this.#metrics.add(this)
    this.#log.info({ listen: this.address, protocol: this.#cfg.protocol, user: this.#cfg.username }, 'database tunnel listening')
    if (speaksForService(this.#deps.sharedPort)) this.#access.announce(this.#bound)
  }

  async stop(deadlineMs: number): Promise<void> {
    if (this.#life.beginStop() === undefined) return
    // The server's close callback waits for every connection, so drain before awaiting it.
    const closed = this.#server ? closeServer(this.#server) : Promise.resolve()
    await this.#tracker.drain(deadlineMs)
    await closed
    this.#deps.credentials.off('renewed', this.#onRenewed)
    this.#tlsSessions.drop()
    if (this.#bound) removeSocketFile(this.#bound)
    this.#metrics.remove(this)
    this.#life.stopped()
    this.#log.info('database tunnel stopped')
  }

  health(): Health {
    const h = this.#life.health() ?? credentialHealth(this.#deps.credentials, 'clients get an error naming it')
    if (h !== undefined) return h
    if (this.#lastUpstreamError !== undefined) return { status: 'degraded', reason: this.#lastUpstreamError }
    return { status: 'ok' }
  }

  describe(): Record<string, unknown> {
    const cred = this.#deps.credentials.peek()
    const addr = this.#bound ?? this.#cfg.address
    const db = this.#cfg.database ?? this.#cfg.username
    const connect = this.#cfg.protocol !== 'postgres'
      ? undefined
      : addr.kind === 'tcp'
        ? `psql "host=${addr.host} port=${addr.port} user=${this.#cfg.username} dbname=${db}"`
        : `psql "host=${addr.path.slice(0, addr.path.lastIndexOf('/'))} port=${socketPort(addr.path)} user=${this.#cfg.username} dbname=${db}"`
    return {
      service: this.service,
      protocol: this.#cfg.protocol,
      user: this.#cfg.username,
      ...(this.#cfg.database !== undefined ? { database: this.#cfg.database } : {}),
      ...(cred ? { upstream: hostPort(cred.upstream.host, cred.upstream.port), serial: cred.serial, notAfter: cred.notAfter.toISOString() } : {}),
      activeConnections: this.#open.size,
      maxConnections: this.#cfg.maxConnections,
      ...(connect ? { connect } : {}),
    }
  }

  activeConnections(): number {
    return this.#open.size
  }

  bytes(): [number, number] {
    let up = this.#closedBytes[0]
    let down = this.#closedBytes[1]
    for (const s of this.#open) {
      up += s.bytesRead
      down += s.bytesWritten
    }
    return [up, down]
  }

  #accept(socket: net.Socket): void {
    if (this.#life.state !== 'listening') {
      socket.destroy()
      return
    }
    this.#tracker.add(socket)
    this.#open.add(socket)
    this.#metrics.connections.inc({ service: this.service })
    // A permanent listener: whatever phase the connection is in, a socket error only
    // ends this connection and never reaches the process as an uncaught exception.
    socket.on('error', (err) => this.#log.debug({ err: describeError(err) }, 'client connection error'))
    socket.once('close', () => {
      this.#open.delete(socket)
      this.#closedBytes[0] += socket.bytesRead
      this.#closedBytes[1] += socket.bytesWritten
    })
    // The owner lookup runs while the client negotiates; nothing goes upstream before it answers.
    const allowed = this.#access.check(socket)
    const handle = this.#cfg.protocol === 'postgres' ? this.#handlePostgres(socket, allowed) : this.#handleTls(socket, allowed)
    handle.catch((err: unknown) => {
      this.#log.error({ err: describeError(err) }, 'unexpected error in database tunnel connection')
      socket.destroy()
    })
  }

  async #handlePostgres(client: net.Socket, allowed: Promise<LocalRefusal | undefined>): Promise<void> {
    let hello
    try {
      hello = await readClientHello(client, STARTUP_TIMEOUT_MS)
    } catch (err) {
      if (!(err instanceof TunnelRefusal)) throw err
      this.#count(err.reason, err.message)
      if (err.reason === 'client_closed') client.destroy()
      else this.#answer(client, err.fields)
      return
    }
    const local = await allowed
    if (local !== undefined) {
      // Already logged and counted by the access check; a cancel request is not forwarded either.
      if (hello.kind === 'cancel') return void client.destroy()
      return this.#answer(client, {
        code: SqlState.invalidAuthorization, message: local.message,
        hint: 'run the client as the agent\'s user, or add its user to allowed_users of this tunnel in the agent\'s config',
      })
    }
    if (hello.kind === 'cancel') return this.#forwardCancel(client, hello.packet)

    const refusal = this.#checkStartup(hello.params)
    if (refusal !== undefined) return this.#refuse(client, refusal)
    const credential = this.#credential()
    if (credential instanceof TunnelRefusal) return this.#refuse(client, credential)

    const session = await this.#openSession(client, credential, hello.packet)
    if (session === undefined) return
    this.#splice(client, session.upstream, session.reads)
  }

  async #handleTls(client: net.Socket, allowed: Promise<LocalRefusal | undefined>): Promise<void> {
    // No protocol to answer in: refusals are logged and counted, and the socket closed.
    if (await allowed !== undefined) return void client.destroy()
    if (this.#sessions >= this.#cfg.maxConnections) return this.#drop(client, 'too_many_connections', `max_connections ${this.#cfg.maxConnections} reached`)
    const credential = this.#credential()
    if (credential instanceof TunnelRefusal) return this.#drop(client, credential.reason, credential.message)
    const session = await this.#openSession(client, credential)
    if (session === undefined) return
    this.#splice(client, session.upstream, session.reads)
  }

  /** What the tunnel refuses before it spends an upstream connection. */
  #checkStartup(params: Map<string, string>): TunnelRefusal | undefined {
    const { username, database, maxConnections } = this.#cfg
    const user = params.get('user')
    if (user === undefined || user === '') {
      return this.#refusal('bad_startup', SqlState.invalidAuthorization, 'no PostgreSQL user name specified in startup packet', `connect with -U ${username}`)
    }
    if (user !== username) {
      return this.#refusal('wrong_user', SqlState.invalidAuthorization,
        `this tunnel serves the database user "${username}", not "${printable(user)}"`,
        `connect with -U ${username} (or PGUSER=${username}), or configure another tunnel for "${printable(user)}"`)
    }
    // PostgreSQL itself defaults the database to the user name.
    const db = params.get('database') || user
    if (database !== undefined && db !== database) {
      return this.#refusal('wrong_database', SqlState.invalidAuthorization,
        `this tunnel serves the database "${database}", not "${printable(db)}"`, `connect with -d ${database}`)
    }
    if (this.#sessions >= maxConnections) {
      return this.#refusal('too_many_connections', SqlState.tooManyConnections,
        `too many connections: this tunnel allows ${maxConnections} at a time`,
        'close idle sessions or raise max_connections of this tunnel')
    }
    return undefined
  }

  #credential(): TlsClientCredential | TunnelRefusal {
    try {
      return this.#deps.credentials.current()
    } catch (err) {
      const expired = hasCode(err, 'ERR_IDENTITY_EXPIRED')
      return this.#refusal(
        expired ? 'identity_expired' : 'not_ready',
        expired ? SqlState.invalidAuthorization : SqlState.cannotConnectNow,
        describeError(err),
        'run `memid status` on this host to see why the agent cannot renew its certificates',
      )
    }
  }

  /**
   * Dials upstream and, for PostgreSQL, forwards the startup packet and waits for the
   * server's first answer: with TLS 1.3 a server that refuses our client certificate
   * says so only after the handshake, and that must become an ErrorResponse rather than
   * a closed socket. Returns undefined when the client was answered or is gone.
   */
  async #openSession(client: net.Socket, credential: TlsClientCredential, startup?: Buffer): Promise<{ upstream: tls.TLSSocket; reads?: DirectReads } | undefined> {
    this.#sessions++
    client.once('close', () => this.#sessions--)
    // One controller for both ends of the wait: the client leaving, or the deadline (any
    // reason other than a TunnelRefusal reads as a timeout). Not AbortSignal.timeout and
    // AbortSignal.any: their timer fires even after the session is open, building a
    // DOMException and a composite signal's weak refs per connection (~0.3 ms of CPU each
    // in bench/db-tunnel.ts's profile, a tenth of the tunnel's cost per connection).
    const stop = new AbortController()
    const signal = stop.signal
    const deadline = setTimeout(() => stop.abort(), this.#cfg.connectTimeoutMs)
    const onGone = () => stop.abort(new TunnelRefusal('client_closed', { code: SqlState.connectionFailure, message: 'client went away' }))
    client.once('close', onGone)
    const where = hostPort(credential.upstream.host, credential.upstream.port)
    let upstream: tls.TLSSocket | undefined
    // Only a socket Node dials itself reads through `onread` (see DialOptions.reads).
    const reads = this.#cfg.protocol === 'tls' ? new DirectReads() : undefined
    try {
      upstream = await dialUpstream({ credential, protocol: this.#cfg.protocol, signal, resume: this.#resume, ...(reads ? { reads } : {}) })
      if (startup !== undefined) {
        upstream.write(startup)
        const first = await firstChunk(upstream, signal, where, `the database server at ${where} closed the connection before answering the startup message`)
        client.write(first)
      }
      clearTimeout(deadline)
      client.off('close', onGone)
      this.#lastUpstreamError = undefined
      this.#log.debug({ serial: credential.serial }, 'tunnel session open')
      return reads ? { upstream, reads } : { upstream }
    } catch (err) {
      clearTimeout(deadline)
      client.off('close', onGone)
      upstream?.destroy()
      const refusal = err instanceof TunnelRefusal ? err : classify(err, where)
      if (refusal.reason === 'client_closed') return undefined
      this.#lastUpstreamError = refusal.message
      if (this.#cfg.protocol === 'postgres') this.#refuse(client, refusal)
      else this.#drop(client, refusal.reason, refusal.message)
      return undefined
    }
  }

  /**
   * Copies both ways with stream backpressure and no per-chunk bookkeeping (byte counts
   * come from the sockets' own counters, the idle timer is the socket's). Either side
   * ending ends the other after its buffered bytes are written; an error destroys both.
   */
  #splice(client: net.Socket, upstream: tls.TLSSocket, reads?: DirectReads): void {
    if (client.destroyed) {
      upstream.destroy()
      return
    }
    upstream.on('error', (err) => {
      this.#log.debug({ err: describeError(err) }, 'upstream connection error')
      client.destroy()
    })
    client.once('error', () => upstream.destroy())
    client.once('close', () => {
      if (upstream.destroyed) return
      upstream.end()
      upstream.setTimeout(LINGER_MS, () => upstream.destroy())
    })
    upstream.once('close', () => {
      if (!client.destroyed && !client.writableEnded) client.end()
      client.setTimeout(LINGER_MS, () => client.destroy())
    })
    const stopUp = relay(client, upstream, { coalesceRecords: false })
    const stopDown = relay(upstream, client, { coalesceRecords: true, ...(reads ? { reads } : {}) })
    const idle = this.#cfg.idleTimeoutMs
    if (idle !== undefined) {
      client.setTimeout(idle, () => {
        // Nothing moved either way for the whole period, so no message is half-sent and a
        // FATAL ErrorResponse can be slipped in, as PostgreSQL's idle_session_timeout does.
        this.#count('idle_timeout', `no traffic for ${idle} ms`)
        stopDown()
        stopUp()
        upstream.destroy()
        if (this.#cfg.protocol === 'postgres') {
          client.end(errorResponse({
            code: SqlState.idleSessionTimeout,
            message: `memid: terminating connection after ${idle} ms without traffic (idle timeout of tunnel ${this.service})`,
          }))
        } else {
          client.end()
        }
        client.setTimeout(LINGER_MS, () => client.destroy())
      })
    }
  }

  /**
   * Forwards a CancelRequest over its own TLS connection. PostgreSQL never answers a
   * cancel request, so neither does the tunnel: the client only sees the socket close.
   */
  async #forwardCancel(client: net.Socket, packet: Buffer): Promise<void> {
    const credential = this.#credential()
    if (credential instanceof TunnelRefusal) return this.#drop(client, credential.reason, `cancel request not forwarded: ${credential.message}`)
    let upstream: tls.TLSSocket | undefined
    try {
      const signal = AbortSignal.timeout(this.#cfg.connectTimeoutMs)
      upstream = await dialUpstream({ credential, protocol: 'postgres', signal, resume: this.#resume })
      upstream.on('error', () => undefined)
      upstream.end(packet)
      upstream.setTimeout(LINGER_MS, () => upstream?.destroy())
      upstream.resume()
      this.#log.debug('cancel request forwarded')
    } catch (err) {
      upstream?.destroy()
      const refusal = classify(err, hostPort(credential.upstream.host, credential.upstream.port))
      this.#count(refusal.reason, `cancel request not forwarded: ${refusal.message}`)
    }
    client.resume()
    client.end()
    client.setTimeout(LINGER_MS, () => client.destroy())
  }

  #refusal(reason: string, code: string, message: string, hint?: string): TunnelRefusal {
    return new TunnelRefusal(reason, { code, message, ...(hint !== undefined ? { hint } : {}) })
  }

  /** Counts and logs a refusal, then answers the client with it as a FATAL ErrorResponse. */
  #refuse(client: net.Socket, refusal: TunnelRefusal): void {
    this.#count(refusal.reason, refusal.message)
    this.#answer(client, refusal.fields)
  }

  #answer(client: net.Socket, fields: ErrorFields): void {
    if (client.destroyed) return
    client.resume()
    client.end(errorResponse({ ...fields, message: `memid tunnel ${this.service}: ${fields.message}` }))
    client.setTimeout(LINGER_MS, () => client.destroy())
  }

  /** For protocols the tunnel cannot speak: count, log, close. */
  #drop(client: net.Socket, reason: string, message: string): void {
    this.#count(reason, message)
    client.destroy()
  }

  #count(reason: string, message: string): void {
    this.#metrics.errors.inc({ service: this.service, reason })
    const level = reason === 'client_closed' || reason === 'bad_startup' || reason === 'wrong_user' || reason === 'wrong_database' ? 'info' : 'warn'
    this.#log[level]({ reason, detail: message }, 'database tunnel connection refused')
  }
}
