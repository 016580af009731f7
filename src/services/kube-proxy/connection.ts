/**
 * One kubectl connection and the API server connection paired with it.
 *
 * Requests are read with llhttp (Node's own parser, see `llhttp.ts`); each one goes
 * through the proxy's policy (local user, Host allow-list, a credential at hand), and its
 * head is rewritten (`headers.ts`) and written to this connection's own mutual-TLS
 * connection to the API server, followed by its body as llhttp frames it. The answer is
 * not re-serialized: the API server's bytes are written to kubectl as they arrive, while a
 * second llhttp, in response mode, reads them only to learn the status (metrics, health),
 * where the response ends, and whether the API server will close the connection. Both hops
 * are HTTP/1.1 and paired one to one, so the response's own framing (chunked or not,
 * `Connection: close`) holds on the kubectl side too.
 *
 * One request is answered at a time. Requests kubectl pipelines behind it are parsed and
 * held (their bodies too, up to a bound, then reading stops) until the one in flight is
 * answered, so answers the proxy makes itself (403, 503, 502) go out in order. An upgrade
 * (exec, attach, port-forward) turns the pair into a byte tunnel once the API server
 * answers 101.
 *
 * Everything a request needs lives in fields of this object: forwarding a request
 * allocates no callbacks and no per-request objects (pipelined requests excepted).
 */
import type net from 'node:net'
import type tls from 'node:tls'
import { MemidError, describeError } from '../../core/errors.ts'
import type { LocalRefusal } from '../../core/listener.ts'
import { isDiscovery, isWatch, requestHead, type HeadKind } from './headers.ts'
import { HTTPParser, methods, type LlhttpParser, type OnHeadersComplete, type ParseError } from './llhttp.ts'
import { statusResponse, writeRawStatus, type StatusReason } from './status.ts'
import type { UpstreamDialer } from './upstream-dialer.ts'

/**
 * Request headers larger than this (all of them together) get 431. kubectl sends about
 * one kilobyte; the cap keeps a hostile local client from making the agent buffer more.
 */
export const MAX_HEADER_BYTES = 16 * 1024

/** Response heads from the API server may be larger (many `Warning` headers). */
const MAX_RESPONSE_HEAD_BYTES = 64 * 1024

/** The buffer the API server's bytes are read into: one TLS record's plaintext at most. */
const READ_BUFFER_BYTES = 16 * 1024

/** Body bytes of pipelined requests held while an earlier one is answered; beyond it reading stops. */
const PENDING_LIMIT = 64 * 1024

/** What a connection needs from its service. */
export interface ProxyHost {
  /** The dialer of the current credential, or why there is none (the request gets 503). */
  dialer(): UpstreamDialer | MemidError
  hostAllowed(host: string | undefined): boolean
  /** Response headers arrived from the API server after `seconds`. */
  upstreamAnswered(seconds: number): void
  /** The API server could not be reached; returns the message for the client. */
  upstreamFailed(err: Error, dialer: UpstreamDialer): string
  /** Counts an answered request by status (499: the client left first). */
  counted(status: number): void
  watch(delta: 1 | -1): void
  upgrade(delta: 1 | -1): void
  /** The service is stopping: close each connection once its exchange is over. */
  readonly stopping: boolean
  closed(conn: ProxyConnection): void
}

/** A request parsed while an earlier one on the connection is still being answered. */
interface Pending {
  minor: number
  headers: string[]
  method: number
  url: string
  upgrade: boolean
  chunked: boolean
  keepAlive: boolean
  body: Buffer[]
  complete: boolean
  /** Set instead of the rest when the request could not be parsed: answered with this, then closed. */
  error: ParseError | undefined
}

const CHUNK_END = Buffer.from('\r\n')
const LAST_CHUNK = Buffer.from('0\r\n\r\n')

/** Why reading from kubectl stopped: the upstream connection is full, or pipelined requests are held. */
const PAUSED_UPSTREAM = 1
const PAUSED_PENDING = 2

