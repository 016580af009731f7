import https from 'node:https'
import type tls from 'node:tls'
import { ERROR_STATUS, MemidError, type ErrorCode } from '../core/errors.ts'
import { spkiPin } from '../pki/x509.ts'
import { parseAuthServer, type AuthServerAddress } from '../config/agent.ts'
import {
  AUTH_SERVER_NAME, type CasResponse, type DbCertRequest, type DbCertResponse, type HeartbeatRequest, type IdentityResponse,
  type JoinRequest, type KubeCertRequest, type KubeCertResponse, type RenewRequest, type SshCertRequest, type SshCertResponse,
} from '../api/types.ts'

const MAX_RESPONSE_BYTES = 1024 * 1024

export interface AuthClientOptions {
  /** The auth service: `host:port`, or the address config already parsed. */
  server: string | AuthServerAddress
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
 * The typed client of the auth API. Trust starts from the CA pin: `bootstrap` fetches the
 * CA bundle once, accepts it only if its key matches a pin, and from then on every
 * connection verifies the server against that CA and the name `memid-auth`.
 */
export class AuthClient {
  readonly #host: string
  readonly #port: number
  readonly #pins: string[]
  readonly #timeoutMs: number
  #cas: CasResponse | undefined
  #anonAgent: https.Agent | undefined

  constructor(opts: AuthClientOptions) {
    const addr = typeof opts.server === 'string' ? parseAuthServer(opts.server) : opts.server
    this.#host = addr.host
    this.#port = addr.port
    this.#pins = opts.caPins
    this.#timeoutMs = opts.timeoutMs ?? 10_000
  }

  get server(): string {
    return this.#host.includes(':') ? `[${this.#host}]:${this.#port}` : `${this.#host}:${this.#port}`
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
      claimedCa = this.#pinnedTlsCa(await this.#request<CasResponse>('GET', '/v1/cas', undefined, probe, 'bootstrap'))
    } finally {
      probe.destroy()
    }
    const verified = new https.Agent({ keepAlive: false, ca: claimedCa, servername: AUTH_SERVER_NAME })
    let cas: CasResponse
    try {
      cas = await this.#request<CasResponse>('GET', '/v1/cas', undefined, verified, 'bootstrap')
      this.#pinnedTlsCa(cas)
    } finally {
      verified.destroy()
    }
    this.#cas = cas
    this.#anonAgent?.destroy()
    this.#anonAgent = new https.Agent({ keepAlive: true, ca: cas.tls, servername: AUTH_SERVER_NAME, maxSockets: 4 })
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

  /** An https.Agent presenting the bot identity, for authenticated calls. */
  identityAgent(secureContext: tls.SecureContext): https.Agent {
    return new https.Agent({ keepAlive: true, secureContext, servername: AUTH_SERVER_NAME, maxSockets: 4 })
  }

  join(req: JoinRequest): Promise<IdentityResponse> {
    return this.#request('POST', '/v1/join', req, this.#anon(), 'join')
  }

  renew(id: CallerIdentity, req: RenewRequest): Promise<IdentityResponse> {
    return this.#request('POST', '/v1/renew', req, id.agent, 'renew')
  }

  heartbeat(id: CallerIdentity, req: HeartbeatRequest): Promise<{ generation: number }> {
    return this.#request('POST', '/v1/heartbeat', req, id.agent, 'heartbeat')
  }

  issueSsh(id: CallerIdentity, req: SshCertRequest): Promise<SshCertResponse> {
    return this.#request('POST', '/v1/certs/ssh', req, id.agent, 'ssh certificate')
  }

  issueKube(id: CallerIdentity, req: KubeCertRequest): Promise<KubeCertResponse> {
    return this.#request('POST', '/v1/certs/kube', req, id.agent, 'kube certificate')
  }

  issueDb(id: CallerIdentity, req: DbCertRequest): Promise<DbCertResponse> {
    return this.#request('POST', '/v1/certs/db', req, id.agent, 'database certificate')
  }

  close(): void {
    this.#anonAgent?.destroy()
  }

  #anon(): https.Agent {
    if (this.#anonAgent === undefined) throw new TypeError('AuthClient.bootstrap() has not run')
    return this.#anonAgent
  }

  #request<T>(method: string, path: string, body: unknown, agent: https.Agent, what: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const payload = body === undefined ? undefined : JSON.stringify(body)
      let settled = false
      const done = (err: Error | undefined, value?: T) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        if (err) reject(err)
        else resolve(value as T)
      }
      const req = https.request({
        host: this.#host, port: this.#port, method, path, agent,
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
        res.on('error', () => done(new MemidError('ERR_AUTH_UNREACHABLE', `${what}: the connection to the auth server broke mid-answer`)))
        res.on('end', () => {
          let parsed: unknown
          try {
            parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'))
          } catch {
            return done(new MemidError('ERR_AUTH_BAD_RESPONSE', `${what}: the auth server answered ${res.statusCode} with something that is not JSON`))
          }
          const status = res.statusCode ?? 0
          if (status >= 200 && status < 300) return done(undefined, parsed as T)
          const e = (parsed as { error?: { code?: unknown; message?: unknown } } | null)?.error
          const code = typeof e?.code === 'string' && e.code in ERROR_STATUS ? (e.code as ErrorCode) : 'ERR_AUTH_BAD_RESPONSE'
          const message = typeof e?.message === 'string' ? e.message.slice(0, 500) : `the auth server answered ${status}`
          done(new MemidError(code, `${what}: ${message}`))
        })
      })
      const timer = setTimeout(() => {
        req.destroy()
        done(new MemidError('ERR_AUTH_TIMEOUT', `${what}: the auth server at ${this.server} did not answer within ${Math.round(this.#timeoutMs / 1000)}s`))
      }, this.#timeoutMs)
      req.on('error', (err: NodeJS.ErrnoException) => {
        const code = err.code ?? ''
        if (code.startsWith('ERR_TLS') || code.includes('CERT') || code === 'DEPTH_ZERO_SELF_SIGNED_CERT' || code === 'UNABLE_TO_VERIFY_LEAF_SIGNATURE') {
          return done(new MemidError('ERR_CA_PIN_MISMATCH', `${what}: the auth server's certificate did not verify against the pinned CA (${code})`))
        }
        if (code === 'EPROTO' || code === 'ECONNRESET' || code === 'HPE_INVALID_CONSTANT') {
          return done(new MemidError('ERR_AUTH_BAD_RESPONSE', `${what}: ${this.server} did not answer as a memid auth service over TLS (${code})`))
        }
        done(new MemidError('ERR_AUTH_UNREACHABLE', `${what}: cannot reach the auth server at ${this.server} (${code || err.message})`))
      })
      req.end(payload)
    })
  }
}
