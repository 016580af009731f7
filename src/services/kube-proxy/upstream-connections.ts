import http2 from 'node:http2'
import https from 'node:https'
import type { IncomingMessage, ServerResponse } from 'node:http'
import net, { type Socket } from 'node:net'
import type { Readable } from 'node:stream'
import tls from 'node:tls'
import type { TlsClientCredential } from '../../credentials/credentials.ts'
import { UpstreamSessions } from '../../credentials/tls-sessions.ts'
import { MemidError } from '../../core/errors.ts'
import { authority, downstreamResponseHeaders, upstreamHttp2Headers, upstreamRequestHeaders } from './headers.ts'

/** Which protocol carries ordinary requests to the API server. */
export type UpstreamProtocol = 'auto' | 'http/1.1'

/**
 * What the forwarder reports back for metrics, health and logs. One object serves every
 * request (it is told which), so forwarding a request allocates no callbacks for it.
 */
export interface ForwardHooks {
  /** Response headers arrived from the API server after `seconds`. */
  onResponse(status: number, seconds: number): void
  /** The API server could not be reached or failed before answering this request. */
  onUpstreamError(err: Error, req: IncomingMessage, res: ServerResponse): void
}

const { HTTP2_HEADER_STATUS, NGHTTP2_CANCEL, NGHTTP2_REFUSED_STREAM } = http2.constants

/** A TCP + TLS handshake to the API server that takes longer than this fails the request. */
export const CONNECT_TIMEOUT_MS = 15_000
/**
 * An HTTP/2 session without traffic for this long is closed (gracefully: open watches keep
 * their streams) so the next request starts on a fresh connection rather than trusting one
 * a NAT or load balancer may have silently dropped.
 */
const H2_IDLE_MS = 60_000
/**
 * HTTP/2 flow-control windows: how much the API server may send on one stream, and on the
 * whole connection, before the proxy has passed it on to kubectl. With Node's defaults
 * (64 KiB each) a list of a few MB stalls on a window update every 64 KiB and the
 * streams of concurrent requests starve each other: 2× slower than kubectl proxy and
 * twice the CPU per response. Go's HTTP/2 client, and so kubectl, uses 4 MiB per stream.
 * The connection window bounds what a slow kubectl can make the agent buffer.
 */
const H2_STREAM_WINDOW = 4 * 1024 * 1024
const H2_CONNECTION_WINDOW = 16 * 1024 * 1024
/** Node refuses new streams once a session holds this much; above the connection window. */
const H2_SESSION_MEMORY_MB = 32

/**
 * Copies an upstream body to the client as it arrives, with backpressure. A lighter
 * stand-in for `pipe()`, whose per-call bookkeeping showed up in the proxy's profile.
 * Returns a function that detaches it from `src` (see {@link Call.release}).
 *
 * Every DATA frame used to become its own write(2) to the client (with chunked encoding,
 * a writev of size line, data and CRLF): a big body arrives in two pieces per 16 KiB, and
 * a watch or chunked stream in one piece per event. In the native-upstream bench (nginx
 * sending 32 × 1 KB chunks per response) writev was the largest single item of the
 * proxy's profile, about a quarter of its busy time. So the first chunk of a round of
 * upstream reads corks the socket until the event loop has handled that round
 * (setImmediate runs right after the I/O phase), and whatever DATA frames were ready
 * then go out as one writev(2).
 */
function relay(src: Readable, dst: ServerResponse): () => void {
  // The socket itself, not the response: a finished response lets go of its socket, and
  // uncorking the response then would leave the keep-alive connection corked.
  let corked: Socket | undefined
  const uncork = () => {
    corked?.uncork()
    corked = undefined
  }
  const resume = () => src.resume()
  const onData = (chunk: Buffer) => {
    if (corked === undefined && dst.socket !== null) {
      corked = dst.socket
      corked.cork()
      setImmediate(uncork)
    }
    if (!dst.write(chunk)) {
      src.pause()
      dst.once('drain', resume)
    }
  }
  const onEnd = () => dst.end()
  src.on('data', onData)
  // 'on', not 'once', for events that fire once: once() allocates a wrapper per call.
  src.on('end', onEnd)
  return () => {
    src.off('data', onData)
    src.off('end', onEnd)
    dst.off('drain', resume)
  }
}

function ignore(): void {}

/** True when the request carries a body to forward. */
function hasBody(req: IncomingMessage): boolean {
  const len = req.headers['content-length']
  return len !== undefined ? len !== '0' : req.headers['transfer-encoding'] !== undefined
}