export class ProxyConnection {
  readonly #host: ProxyHost
  readonly #client: net.Socket
  readonly #refusal: LocalRefusal | undefined
  readonly #parser: LlhttpParser
  #resParser: LlhttpParser | undefined
  #up: tls.TLSSocket | undefined
  #upDialer: UpstreamDialer | undefined
  #upError: Error | undefined
  /** Exchanges answered over `#up`: a request on a reused connection may be retried once. */
  #upUsed = 0
  #paused = 0
  #corked = false
  #onread: net.OnReadOpts | undefined

  /** Header lines handed over before the head was complete (more than 32 of them). */
  #headers: string[] = []
  #url = ''

  // The exchange in flight.
  #busy = false
  /** Answered by the proxy itself: the request's body is read and dropped. */
  #local = false
  #kind: HeadKind = 'plain'
  #isHead = false
  #bodyless = true
  #head = ''
  #target = ''
  #keepAlive = true
  #watch = false
  #reqDone = false
  #resDone = false
  /** The API server's final status; 0 until its head arrived. */
  #status = 0
  /** A 1xx interim response is being read. */
  #interim = false
  #upKeepAlive = true
  /** Response bytes reached kubectl: a failure now can only close the connection. */
  #sent = false
  #retried = false
  #started = 0
  /** The API server answered an upgrade with 101. */
  #switched = false
  /** kubectl's bytes go to the API server as they are (after a 101). */
  #rawUp = false
  /** What kubectl sent after its upgrade request, until the API server answers it. */
  #held: Buffer[] | undefined
  /** Counted as an open upgrade. */
  #tunnel = false

  #pending: Pending[] | undefined
  #pendingBytes = 0
  /** The pipelined request llhttp is in the middle of, if it is held. */
  #parsing: Pending | undefined
  /** llhttp is done with this connection (an upgrade, an error, or the connection is closing). */
  #parseDone = false
  #closing = false

  /** When the head of the next request started to arrive (0: none is arriving). */
  headersSince = 0
  /** When the connection became idle (0: busy). */
  idleSince = performance.now()

