import net from 'node:net'
import tls from 'node:tls'
import type { TlsClientCredential } from '../../credentials/credentials.ts'
import { UpstreamSessions } from '../../credentials/tls-sessions.ts'
import { MemidError } from '../../core/errors.ts'
import { hostPort } from '../../core/listener.ts'

/** TCP + TLS handshake limit towards the API server. */
export const CONNECT_TIMEOUT_MS = 15_000

/**
 * Dials the API server with one client certificate. Every kubectl connection gets its own
 * mutual-TLS connection from here (HTTP/1.1 by ALPN), opened at its first forwarded
 * request; they resume the TLS session of this credential, so only the first pays for a
 * full handshake. On renewal the dialer is retired: its session is dropped (the renewed
 * certificate must do a full handshake: a resumed session would present the old identity)
 * and nothing new is dialed with it.
 */
export class UpstreamDialer {
  readonly credential: TlsClientCredential
  /** `host:port` of the API server: the Host header of every forwarded request. */
  readonly authority: string
  readonly #tlsOptions: tls.ConnectionOptions
  readonly #connectTimeoutMs: number
  readonly #sessions = new UpstreamSessions()
  #retired = false
  /** The credential a session that arrives now may be kept for: none once retired. */
  readonly #current = () => (this.#retired ? undefined : this.credential)

  constructor(credential: TlsClientCredential, opts: { connectTimeoutMs?: number } = {}) {
    this.credential = credential
    this.#connectTimeoutMs = opts.connectTimeoutMs ?? CONNECT_TIMEOUT_MS
    const up = credential.upstream
    this.authority = hostPort(up.host, up.port)
    // The secure context (key, client certificate, the cluster's CA) comes from the
    // credential, built once when it arrived (see connect()). The server is verified against
    // that CA and its certificate must name the host (or IP) registered with `memid kube add`.
    this.#tlsOptions = {
      host: up.host,
      port: up.port,
      rejectUnauthorized: true,
      ALPNProtocols: ['http/1.1'],
      ...(net.isIP(up.host) === 0 ? { servername: up.host } : {}),
    }
  }

  get retired(): boolean {
    return this.#retired
  }

  /**
   * A new mutual-TLS connection to the API server. Writes before the handshake is done are
   * queued by the socket. With `onread`, what arrives is handed to its callback in its
   * buffer instead of as 'data' events (see `connection.ts`). A handshake that takes longer than the connect timeout destroys
   * it with an `ERR_UPSTREAM` error.
   */
  connect(onread?: net.OnReadOpts): tls.TLSSocket {
    const session = this.#sessions.get(this.credential, this.authority)
    // One TLS 1.3 key share, for the group this API server agreed on last (see UpstreamSessions).
    const secureContext = this.#sessions.secureContext(this.credential, this.authority)
    const socket = tls.connect({ ...this.#tlsOptions, secureContext, ...(session !== undefined ? { session } : {}), ...(onread !== undefined ? { onread } : {}) })
    // Requests and their answers are small writes that must go out at once: Nagle would hold
    // one behind an unacknowledged segment for up to the peer's delayed-ACK time (40 ms).
    socket.setNoDelay(true)
    this.#sessions.follow(socket, this.credential, this.authority, session, this.#current)
    const ms = this.#connectTimeoutMs
    const timer = setTimeout(() => socket.destroy(new MemidError('ERR_UPSTREAM', `connecting took longer than ${ms / 1000}s`)), ms)
    const clear = () => clearTimeout(timer)
    socket.once('secureConnect', clear)
    socket.once('close', clear)
    return socket
  }

  /** Dials nothing more with this credential and forgets (zeroes) its TLS session. */
  retire(): void {
    this.#retired = true
    this.#sessions.drop()
  }
}
