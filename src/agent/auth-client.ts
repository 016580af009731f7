import https from 'node:https'
import type { z } from 'zod'
import type tls from 'node:tls'
import { ERROR_STATUS, MemidError, type ErrorCode } from '../core/errors.ts'
import { spkiPin } from '../pki/x509.ts'
import { issueText } from '../core/validate.ts'
import { hostPort } from '../core/listener.ts'
import {
  casResponseSchema, dbCertResponseSchema, heartbeatResponseSchema, joinTokenInfoSchema, identityResponseSchema, kubeCertResponseSchema, sshCertResponseSchema,
} from '../api/schemas.ts'
import { parseAuthServer, type AuthServerAddress } from '../config/agent.ts'
import {
  AUTH_SERVER_NAME, type CasResponse, type DbCertRequest, type DbCertResponse, type HeartbeatRequest, type IdentityResponse, type JoinTokenInfo,
  type JoinRequest, type KubeCertRequest, type KubeCertResponse, type RenewRequest, type SshCertRequest, type SshCertResponse,
} from '../api/types.ts'

const MAX_RESPONSE_BYTES = 1024 * 1024

export interface AuthClientOptions {
  /**
   * The auth service: `host:port`, or the addresses config already parsed. Several are
   * replicas of one cluster (one CA, one pin), tried in turn.
   */
  server: string | AuthServerAddress | AuthServerAddress[]
  /** Accepted `sha256:<hex>` pins of the auth service's TLS CA. */
  caPins: string[]
  /** Per request: connect, TLS and answer together. */
  timeoutMs?: number
}

/** Credentials for authenticated calls: a TLS context with the bot identity, built once per identity. */
export interface CallerIdentity {
  agent: https.Agent
}

/**
 * A failure that says nothing about the request, only about the server it went to (no
 * connection, a reset, a timeout, a 5xx): the same request may be tried on another replica.
 * A 4xx is the cluster's answer and is never retried elsewhere.
 */
class ServerFailure extends Error {
  readonly error: MemidError
  constructor(error: MemidError) {
    super(error.message)
    this.error = error
  }
}

/**
 * The typed client of the auth API. Trust starts from the CA pin: `bootstrap` fetches the
 * CA bundle once, accepts it only if its key matches a pin, and from then on every
 * connection verifies the server against that CA and the name `memid-auth`.
 *
 * With several servers the client keeps to the one in use while it answers; on a server
 * failure (see ServerFailure) it moves to the next and sends the same request again,
 * each server at most once per request. Every request is safe to repeat on another
 * replica: a renewal retried with the same new key is the same renewal (the auth service
 * answers it with the same pending generation), heartbeats and certificate issues are
 * reads or fresh issues. Only a join whose answer was lost cannot be repeated (its token
 * is single use); the retry is refused as a used token, as it would be on one server.
 */
export class AuthClient {
  readonly #servers: AuthServerAddress[]
  #current = 0
  readonly #pins: string[]
  readonly #timeoutMs: number
  #cas: CasResponse | undefined
  #anonAgent: https.Agent | undefined