/** One request on its way through the proxy. */
interface Call {
  req: IncomingMessage
  res: ServerResponse
  hooks: ForwardHooks
  /** Ends whatever upstream request carries it. */
  cancel: (() => void) | undefined
  /**
   * Detaches this request's listeners from its HTTP/2 stream once the client's response
   * is over. Node's native side holds each stream object through a handle that V8's
   * minor GC cannot see through, so everything the stream's listeners reach (request,
   * response, their buffers) survived every minor GC and was promoted to the old
   * generation for a full GC to clear: ~4.3 KB per request in bench/kube-proxy.ts, ~2.9 KB
   * (the stream's own objects) once the listeners are gone.
   */
  release: (() => void) | undefined
}

/** Fails a connection that has not finished its TLS handshake in time. */
function armConnectTimeout(socket: tls.TLSSocket, ms: number, onTimeout: (err: Error) => void): void {
  const timer = setTimeout(() => {
    onTimeout(new MemidError('ERR_UPSTREAM', `connecting took longer than ${ms / 1000}s`))
  }, ms)
  const clear = () => clearTimeout(timer)
  socket.once('secureConnect', clear)
  socket.once('close', clear)
}

/**
 * Everything that talks to the API server with one client certificate: a keep-alive
 * HTTP/1.1 agent, an HTTP/2 session when the server offers h2 (one TLS connection
 * multiplexing every ordinary request, as `kubectl proxy` does), and fresh TLS connections
 * for upgrades. Built when a credential arrives; on renewal the previous set is retired:
 * nothing new goes through it, requests and streams already open run to their end, and
 * its connections are closed once the last one finishes.
 */
export class UpstreamConnections {
  readonly credential: TlsClientCredential
  readonly #authority: string
  readonly #tlsOptions: tls.ConnectionOptions
  readonly #agent: https.Agent
  #protocol: UpstreamProtocol
  #h2: http2.ClientHttp2Session | undefined
  #h2Connecting: Promise<http2.ClientHttp2Session | 'http/1.1' | Error> | undefined
  #inFlight = 0
  #retired = false
  #closed = false
  readonly #onClosed: () => void
  /** Keep-alive sockets whose handshake is done (reused ones need no connect timer). */
  readonly #established = new WeakSet<tls.TLSSocket>()

  readonly #connectTimeoutMs: number
  /** The TLS session upgrade connections resume; kept only while this set is not retired. */
  readonly #tlsSessions = new UpstreamSessions()