  constructor(host: ProxyHost, client: net.Socket, refusal: LocalRefusal | undefined) {
    this.#host = host
    this.#client = client
    this.#refusal = refusal
    const p = new HTTPParser()
    p.initialize(HTTPParser.REQUEST, {}, MAX_HEADER_BYTES, HTTPParser.kLenientNone)
    p[HTTPParser.kOnHeaders] = this.#onHeaderLines
    p[HTTPParser.kOnHeadersComplete] = this.#onRequestHead
    p[HTTPParser.kOnBody] = this.#onRequestBody
    p[HTTPParser.kOnMessageComplete] = this.#onRequestDone
    this.#parser = p
    const events: [string, Listener][] = [
      ['data', this.#onClientData], ['end', this.#onClientEnd], ['error', this.#onClientError], ['close', this.#onClientClose], ['drain', this.#onClientDrain],
    ]
    for (const [event, handler] of events) client.on(event, handler)
    client.resume()
  }

  /** True while a request is being answered. */
  get busy(): boolean {
    return this.#busy
  }

  /** A renewal: an idle connection lets go of its upstream connection now, a busy one after its exchange. */
  renewed(): void {
    if (!this.#busy) this.#dropUpstream()
  }

  /** The service stops: idle connections close now, busy ones after their exchange. */
  stop(): void {
    if (!this.#busy) this.#client.destroy()
  }

  destroy(): void {
    this.#client.destroy()
  }

  /** Called about once a second by the service: the headers timeout (408) and the keep-alive timeout. */
  sweep(now: number, headersTimeoutMs: number, idleTimeoutMs: number): void {
    if (this.#busy || this.#parseDone) return
    if (this.headersSince > 0) {
      if (now - this.headersSince < headersTimeoutMs) return
      this.#host.counted(408)
      this.#parseDone = true
      writeRawStatus(this.#client, 408, 'Timeout', 'memid: the request headers did not arrive in time')
    } else if (now - this.idleSince >= idleTimeoutMs) {
      this.#client.destroy()
    }
  }

  // kubectl's side.

  readonly #onClientData = (chunk: Buffer): void => {
    if (this.#rawUp) return this.#toUpstream(chunk)
    if (this.#parseDone) return this.#afterUpgrade(chunk)
    if (!this.#busy && this.headersSince === 0) this.headersSince = performance.now()
    const n = this.#parser.execute(chunk)
    if (typeof n !== 'number') return this.#requestError(n)
    if (this.#parseDone && n < chunk.length) this.#afterUpgrade(chunk.subarray(n))
  }

  /**
   * Bytes kubectl sent after an upgrade request belong to the upgraded protocol: they go to
   * the API server only once it answered 101. Until then they are held (reading stops
   * beyond the bound); after any other answer they are dropped with the connection. Sent
   * at once, they would reach an API server that refused the upgrade as the next
   * request on its connection, past the proxy's checks.
   */
  #afterUpgrade(chunk: Buffer): void {
    if (this.#rawUp) return this.#toUpstream(chunk)
    const last = this.#pending?.at(-1)
    if (last?.upgrade === true) return this.#hold(last.body, chunk)
    if (!this.#busy || this.#kind !== 'upgrade' || this.#local) return
    this.#hold(this.#held ??= [], chunk)
  }

  readonly #onHeaderLines = (lines: string[], url: string): void => {
    for (const l of lines) this.#headers.push(l)
    this.#url += url
  }

  readonly #onRequestHead: OnHeadersComplete = (_major, minor, headers, method, url, _status, _msg, upgrade, keepAlive) => {
    if (headers === undefined) {
      headers = this.#headers
      this.#headers = []
    }
    if (url === undefined) {
      url = this.#url
    }
    this.#url = ''
    this.headersSince = 0
    // llhttp refuses any other transfer coding only after this callback returns: refuse it
    // here, before anything goes upstream (Node's server refuses it too). The same pass
    // says whether the body is chunked.
    const coding = transferCoding(headers)
    if (coding === undefined) return -1
    const chunked = coding === 'chunked'
    if (upgrade) this.#parseDone = true
    if (this.#busy) {
      const p: Pending = { minor, headers, method, url, upgrade, chunked, keepAlive, body: [], complete: false, error: undefined }
      ;(this.#pending ??= []).push(p)
      this.#parsing = p
    } else {
      this.#begin(minor, headers, method, url, upgrade, chunked, keepAlive)
    }
    // 2: what follows an upgrade request is another protocol (nothing for llhttp to frame).
    return upgrade ? 2 : 0
  }

  readonly #onRequestBody = (chunk: Buffer): void => {
    if (this.#parsing !== undefined) return this.#hold(this.#parsing.body, chunk)
    if (this.#local || this.#up === undefined) return
    if (this.#kind !== 'chunked') return this.#toUpstream(chunk)
    const up = this.#up
    up.cork()
    up.write(`${chunk.length.toString(16)}\r\n`, 'latin1')
    up.write(chunk)
    up.write(CHUNK_END)
    up.uncork()
    if (up.writableNeedDrain) this.#pause(PAUSED_UPSTREAM)
  }

  readonly #onRequestDone = (): void => {
    // Trailer lines arrive through kOnHeaders; they are not forwarded.
    this.#headers = []
    this.#url = ''
    if (this.#parsing !== undefined) {
      this.#parsing.complete = true
      this.#parsing = undefined
      return
    }
    if (!this.#busy) return
    this.#reqDone = true
    if (!this.#local && this.#kind === 'chunked') this.#up?.write(LAST_CHUNK)
    if (this.#resDone) this.#finish()
  }

  readonly #onClientEnd = (): void => {
    // An upgraded connection half-closes as a pipe would; otherwise kubectl is gone.
    if (this.#rawUp && this.#up !== undefined) this.#up.end()
    else this.#client.destroy()
  }

  readonly #onClientError = (): void => {
    this.#client.destroy()
  }

  readonly #onClientDrain = (): void => {
    this.#up?.resume()
  }

  readonly #onClientClose = (): void => {
    this.#closing = true
    this.#parseDone = true
    this.#dropUpstream()
    if (this.#busy && !this.#resDone && !this.#tunnel) {
      // 499 (nginx's "client closed request") when kubectl left before any answer.
      this.#host.counted(this.#status !== 0 ? this.#status : 499)
      if (this.#watch) this.#host.watch(-1)
    }
    if (this.#tunnel) this.#host.upgrade(-1)
    this.#busy = false
    this.#pending = undefined
    this.#parser.close()
    this.#resParser?.close()
    this.#host.closed(this)
  }

  #requestError(err: ParseError): void {
    this.#parseDone = true
    this.#pause(PAUSED_PENDING)
    if (this.#busy && this.#parsing === undefined && !this.#reqDone) {
      // The body of the request in flight broke off: the API server has half a request.
      this.#dropUpstream()
      if (!this.#sent && !this.#local) this.#answerParseError(err)
      else this.#client.destroy()
      return
    }
    if (this.#busy) {
      ;(this.#pending ??= []).push({ minor: 1, headers: [], method: 0, url: '', upgrade: false, chunked: false, keepAlive: false, body: [], complete: true, error: err })
      this.#parsing = undefined
      return
    }
    this.#answerParseError(err)
  }

  #answerParseError(err: ParseError): void {
    if (err.code === 'HPE_HEADER_OVERFLOW') {
      this.#host.counted(431)
      return writeRawStatus(this.#client, 431, 'BadRequest', `memid: request headers exceed ${MAX_HEADER_BYTES} bytes`)
    }
    this.#host.counted(400)
    writeRawStatus(this.#client, 400, 'BadRequest', 'memid: malformed HTTP request')
  }

  /**
   * Keeps bytes until it is their turn (a pipelined request's body, or what follows an
   * upgrade request until the 101); reading stops beyond the bound.
   */
  #hold(into: Buffer[], chunk: Buffer): void {
    into.push(chunk)
    this.#pendingBytes += chunk.length
    if (this.#pendingBytes > PENDING_LIMIT) this.#pause(PAUSED_PENDING)
  }

  #pause(why: number): void {
    if (this.#paused === 0) this.#client.pause()
    this.#paused |= why
  }

  #unpause(why: number): void {
    if ((this.#paused & why) === 0) return
    this.#paused &= ~why
    if (this.#paused === 0 && !this.#closing) this.#client.resume()
  }

  // One exchange.

  #begin(minor: number, headers: string[], method: number, url: string, upgrade: boolean, chunked: boolean, keepAlive: boolean): void {
    this.#busy = true
    this.idleSince = 0
    this.#local = false
    this.#reqDone = false
    this.#resDone = false
    this.#status = 0
    this.#interim = false
    this.#sent = false
    this.#retried = false
    this.#switched = false
    this.#keepAlive = keepAlive && !this.#host.stopping
    this.#target = url
    const name = methods[method] ?? 'GET'
    this.#isHead = name === 'HEAD'
    this.#kind = upgrade ? 'upgrade' : chunked ? 'chunked' : 'plain'
    this.#watch = false
    // CONNECT asks for a tunnel to anywhere: not something a Kubernetes API proxy does.
    if (name === 'CONNECT') return this.#answer(400, 'BadRequest', 'memid: CONNECT is not supported', false, true)
    if (this.#refusal !== undefined) return this.#answer(403, 'Forbidden', `memid: ${this.#refusal.message}`, isDiscovery(url), true)
    if (!this.#host.hostAllowed(firstHeader(headers, 'host'))) {
      return this.#answer(403, 'Forbidden', 'memid: the Host header is not in this proxy\'s allowed hosts (DNS rebinding protection)', false, upgrade)
    }
    const dialer = this.#host.dialer()
    if (dialer instanceof MemidError) return this.#answer(503, 'ServiceUnavailable', `memid: ${dialer.message}`, isDiscovery(url), upgrade)
    const length = this.#kind === 'plain' ? firstHeader(headers, 'content-length') : undefined
    this.#bodyless = this.#kind === 'plain' && (length === undefined || length === '0')
    this.#watch = isWatch(url)
    if (this.#watch) this.#host.watch(1)
    this.#head = requestHead(name, url, minor, headers, dialer.authority, this.#kind, !this.#keepAlive)
    this.#send(dialer)
  }

  /** Writes the head to this connection's upstream connection, dialing one if it has none for this credential. */
  #send(dialer: UpstreamDialer): void {
    if (this.#up === undefined || this.#upDialer !== dialer || this.#up.destroyed || !this.#up.writable) this.#dial(dialer)
    this.#started = performance.now()
    ;(this.#up as tls.TLSSocket).write(this.#head, 'latin1')
  }

  #dial(dialer: UpstreamDialer): void {
    this.#dropUpstream()
    const up = dialer.connect(this.#onread ??= { buffer: Buffer.allocUnsafe(READ_BUFFER_BYTES), callback: this.#onUpRead })
    for (const [event, handler] of this.#upEvents) up.on(event, handler)
    this.#up = up
    this.#upDialer = dialer
    this.#upError = undefined
    this.#upUsed = 0
    let p = this.#resParser
    if (p === undefined) {
      p = new HTTPParser()
      p[HTTPParser.kOnHeadersComplete] = this.#onResponseHead
      p[HTTPParser.kOnMessageComplete] = this.#onResponseDone
      this.#resParser = p
    }
    p.initialize(HTTPParser.RESPONSE, {}, MAX_RESPONSE_HEAD_BYTES, HTTPParser.kLenientNone)
  }

  /** Lets go of the upstream connection (closing it); its late events are ignored. */
  #dropUpstream(): void {
    const up = this.#up
    if (up === undefined) return
    this.#up = undefined
    this.#upDialer = undefined
    for (const [event, handler] of this.#upEvents) up.off(event, handler)
    up.on('error', ignore)
    up.destroy()
    this.#unpause(PAUSED_UPSTREAM)
  }

  /** A Status answer from the proxy itself (policy refusals, no credential, upstream failures). */
  #answer(code: number, reason: StatusReason, message: string, warn: boolean, close: boolean): void {
    this.#local = true
    this.#resDone = true
    this.#status = code
    this.#host.counted(code)
    const closing = close || !this.#keepAlive
    this.#client.write(statusResponse(code, reason, message, warn, closing))
    if (closing) this.#closeClient()
    else if (this.#reqDone) this.#finish()
  }

  /** The exchange is over both ways: the next held request goes, or the connection idles. */
  #finish(): void {
    this.#busy = false
    this.idleSince = performance.now()
    if (this.#upDialer?.retired === true) this.#dropUpstream()
    if (this.#host.stopping) return this.#closeClient()
    const p = this.#pending?.shift()
    if (p === undefined) return this.#unpause(PAUSED_PENDING)
    if (this.#pending?.length === 0) this.#pending = undefined
    for (const b of p.body) this.#pendingBytes -= b.length
    if (p.error !== undefined) return this.#answerParseError(p.error)
    if (this.#parsing === p) this.#parsing = undefined
    this.#begin(p.minor, p.headers, p.method, p.url, p.upgrade, p.chunked, p.keepAlive)
    for (const b of p.body) {
      if (p.upgrade) this.#afterUpgrade(b)
      else this.#onRequestBody(b)
    }
    if (p.complete) this.#onRequestDone()
    if (this.#pendingBytes <= PENDING_LIMIT && !this.#parseDone) this.#unpause(PAUSED_PENDING)
  }

  /** Ends kubectl's connection once what was written has gone out. */
  #closeClient(): void {
    this.#closing = true
    this.#parseDone = true
    this.#dropUpstream()
    this.#client.end()
    // A peer that never reads must not keep the socket (and its buffers) alive.
    setTimeout(() => this.#client.destroy(), 5_000).unref()
  }

  #toUpstream(chunk: Buffer): void {
    const up = this.#up
    if (up !== undefined && !up.write(chunk)) this.#pause(PAUSED_UPSTREAM)
  }

  // The API server's side.

  /**
   * Upstream bytes arrive through the socket's `onread` buffer rather than as 'data' events:
   * a watch or chunked list comes as one TLS record per event, and each 'data' event costs
   * a readable-stream push, an emit and a nextTick. Each read is copied out of the shared
   * buffer (kubectl's socket may keep it queued).
   */
  readonly #onUpRead = (n: number, buf: Buffer): boolean => {
    const chunk = Buffer.allocUnsafe(n)
    buf.copy(chunk, 0, 0, n)
    this.#onUpData(chunk)
    return true
  }

  #onUpData(chunk: Buffer): void {
    if (this.#switched) return this.#toClient(chunk)
    if (!this.#busy || this.#local || this.#resDone) {
      // Bytes nobody asked for: the connection is not in a state anyone can rely on.
      this.#dropUpstream()
      return
    }
    const n = (this.#resParser as LlhttpParser).execute(chunk)
    if (typeof n !== 'number') {
      return this.#upstreamBroke(new MemidError('ERR_UPSTREAM', `the API server sent a malformed response (${n.code})`))
    }
    this.#sent = true
    // A whole answer in one read (most small GETs) has nothing to wait for: written at once.
    if (this.#resDone && !this.#corked) {
      if (!this.#client.write(chunk)) this.#up?.pause()
    } else {
      this.#toClient(chunk)
    }
    if (this.#switched) {
      this.#rawUp = true
      for (const b of this.#held ?? []) {
        this.#pendingBytes -= b.length
        this.#toUpstream(b)
      }
      this.#held = undefined
      this.#unpause(PAUSED_PENDING)
      this.#tunnel = true
      this.#host.counted(101)
      this.#host.upgrade(1)
      return
    }
    if (this.#resDone) this.#responseEnded()
  }

  /**
   * Each upstream read (about one TLS record) would otherwise be its own write(2) to
   * kubectl: a watch or a chunked list arrives as one record per event or chunk. The first
   * chunk of a round of upstream reads corks kubectl's socket until the event loop has
   * handled that round (setImmediate runs right after the I/O phase); whatever arrived by
   * then goes out as one writev(2).
   */
  #toClient(chunk: Buffer): void {
    const client = this.#client
    if (!this.#corked) {
      this.#corked = true
      client.cork()
      setImmediate(this.#uncork)
    }
    if (!client.write(chunk)) this.#up?.pause()
  }

  readonly #uncork = (): void => {
    this.#corked = false
    this.#client.uncork()
  }

  readonly #onResponseHead: OnHeadersComplete = (_major, _minor, _headers, _method, _url, status, _msg, _upgrade, keepAlive) => {
    if (status < 200 && status !== 101) {
      // 100 Continue and other interim answers pass through; the final one follows.
      this.#interim = true
      return 0
    }
    this.#status = status
    this.#upKeepAlive = keepAlive
    this.#host.upstreamAnswered((performance.now() - this.#started) / 1000)
    if (status === 101) {
      // A 101 to a request that asked for no upgrade would leave the two sides disagreeing on the protocol.
      if (this.#kind !== 'upgrade') return -1
      this.#switched = true
      return 0
    }
    return this.#isHead ? 1 : 0
  }

  readonly #onResponseDone = (): void => {
    if (this.#interim) {
      this.#interim = false
      return
    }
    this.#resDone = true
  }

  /** The API server's answer is complete (and already written to kubectl). */
  #responseEnded(): void {
    this.#host.counted(this.#status)
    if (this.#watch) this.#host.watch(-1)
    this.#watch = false
    this.#upUsed++
    // After an upgrade that was refused the connection is not worth keeping: kubectl closes
    // it too; a response that came before its request's body was sent leaves the API
    // server's side of the connection in an unknown state.
    const close = !this.#upKeepAlive || !this.#keepAlive || this.#kind === 'upgrade' || !this.#reqDone || this.#host.stopping
    if (close) return this.#closeClient()
    this.#finish()
  }

  readonly #onUpEnd = (): void => {
    if (this.#switched) {
      this.#client.end()
      return
    }
    // A response without a length ends with the connection.
    if (this.#busy && !this.#local && !this.#resDone && this.#status !== 0) {
      const err = (this.#resParser as LlhttpParser).finish()
      if (err === undefined && this.#resDone) this.#responseEnded()
    }
  }

  readonly #onUpError = (err: Error): void => {
    this.#upError = err
  }

  readonly #onUpDrain = (): void => {
    this.#unpause(PAUSED_UPSTREAM)
  }

  readonly #onUpClose = (): void => {
    const err = this.#upError ?? new MemidError('ERR_UPSTREAM', 'the API server closed the connection')
    const dialer = this.#upDialer
    this.#up = undefined
    this.#upDialer = undefined
    this.#unpause(PAUSED_UPSTREAM)
    if (this.#switched) return void this.#client.destroy()
    if (!this.#busy || this.#local || this.#resDone || dialer === undefined) return
    this.#upstreamBroke(err, dialer)
  }

  /** The upstream connection's listeners, attached when it is dialed and taken off when it is let go. */
  readonly #upEvents: [string, Listener][] = [
    ['end', this.#onUpEnd], ['error', this.#onUpError], ['close', this.#onUpClose], ['drain', this.#onUpDrain],
  ]

  /**
   * The upstream connection failed with a request in flight. Before any byte of the answer
   * that is a 502 Status (or, for a request the API server provably never saw, one more
   * try); after, kubectl's connection is closed: a Status cannot follow half a body.
   */
  #upstreamBroke(err: Error, dialer = this.#upDialer): void {
    const reused = this.#upUsed > 0
    this.#dropUpstream()
    if (this.#sent) return void this.#client.destroy()
    // The server closed an idle keep-alive connection just as the request went out: it
    // never saw the request, so one without a body goes again on a new connection.
    if (reused && this.#bodyless && !this.#retried && dialer !== undefined && !dialer.retired && this.#status === 0) {
      this.#retried = true
      return this.#send(dialer)
    }
    if (this.#watch) this.#host.watch(-1)
    this.#watch = false
    const message = dialer !== undefined ? this.#host.upstreamFailed(err, dialer) : `memid: ${describeError(err)}`
    this.#answer(502, 'ServiceUnavailable', message, isDiscovery(this.#target), this.#kind === 'upgrade' || !this.#reqDone)
  }
}

function ignore(): void {}

/** The event emitter's own listener type: one table holds handlers of different events. */
type Listener = (...args: any[]) => void

function firstHeader(raw: readonly string[], lower: string): string | undefined {
  for (let i = 0; i < raw.length; i += 2) if ((raw[i] as string).length === lower.length && (raw[i] as string).toLowerCase() === lower) return raw[i + 1]
  return undefined
}

/**
 * How the request's body is framed by its Transfer-Encoding headers (one pass over them):
 * `none` without one, `chunked` when the last coding is chunked, undefined for any other
 * last coding (refused).
 */
function transferCoding(raw: readonly string[]): 'none' | 'chunked' | undefined {
  let last: string | undefined
  for (let i = 0; i < raw.length; i += 2) if ((raw[i] as string).toLowerCase() === 'transfer-encoding') last = raw[i + 1]
  if (last === undefined) return 'none'
  const comma = last.lastIndexOf(',')
  return last.slice(comma + 1).trim().toLowerCase() === 'chunked' ? 'chunked' : undefined
}