  constructor(opts: AuthClientOptions) {
    this.#servers = typeof opts.server === 'string' ? [parseAuthServer(opts.server)] : Array.isArray(opts.server) ? [...opts.server] : [opts.server]
    if (this.#servers.length === 0) throw new TypeError('AuthClient: no auth server given')
    this.#pins = opts.caPins
    this.#timeoutMs = opts.timeoutMs ?? 10_000
  }

  /** The server in use: the one that answered last (or will be asked next). */
  get server(): string {
    return formatServer(this.#servers[this.#current]!)
  }

  /** Every configured server, in the order they are tried. */
  get servers(): string[] {
    return this.#servers.map(formatServer)
  }

  /** The pinned CA bundle (after bootstrap). */
  get cas(): CasResponse {
    if (this.#cas === undefined) throw new TypeError('AuthClient.bootstrap() has not run')
    return this.#cas
  }

  /**
   * Fetches the CA bundle over a connection verified against a pinned CA. The first,
   * unverified connection only tells which certificate claims to be the TLS CA; nothing
   * else it says is kept, because a man-in-the-middle could have written it. The bundle
   * kept is the one read again over a connection that verified the server against that
   * (pinned) CA and the name `memid-auth`.
   */
  async bootstrap(): Promise<CasResponse> {
    const probe = new https.Agent({ rejectUnauthorized: false, keepAlive: false })
    let claimedCa: string
    try {
      claimedCa = this.#pinnedTlsCa(await this.#request('GET', '/v1/cas', undefined, probe, 'bootstrap', casResponseSchema))
    } finally {
      probe.destroy()
    }
    const verified = anonymousAgent(claimedCa)
    let cas: CasResponse
    try {
      cas = await this.#request('GET', '/v1/cas', undefined, verified, 'bootstrap', casResponseSchema)
      this.#pinnedTlsCa(cas)
    } catch (err) {
      verified.destroy()
      throw err
    }
    this.#cas = cas
    this.#anonAgent?.destroy()
    // The verified connection stays open for the join that follows: it was verified against
    // the very CA the bundle names, so it is the connection a new agent would open for it,
    // and a runner's join costs the auth service two handshakes instead of three. (With
    // several pins the bundle may name another pinned CA: then a new agent trusts that one.)
    if (cas.tls === claimedCa) {
      this.#anonAgent = verified
    } else {
      verified.destroy()
      this.#anonAgent = anonymousAgent(cas.tls)
    }
    return cas
  }

  /** The bundle's TLS CA, if the bundle is well formed and that CA matches a pin. */
  #pinnedTlsCa(cas: CasResponse | undefined): string {
    if (typeof cas?.tls !== 'string' || typeof cas.sshHost !== 'string') throw new MemidError('ERR_AUTH_BAD_RESPONSE', 'the auth server sent a malformed CA bundle')
    let pin: string
    try {
      pin = spkiPin(cas.tls)
    } catch {
      throw new MemidError('ERR_AUTH_BAD_RESPONSE', 'the auth server sent a TLS CA that is not a certificate')
    }
    if (!this.#pins.includes(pin)) {
      throw new MemidError('ERR_CA_PIN_MISMATCH', `the auth server at ${this.server} presented CA ${pin}, which matches no --ca-pin; refusing to trust it`)
    }
    return cas.tls
  }

  /**
   * An https.Agent presenting the bot identity, for authenticated calls. One connection per
   * identity: requests under it queue on that connection rather than open more. After each
   * renewal the agent asks for every service's certificate at once, and with room for four
   * connections each request beyond the first made the auth service do a full mutual-TLS
   * handshake of its own (~1.4 ms of its CPU, as much for the agent) to answer a request
   * that takes a fraction of that: an agent with three services cost the auth service
   * four handshakes per renewal where two (the renewal under the old identity, the
   * heartbeat under the new) are needed.
   */
  identityAgent(secureContext: tls.SecureContext): https.Agent {
    return new https.Agent({ keepAlive: true, secureContext, servername: AUTH_SERVER_NAME, maxSockets: 1 })
  }

  join(req: JoinRequest): Promise<IdentityResponse> {
    return this.#request('POST', '/v1/join', req, this.#anon(), 'join', identityResponseSchema)
  }

  /** The audience the auth service expects in a platform join token's JWTs (asked before each platform join). */
  joinTokenInfo(name: string): Promise<JoinTokenInfo> {
    return this.#request('GET', `/v1/join-tokens/${encodeURIComponent(name)}`, undefined, this.#anon(), `join token ${name}`, joinTokenInfoSchema)
  }

  renew(id: CallerIdentity, req: RenewRequest): Promise<IdentityResponse> {
    return this.#request('POST', '/v1/renew', req, id.agent, 'renew', identityResponseSchema)
  }

  heartbeat(id: CallerIdentity, req: HeartbeatRequest): Promise<{ generation: number }> {
    return this.#request('POST', '/v1/heartbeat', req, id.agent, 'heartbeat', heartbeatResponseSchema)
  }

  issueSsh(id: CallerIdentity, req: SshCertRequest): Promise<SshCertResponse> {
    return this.#request('POST', '/v1/certs/ssh', req, id.agent, 'ssh certificate', sshCertResponseSchema)
  }

  issueKube(id: CallerIdentity, req: KubeCertRequest): Promise<KubeCertResponse> {
    return this.#request('POST', '/v1/certs/kube', req, id.agent, 'kube certificate', kubeCertResponseSchema)
  }

  issueDb(id: CallerIdentity, req: DbCertRequest): Promise<DbCertResponse> {
    return this.#request('POST', '/v1/certs/db', req, id.agent, 'database certificate', dbCertResponseSchema)
  }

  close(): void {
    this.#anonAgent?.destroy()
  }

  #anon(): https.Agent {
    if (this.#anonAgent === undefined) throw new TypeError('AuthClient.bootstrap() has not run')
    return this.#anonAgent
  }

  /**
   * Sends the request to the server in use, and on a server failure to the next, until one
   * answers or each has been tried once. The last failure is the error.
   */
  async #request<T>(method: string, path: string, body: unknown, agent: https.Agent, what: string, schema: z.ZodType<T>): Promise<T> {
    let last: MemidError | undefined
    for (let tried = 0; tried < this.#servers.length; tried++) {
      const index = this.#current
      try {
        return await this.#attempt(this.#servers[index]!, method, path, body, agent, what, schema)
      } catch (err) {
        if (!(err instanceof ServerFailure)) throw err
        last = err.error
        // Another request may have moved on already; move only from the server this one used.
        if (this.#current === index) this.#current = (index + 1) % this.#servers.length
      }
    }
    throw last!
  }

  /** One try against one server; a failure of that server is thrown as ServerFailure. */
  #attempt<T>(server: AuthServerAddress, method: string, path: string, body: unknown, agent: https.Agent, what: string, schema: z.ZodType<T>): Promise<T> {
    const where = formatServer(server)
    return new Promise<T>((resolve, reject) => {
      const payload = body === undefined ? undefined : JSON.stringify(body)
      let settled = false
      const done = (err: MemidError | undefined, value?: unknown, serverFailure = false) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        if (err) return reject(serverFailure ? new ServerFailure(err) : err)
        // Checked with the contract's schema: inner code trusts these types.
        const r = schema.safeParse(value)
        if (r.success) resolve(r.data)
        else reject(new MemidError('ERR_AUTH_BAD_RESPONSE', `${what}: the auth server sent a malformed answer: ${issueText(r.error)}`))
      }
      const req = https.request({
        host: server.host, port: server.port, method, path, agent,
        headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
      }, (res) => {
        const chunks: Buffer[] = []
        let size = 0
        res.on('data', (c: Buffer) => {
          size += c.length
          if (size > MAX_RESPONSE_BYTES) {
            req.destroy()
            done(new MemidError('ERR_AUTH_BAD_RESPONSE', `${what}: the auth server's answer is larger than ${MAX_RESPONSE_BYTES} bytes`))
            return
          }
          chunks.push(c)
        })
        res.on('error', () => done(new MemidError('ERR_AUTH_UNREACHABLE', `${what}: the connection to the auth server at ${where} broke mid-answer`), undefined, true))
        res.on('end', () => {
          let parsed: unknown
          try {
            parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'))
          } catch {
            // A 5xx without JSON is a proxy or a dying process in front of the replica.
            return done(new MemidError('ERR_AUTH_BAD_RESPONSE', `${what}: the auth server at ${where} answered ${res.statusCode} with something that is not JSON`), undefined, (res.statusCode ?? 0) >= 500)
          }
          const status = res.statusCode ?? 0
          if (status >= 200 && status < 300) return done(undefined, parsed)
          const e = (parsed as { error?: { code?: unknown; message?: unknown } } | null)?.error
          const code = typeof e?.code === 'string' && e.code in ERROR_STATUS ? (e.code as ErrorCode) : 'ERR_AUTH_BAD_RESPONSE'
          const message = typeof e?.message === 'string' ? e.message.slice(0, 500) : `the auth server answered ${status}`
          done(new MemidError(code, `${what}: ${message}`), undefined, status >= 500)
        })
      })
      // The clock starts when the request gets its connection: requests under one identity
      // queue for its one connection (identityAgent), and time spent behind another request
      // is not this server failing to answer (that one has its own timeout, which frees the
      // connection). Counted from the start, a third queued request timed out against a
      // slow server and moved on to the next replica.
      let timer: NodeJS.Timeout | undefined
      req.once('socket', () => {
        if (settled) return
        timer = setTimeout(() => {
          req.destroy()
          done(new MemidError('ERR_AUTH_TIMEOUT', `${what}: the auth server at ${where} did not answer within ${Math.round(this.#timeoutMs / 1000)}s`), undefined, true)
        }, this.#timeoutMs)
      })
      req.on('error', (err: NodeJS.ErrnoException) => {
        const code = err.code ?? ''
        if (code.startsWith('ERR_TLS') || code.includes('CERT') || code === 'DEPTH_ZERO_SELF_SIGNED_CERT' || code === 'UNABLE_TO_VERIFY_LEAF_SIGNATURE') {
          return done(new MemidError('ERR_CA_PIN_MISMATCH', `${what}: the auth server's certificate did not verify against the pinned CA (${code})`))
        }
        // A reset is also what a replica killed mid-request looks like: try the next one.
        if (code === 'EPROTO' || code === 'ECONNRESET' || code === 'HPE_INVALID_CONSTANT') {
          return done(new MemidError('ERR_AUTH_BAD_RESPONSE', `${what}: ${where} did not answer as a memid auth service over TLS (${code})`), undefined, true)
        }
        done(new MemidError('ERR_AUTH_UNREACHABLE', `${what}: cannot reach the auth server at ${where} (${code || err.message})`), undefined, true)
      })
      req.end(payload)
    })
  }
}

/** Unauthenticated calls (the CA bundle, joins): the server verified against `caPem` and the name `memid-auth`. */
function anonymousAgent(caPem: string): https.Agent {
  return new https.Agent({ keepAlive: true, ca: caPem, servername: AUTH_SERVER_NAME, maxSockets: 4 })
}

function formatServer(s: AuthServerAddress): string {
  return hostPort(s.host, s.port)
}