  constructor(credential: TlsClientCredential, opts: { protocol: UpstreamProtocol; connectTimeoutMs?: number; onClosed?: () => void }) {
    this.credential = credential
    this.#protocol = opts.protocol
    this.#connectTimeoutMs = opts.connectTimeoutMs ?? CONNECT_TIMEOUT_MS
    this.#onClosed = opts.onClosed ?? (() => undefined)
    const up = credential.upstream
    this.#authority = authority(up.host, up.port)
    // The secure context (key, client certificate, the cluster's CA) was built once when the
    // credential arrived; every connection reuses it. The server is verified against that
    // CA and its certificate must name the host (or IP) registered with `memid kube add`.
    this.#tlsOptions = {
      host: up.host,
      port: up.port,
      secureContext: credential.secureContext,
      rejectUnauthorized: true,
      ...(net.isIP(up.host) === 0 ? { servername: up.host } : {}),
    }
    this.#agent = new https.Agent({ ...this.#tlsOptions, keepAlive: true, scheduling: 'lifo', ALPNProtocols: ['http/1.1'] })
  }

  get retired(): boolean {
    return this.#retired
  }

  /** Forwards one ordinary request and streams the answer back without buffering. */
  forward(req: IncomingMessage, res: ServerResponse, hooks: ForwardHooks): void {
    this.#inFlight++
    const call: Call = { req, res, hooks, cancel: undefined, release: undefined }
    // One listener does all the cleanup. A client that goes away (Ctrl-C on a watch, `logs -f`
    // closed) ends the upstream request at once rather than let the API server stream into
    // a dead socket.
    res.on('close', () => {
      if (!res.writableFinished) call.cancel?.()
      call.release?.()
      if (--this.#inFlight === 0 && this.#retired) this.#close()
    })
    this.#dispatch(call, true)
  }

  #dispatch(call: Call, mayRetry: boolean): void {
    if (this.#protocol === 'http/1.1') return this.#forwardHttp1(call, mayRetry)
    const h2 = this.#h2
    if (h2 !== undefined && !h2.closed && !h2.destroyed) return this.#forwardHttp2(h2, call, mayRetry)
    void this.#session().then((session) => {
      if (call.res.destroyed) return
      if (session === 'http/1.1') this.#forwardHttp1(call, mayRetry)
      else if (session instanceof Error) call.hooks.onUpstreamError(session, call.req, call.res)
      else this.#forwardHttp2(session, call, mayRetry)
    })
  }

  /**
   * A fresh mutual-TLS connection for one upgrade (exec, attach, port-forward): those
   * connections become raw byte pipes, so they never share a pooled connection.
   */
  connectTunnel(): tls.TLSSocket {
    const session = this.#tlsSessions.get(this.credential, this.#authority)
    const socket = tls.connect({ ...this.#tlsOptions, ALPNProtocols: ['http/1.1'], ...(session !== undefined ? { session } : {}) })
    // Interactive (exec keystrokes, port-forward): small writes go out at once.
    socket.setNoDelay(true)
    // A set retired by a renewal keeps no session: the renewed certificate must do a full handshake.
    socket.on('session', (s: Buffer) => this.#tlsSessions.remember(this.credential, this.#authority, s, this.#retired ? undefined : this.credential))
    armConnectTimeout(socket, this.#connectTimeoutMs, (err) => socket.destroy(err))
    return socket
  }

  /** Stops new use; open requests finish on their own, then the connections close. */
  retire(): void {
    if (this.#retired) return
    this.#retired = true
    this.#tlsSessions.drop()
    // Keep-alive sockets returned after this point are closed instead of pooled.
    this.#agent.on('free', (socket: net.Socket) => socket.destroy())
    for (const list of Object.values(this.#agent.freeSockets)) for (const s of list ?? []) s.destroy()
    // A graceful close: streams already open on the h2 session (watches) keep running.
    this.#h2?.close()
    if (this.#inFlight === 0) this.#close()
  }

  /** Closes everything now, open requests included (service stop after its drain deadline). */
  destroy(): void {
    this.#retired = true
    this.#close()
  }

  #close(): void {
    if (this.#closed) return
    this.#closed = true
    this.#agent.destroy()
    this.#tlsSessions.drop()
    this.#h2?.destroy()
    this.#onClosed()
  }

  #forwardHttp1(call: Call, mayRetry = true): void {
    const { req, res, hooks } = call
    const started = performance.now()
    const upReq = https.request({
      ...this.#tlsOptions,
      agent: this.#agent,
      method: req.method,
      path: req.url,
      headers: upstreamRequestHeaders(req.rawHeaders, this.#authority),
    })
    upReq.once('socket', (socket: tls.TLSSocket) => {
      if (this.#established.has(socket)) return
      armConnectTimeout(socket, this.#connectTimeoutMs, (err) => upReq.destroy(err))
      socket.once('secureConnect', () => this.#established.add(socket))
    })
    upReq.once('response', (upRes) => {
      const status = upRes.statusCode ?? 502
      hooks.onResponse(status, (performance.now() - started) / 1000)
      res.writeHead(status, upRes.statusMessage, downstreamResponseHeaders(upRes.rawHeaders))
      // Watches and `logs -f` have no length: send the headers now so the client sees the
      // stream open before the first event.
      if (upRes.headers['content-length'] === undefined) res.flushHeaders()
      upRes.on('error', () => res.destroy())
      upRes.on('aborted', () => res.destroy())
      relay(upRes, res)
    })
    const body = hasBody(req)
    upReq.once('error', (err: NodeJS.ErrnoException) => {
      if (res.headersSent) {
        res.destroy()
        return
      }
      if (res.destroyed) return
      // The server closed an idle keep-alive connection just as the request went out: it
      // never saw the request, so a bodiless one goes again on a new connection.
      if (mayRetry && !body && upReq.reusedSocket && err.code === 'ECONNRESET') return this.#forwardHttp1(call, false)
      hooks.onUpstreamError(err, req, res)
    })
    if (body) req.pipe(upReq)
    else upReq.end()
    call.cancel = () => upReq.destroy()
  }

  #forwardHttp2(session: http2.ClientHttp2Session, call: Call, mayRetry: boolean): void {
    const { req, res, hooks } = call
    const started = performance.now()
    const headers = upstreamHttp2Headers(req.method ?? 'GET', req.url ?? '/', req.rawHeaders, this.#authority)
    const body = hasBody(req)
    // A request the server provably did not process (the session was already going away, or
    // the stream was refused after a GOAWAY, which kube-apiserver sends on purpose with
    // --goaway-chance) goes again on a fresh session, once, if it has no body to replay.
    const retry = (): boolean => {
      if (!mayRetry || body || res.headersSent || res.destroyed) return false
      if (this.#h2 === session) {
        this.#h2 = undefined
        // No new streams on it; the ones still open (watches) finish first.
        session.close()
      }
      this.#dispatch(call, false)
      return true
    }
    let stream: http2.ClientHttp2Stream
    try {
      stream = session.request(headers, { endStream: !body })
    } catch (err) {
      if (!retry()) hooks.onUpstreamError(err as Error, req, res)
      return
    }
    // Stays when this request's listeners are released: a late stream error must not go unhandled.
    stream.on('error', ignore)
    let unrelay: (() => void) | undefined
    const onResponse = (h: http2.IncomingHttpHeaders & http2.IncomingHttpStatusHeader) => {
      const status = Number(h[HTTP2_HEADER_STATUS] ?? 502)
      hooks.onResponse(status, (performance.now() - started) / 1000)
      const out: string[] = []
      for (const name in h) {
        const value = h[name]
        if (name.startsWith(':') || value === undefined) continue
        if (Array.isArray(value)) for (const v of value) out.push(name, v)
        else out.push(name, String(value))
      }
      res.writeHead(status, out)
      if (h['content-length'] === undefined) res.flushHeaders()
      unrelay = relay(stream, res)
    }
    const onError = (err: Error) => {
      if (res.headersSent) {
        res.destroy()
        return
      }
      if (res.destroyed) return
      if (stream.rstCode === NGHTTP2_REFUSED_STREAM && retry()) return
      hooks.onUpstreamError(err, req, res)
    }
    stream.on('response', onResponse)
    stream.on('error', onError)
    call.cancel = () => {
      if (!stream.destroyed) stream.close(NGHTTP2_CANCEL)
    }
    call.release = () => {
      stream.off('response', onResponse)
      stream.off('error', onError)
      unrelay?.()
    }
    if (body) req.pipe(stream)
  }

  /**
   * The HTTP/2 session, connected on first use and shared by concurrent first requests.
   * `'http/1.1'` (remembered) when the server does not offer h2; an Error when the server
   * cannot be reached, which that request reports (the next one tries again).
   */
  #session(): Promise<http2.ClientHttp2Session | 'http/1.1' | Error> {
    if (this.#h2Connecting !== undefined) return this.#h2Connecting
    const connecting = new Promise<http2.ClientHttp2Session | 'http/1.1' | Error>((resolve) => {
      const socket = tls.connect({ ...this.#tlsOptions, ALPNProtocols: ['h2', 'http/1.1'] })
      // Without this, Nagle holds a small frame (a request's HEADERS) while an earlier one is
      // unacknowledged, and the server's delayed ACK makes that up to 40 ms: the small-GET p99.
      socket.setNoDelay(true)
      armConnectTimeout(socket, this.#connectTimeoutMs, (err) => socket.destroy(err))
      socket.once('secureConnect', () => {
        if (socket.alpnProtocol !== 'h2') {
          socket.destroy()
          this.#protocol = 'http/1.1'
          resolve('http/1.1')
          return
        }
        const session = http2.connect(`https://${this.#authority}`, {
          createConnection: () => socket,
          settings: { initialWindowSize: H2_STREAM_WINDOW },
          maxSessionMemory: H2_SESSION_MEMORY_MB,
        })
        const widen = () => session.setLocalWindowSize(H2_CONNECTION_WINDOW)
        if (session.connecting) session.once('connect', widen)
        else widen()
        // Errors surface on the streams that were open; the session itself is just dropped.
        session.on('error', () => {})
        session.once('close', () => {
          if (this.#h2 === session) this.#h2 = undefined
        })
        session.setTimeout(H2_IDLE_MS, () => session.close())
        this.#h2 = session
        if (this.#retired) session.close()
        resolve(session)
      })
      socket.once('error', (err) => resolve(err))
    })
    this.#h2Connecting = connecting
    void connecting.then(() => {
      if (this.#h2Connecting === connecting) this.#h2Connecting = undefined
    })
    return connecting
  }
}
