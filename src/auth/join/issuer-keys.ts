import https from 'node:https'
import { createLocalJWKSet, type JSONWebKeySet, type JWTVerifyGetKey } from 'jose'
import { MemidError } from '../../core/errors.ts'
import type { Clock } from '../../core/clock.ts'
import type { Logger } from '../../core/log.ts'

/** Unknown-`kid` refreshes per issuer are at most this often, counted from the last fetch. */
export const KID_REFRESH_MS = 60_000
/** Bounds on what `Cache-Control: max-age` may ask for. */
const MIN_MAX_AGE_MS = 60_000
const MAX_MAX_AGE_MS = 24 * 3_600_000
const DEFAULT_MAX_AGE_MS = 10 * 60_000
/** Cached keys keep serving for this long past their max-age while the issuer cannot be reached. */
const STALE_GRACE_MS = 24 * 3_600_000
const FETCH_TIMEOUT_MS = 5_000
const MAX_DOCUMENT_BYTES = 512 * 1024

interface Entry {
  getKey: JWTVerifyGetKey
  fetchedAt: number
  maxAgeMs: number
}

export interface IssuerKeysOptions {
  clock: Clock
  log: Logger
  /** Extra trusted CA (PEM) for tests; otherwise the system CAs plus NODE_EXTRA_CA_CERTS. */
  ca?: string
  kidRefreshMs?: number
}

/**
 * Signing keys of OIDC issuers, found by discovery over HTTPS and cached per issuer.
 * The cache follows the JWKS's Cache-Control, is refreshed early when a JWT names a key
 * it does not hold (at most once per KID_REFRESH_MS), and keeps serving what it has while
 * the issuer is unreachable. Concurrent refreshes of one issuer share one fetch.
 */
export class IssuerKeys {
  readonly #opts: IssuerKeysOptions
  readonly #entries = new Map<string, Entry>()
  readonly #lastFetch = new Map<string, number>()
  readonly #inflight = new Map<string, Promise<Entry>>()
  /** Fetches made, per issuer (for tests and metrics). */
  readonly fetches = new Map<string, number>()

  constructor(opts: IssuerKeysOptions) {
    this.#opts = opts
  }

  /**
   * Runs `verify` with the issuer's keys; when it fails for want of a matching key and the
   * last fetch is old enough, fetches once more and retries.
   */
  async use<T>(issuer: string, verify: (getKey: JWTVerifyGetKey) => Promise<T>): Promise<T> {
    const now = this.#opts.clock.now()
    let entry = this.#entries.get(issuer)
    if (entry === undefined) entry = await this.#refresh(issuer)
    else if (now > entry.fetchedAt + entry.maxAgeMs && this.#mayFetch(issuer, now)) entry = await this.#refreshOrKeep(issuer, entry, now)
    // The caller turns jose's errors into its own, so the missing key is noticed here, at the lookup.
    let missing = false
    const current = entry
    const getKey: JWTVerifyGetKey = async (header, token) => {
      try {
        return await current.getKey(header, token)
      } catch (err) {
        if ((err as { code?: string }).code === 'ERR_JWKS_NO_MATCHING_KEY') missing = true
        throw err
      }
    }
    try {
      return await verify(getKey)
    } catch (err) {
      if (!missing || !this.#mayFetch(issuer, now)) throw err
      const fresh = await this.#refreshOrKeep(issuer, entry, now)
      if (fresh === entry) throw err
      return verify(fresh.getKey)
    }
  }

  #mayFetch(issuer: string, now: number): boolean {
    return now - (this.#lastFetch.get(issuer) ?? -Infinity) >= (this.#opts.kidRefreshMs ?? KID_REFRESH_MS)
  }

  async #refreshOrKeep(issuer: string, entry: Entry, now: number): Promise<Entry> {
    try {
      return await this.#refresh(issuer)
    } catch (err) {
      if (now > entry.fetchedAt + entry.maxAgeMs + STALE_GRACE_MS) throw err
      this.#opts.log.warn({ issuer, err: (err as Error).message }, 'issuer unreachable: using its cached keys')
      return entry
    }
  }

  #refresh(issuer: string): Promise<Entry> {
    let p = this.#inflight.get(issuer)
    if (p === undefined) {
      p = this.#fetch(issuer).finally(() => this.#inflight.delete(issuer))
      this.#inflight.set(issuer, p)
    }
    return p
  }

