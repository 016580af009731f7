import net from 'node:net'
import tls from 'node:tls'
import type { TlsClientCredential } from '../../credentials/credentials.ts'
import type { UpstreamSessions } from '../../credentials/tls-sessions.ts'
import { hostPort } from '../../core/listener.ts'
import { SSL_REQUEST, SqlState, TunnelRefusal } from './postgres.ts'
import { RELAY_HIGH_WATER_MARK, type DirectReads } from './relay.ts'

export interface DialOptions {
  credential: TlsClientCredential
  /** `postgres` negotiates TLS with an SSLRequest first; `tls` starts TLS at once. */
  protocol: 'postgres' | 'tls'
  /** Covers TCP connect, negotiation and the TLS handshake. */
  signal: AbortSignal
  /**
   * TLS sessions to resume and to keep, with the credential in force now: a session is
   * kept only when the credential it was made with is still the current one.
   */
  resume?: { sessions: UpstreamSessions; current(): TlsClientCredential | undefined }
  /**
   * Where the TLS socket reads into, for `relay()`. Node honours `onread` only on a socket
   * it dials itself, so only for `tls`; for `postgres` the reads stay the socket's stream.
   */
  reads?: DirectReads
}

/**
 * Opens the upstream leg: TCP, then (postgres) SSLRequest/'S', then TLS 1.2+ with the
 * credential's prebuilt context, verifying the server's certificate against the
 * registered CA and host name. Resolves once the handshake is done.
 */
export async function dialUpstream(opts: DialOptions): Promise<tls.TLSSocket> {
  const { host, port } = opts.credential.upstream
  const where = hostPort(host, port)
  const tcp = { host, port, noDelay: true, keepAlive: true, keepAliveInitialDelay: 60_000, allowHalfOpen: true }
  // PostgreSQL asks for TLS in plaintext first, so it needs a TCP socket of its own; for
  // `tls` the TLS socket dials itself: one socket object per connection instead of a TCP
  // socket wrapped by a TLS one, with its own listeners and 'connect' step (~2% of the
  // tunnel's CPU per connection in bench/db-tunnel.ts).
  const raw = opts.protocol === 'postgres' ? net.connect(tcp) : undefined
  // Permanent guards: between the steps below no other listener may be attached, and an
  // upstream error must end this connection only, never reach the process.
  raw?.on('error', ignore)
  // Until the handshake is done the deadline tears down whichever socket exists; after
  // that the listener is removed, or it would cut a healthy session when the timer fires.
  let secure: tls.TLSSocket | undefined
  const abort = () => (secure ?? raw)?.destroy()
  opts.signal.addEventListener('abort', abort, { once: true })
  try {
    if (raw !== undefined) {
      await step(raw, 'connect', opts.signal, where)
      await negotiateSsl(raw, opts.signal, where)
    }
    // Node hands highWaterMark on to the TLS socket; @types/node does not declare it here.
    const resume = opts.resume
    const options: tls.ConnectionOptions & { highWaterMark: number } = {
      ...(raw !== undefined ? { socket: raw } : tcp),
      secureContext: resume !== undefined ? resume.sessions.secureContext(opts.credential, where) : opts.credential.secureContext,
      // Node checks the certificate against `servername ?? host`; SNI must not carry an
      // IP address, so an IP upstream is named by `host` only.
      host,
      ...(net.isIP(host) === 0 ? { servername: host } : {}),
      ...(opts.protocol === 'postgres' ? { ALPNProtocols: ['postgresql'] } : {}),
      rejectUnauthorized: true,
      highWaterMark: RELAY_HIGH_WATER_MARK,
      ...(raw === undefined && opts.reads !== undefined ? { onread: opts.reads.onread } : {}),
    }
    const session = resume?.sessions.get(opts.credential, where)
    if (session !== undefined) options.session = session
    secure = tls.connect(options)
    secure.on('error', ignore)
    resume?.sessions.follow(secure, opts.credential, where, session, resume.current)
    await step(secure, 'secureConnect', opts.signal, where)
    return secure
  } catch (err) {
    secure?.destroy()
    raw?.destroy()
    throw err
  } finally {
    opts.signal.removeEventListener('abort', abort)
  }
}

function ignore(): void {}

/**
 * Sends SSLRequest and expects exactly one byte, 'S'. A server that sends more bytes
 * before the handshake is refused: they would arrive unauthenticated (CVE-2021-23222).
 */
async function negotiateSsl(raw: net.Socket, signal: AbortSignal, where: string): Promise<void> {
  raw.write(SSL_REQUEST)
  const chunk = await firstChunk(raw, signal, where, `the database server at ${where} closed the connection during the SSL request`)
  const answer = chunk[0]
  if (answer === 0x53 /* S */ && chunk.length === 1) return
  if (answer === 0x53) {
    throw refusal('upstream_protocol', SqlState.connectionFailure,
      `the database server at ${where} sent unencrypted data after agreeing to TLS; refusing the connection`)
  }
  if (answer === 0x4e /* N */) {
    throw refusal('upstream_tls_refused', SqlState.unableToConnect,
      `the database server at ${where} does not accept TLS (it answered N to SSLRequest)`,
      'enable ssl = on on the database server; memid only connects upstream with TLS and a client certificate')
  }
  if (answer === 0x45 /* E */) {
    // Since CVE-2024-10977 clients must not show text received before TLS, so neither do we.
    throw refusal('upstream_tls_refused', SqlState.unableToConnect,
      `the database server at ${where} answered the SSL request with an error instead of starting TLS`)
  }
  throw refusal('upstream_protocol', SqlState.unableToConnect,
    `the server at ${where} did not answer the SSL request like a PostgreSQL server`)
}