  async #fetch(issuer: string): Promise<Entry> {
    this.#lastFetch.set(issuer, this.#opts.clock.now())
    this.fetches.set(issuer, (this.fetches.get(issuer) ?? 0) + 1)
    const discovery = await this.#get(`${issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`, issuer)
    const doc = discovery.body as { issuer?: unknown; jwks_uri?: unknown }
    if (doc.issuer !== issuer) throw unreachable(issuer, `its discovery document names issuer ${JSON.stringify(String(doc.issuer).slice(0, 200))}`)
    if (typeof doc.jwks_uri !== 'string' || !doc.jwks_uri.startsWith('https://')) throw unreachable(issuer, 'its discovery document has no https jwks_uri')
    const jwks = await this.#get(doc.jwks_uri, issuer)
    const entry: Entry = { getKey: localKeySet(jwks.body, `the JWKS of ${issuer}`), fetchedAt: this.#opts.clock.now(), maxAgeMs: jwks.maxAgeMs }
    this.#entries.set(issuer, entry)
    return entry
  }

  #get(url: string, issuer: string): Promise<{ body: unknown; maxAgeMs: number }> {
    return new Promise((resolve, reject) => {
      const fail = (why: string) => reject(unreachable(issuer, why))
      let u: URL
      try {
        u = new URL(url)
      } catch {
        return fail(`${url.slice(0, 200)} is not a URL`)
      }
      if (u.protocol !== 'https:') return fail(`${u.origin} is not https`)
      const req = https.get(u, { timeout: FETCH_TIMEOUT_MS, headers: { accept: 'application/json' }, ...(this.#opts.ca ? { ca: this.#opts.ca } : {}) }, (res) => {
        if (res.statusCode !== 200) {
          res.resume()
          return fail(`GET ${u.origin}${u.pathname} answered ${res.statusCode}`)
        }
        const chunks: Buffer[] = []
        let size = 0
        res.on('data', (d: Buffer) => {
          size += d.length
          if (size > MAX_DOCUMENT_BYTES) {
            req.destroy()
            fail(`GET ${u.origin}${u.pathname} is larger than ${MAX_DOCUMENT_BYTES} bytes`)
          } else chunks.push(d)
        })
        res.on('end', () => {
          try {
            resolve({ body: JSON.parse(Buffer.concat(chunks).toString('utf8')), maxAgeMs: maxAge(res.headers['cache-control']) })
          } catch {
            fail(`GET ${u.origin}${u.pathname} is not JSON`)
          }
        })
        res.on('error', (err) => fail(err.message))
      })
      req.on('timeout', () => req.destroy(new Error('timed out')))
      req.on('error', (err: NodeJS.ErrnoException) => fail(`GET ${u.origin}${u.pathname}: ${err.code ?? err.message}`))
    })
  }
}

/** A jose key set from a JWKS document; only asymmetric keys are kept (`oct` keys never verify a join). */
export function localKeySet(doc: unknown, what: string): JWTVerifyGetKey {
  const keys = (doc as { keys?: unknown } | null)?.keys
  if (!Array.isArray(keys)) throw new MemidError('ERR_BAD_REQUEST', `${what} is not a JWKS (no "keys" array)`)
  const asymmetric = keys.filter((k): k is Record<string, unknown> => typeof k === 'object' && k !== null && ['RSA', 'EC', 'OKP'].includes(String((k as { kty?: unknown }).kty)))
  return createLocalJWKSet({ keys: asymmetric } as JSONWebKeySet)
}

function maxAge(header: string | undefined): number {
  if (header === undefined) return DEFAULT_MAX_AGE_MS
  if (/\b(no-store|no-cache)\b/i.test(header)) return MIN_MAX_AGE_MS
  const m = /\bmax-age\s*=\s*(\d+)/i.exec(header)
  if (m === null) return DEFAULT_MAX_AGE_MS
  return Math.min(MAX_MAX_AGE_MS, Math.max(MIN_MAX_AGE_MS, Number(m[1]) * 1000))
}

function unreachable(issuer: string, why: string): MemidError {
  return new MemidError('ERR_JOIN_ISSUER_UNREACHABLE', `cannot get the signing keys of ${issuer}: ${why}`)
}