/**
 * The next chunk the socket delivers, which is left paused; errors, an early close and
 * the deadline become refusals.
 */
export function firstChunk(socket: net.Socket, signal: AbortSignal, where: string, closedMessage: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(timeoutRefusal(signal, where))
    const cleanup = () => {
      socket.off('data', onData)
      socket.off('error', onError)
      socket.off('close', onClose)
      signal.removeEventListener('abort', onAbort)
    }
    const onData = (chunk: Buffer) => {
      cleanup()
      socket.pause()
      resolve(chunk)
    }
    const onError = (err: Error) => {
      cleanup()
      reject(classify(err, where))
    }
    const onClose = () => {
      cleanup()
      reject(refusal('upstream_closed', SqlState.connectionFailure, closedMessage))
    }
    const onAbort = () => {
      cleanup()
      reject(timeoutRefusal(signal, where))
    }
    socket.on('data', onData)
    socket.once('error', onError)
    socket.once('close', onClose)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

/** Waits for one event, turning errors, early close and the deadline into refusals. */
function step(socket: net.Socket, event: 'connect' | 'secureConnect', signal: AbortSignal, where: string): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(timeoutRefusal(signal, where))
    const cleanup = () => {
      socket.off(event, onDone)
      socket.off('error', onError)
      socket.off('close', onClose)
      signal.removeEventListener('abort', onAbort)
    }
    const onDone = () => {
      cleanup()
      resolve()
    }
    const onError = (err: Error) => {
      cleanup()
      reject(classify(err, where))
    }
    const onClose = () => {
      cleanup()
      reject(event === 'connect'
        ? refusal('upstream_unreachable', SqlState.unableToConnect, `cannot reach the database server at ${where}`)
        : refusal('upstream_tls_failed', SqlState.connectionFailure, `the database server at ${where} closed the connection during the TLS handshake`))
    }
    const onAbort = () => {
      cleanup()
      reject(timeoutRefusal(signal, where))
    }
    socket.once(event, onDone)
    socket.once('error', onError)
    socket.once('close', onClose)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

function refusal(reason: string, code: string, message: string, hint?: string): TunnelRefusal {
  return new TunnelRefusal(reason, { code, message, ...(hint !== undefined ? { hint } : {}) })
}

function timeoutRefusal(signal: AbortSignal, where: string): TunnelRefusal {
  const r = signal.reason as unknown
  if (r instanceof TunnelRefusal) return r
  return refusal('upstream_timeout', SqlState.unableToConnect, `timed out connecting to the database server at ${where}`)
}

/** OpenSSL reasons that mean the server rejected our client certificate. */
const CLIENT_CERT_REJECTED = /ALERT_(UNKNOWN_CA|BAD_CERTIFICATE|CERTIFICATE_UNKNOWN|CERTIFICATE_EXPIRED|CERTIFICATE_REVOKED|UNSUPPORTED_CERTIFICATE|ACCESS_DENIED|CERTIFICATE_REQUIRED|HANDSHAKE_FAILURE)/

/** Node's codes for a server certificate we do not trust. */
const SERVER_CERT_UNTRUSTED = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID',
  'CERT_SIGNATURE_FAILURE', 'CERT_UNTRUSTED', 'CERT_REJECTED', 'INVALID_CA', 'ERR_TLS_CERT_ALTNAME_INVALID',
  'HOSTNAME_MISMATCH', 'INVALID_PURPOSE',
])

/**
 * Maps a socket or TLS error on the upstream leg to what the client is told. Messages
 * carry the error code, never certificate bodies.
 */
export function classify(err: unknown, where: string): TunnelRefusal {
  if (err instanceof TunnelRefusal) return err
  const e = err as NodeJS.ErrnoException & { reason?: string }
  const code = e?.code ?? ''
  const text = `${code} ${e?.message ?? ''}`
  if (SERVER_CERT_UNTRUSTED.has(code)) {
    return refusal('upstream_cert_invalid', SqlState.connectionFailure,
      `the certificate of the database server at ${where} is not trusted: ${code === 'ERR_TLS_CERT_ALTNAME_INVALID' ? (e.reason ?? 'host name mismatch') : code}`,
      'register the CA that signed the database server certificate with `memid dbs add NAME --uri … --ca-file PEM`, and make sure the certificate names the host in the URI')
  }
  if (CLIENT_CERT_REJECTED.test(text)) {
    const alert = CLIENT_CERT_REJECTED.exec(text)?.[1]?.toLowerCase().replaceAll('_', ' ') ?? 'rejected'
    return refusal('client_cert_rejected', SqlState.invalidAuthorization,
      `the database server at ${where} did not accept memid's client certificate (TLS alert: ${alert})`,
      'the server\'s ssl_ca_file must contain this database\'s client CA (`memid auth export --kind db-client --database NAME`)')
  }
  if (code.startsWith('ERR_SSL') || /SSL routines|wrong version number|handshake/i.test(text)) {
    return refusal('upstream_tls_failed', SqlState.connectionFailure,
      `the TLS handshake with the database server at ${where} failed: ${code || 'TLS error'}`)
  }
  if (code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH' || code === 'ENOTFOUND' || code === 'EAI_AGAIN') {
    return refusal('upstream_unreachable', SqlState.unableToConnect, `cannot reach the database server at ${where}: ${code}`)
  }
  return refusal('upstream_error', SqlState.connectionFailure,
    `connection to the database server at ${where} failed: ${code || (e?.message ?? 'unknown error').split('\n')[0]?.slice(0, 200)}`)
}
