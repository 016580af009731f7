import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import os from 'node:os'
import type { Counter } from '../core/metrics.ts'
import type { Clock } from '../core/clock.ts'
import { MemidError, describeError, hasCode } from '../core/errors.ts'
import { collectAfterRenewal } from '../core/gc.ts'
import type { Logger } from '../core/log.ts'
import { buildClientContext } from '../pki/tls-context.ts'
import type { HeartbeatRequest, IdentityResponse } from '../api/types.ts'
import { CredentialSource, type IssuedCredential } from '../credentials/credentials.ts'
import { spkiPem, type CredentialIssuer } from '../credentials/issuer.ts'
import type { Onboarding } from '../config/agent.ts'
import { VERSION } from '../version.ts'
import type { AuthClient, CallerIdentity } from './auth-client.ts'
import { joinCredentials } from './onboarding.ts'
import { RenewalLoop, type RenewalStatus } from './renewal.ts'

/** The bot identity as held in memory: key, certificate, and the client built on them. */
export interface BotIdentity extends IssuedCredential {
  kind: 'bot'
  bot: string
  instanceId: string
  generation: number
  privateKey: KeyObject
  certificatePem: string
  caller: CallerIdentity
}

export interface BotIdentityOptions {
  client: AuthClient
  certificateTtlMs: number
  renewalIntervalMs: number
  clock: Clock
  logger: Logger
  renewals: Counter<'credential' | 'result'>
  heartbeatFailures: Counter
  /** What the heartbeat reports about the services. */
  services(): HeartbeatRequest['services']
  /** After each renewal, once the heartbeat under the new identity was sent. */
  onRenewed(identity: BotIdentity): Promise<void>
  /** A renewal failed (and will be retried). */
  onFailure(err: unknown): void
  /** The identity can never be renewed again (locked, deleted, superseded). */
  onFatal(err: MemidError): void
  env?: NodeJS.ProcessEnv
}

/**
 * Renewal refusals after which a platform-joined agent joins again instead of stopping:
 * the identity expired (the auth service was away too long) or the instance is gone. Locks,
 * a deleted bot and a stale generation are security decisions and still stop the agent.
 */
const REJOIN_CODES = new Set(['ERR_UNAUTHENTICATED', 'ERR_IDENTITY_EXPIRED', 'ERR_INSTANCE_NOT_FOUND'])

/** Answers to a heartbeat that mean this identity is finished. */
const FATAL_HEARTBEAT = new Set(['ERR_LOCKED', 'ERR_BOT_NOT_FOUND', 'ERR_INSTANCE_NOT_FOUND', 'ERR_STALE_GENERATION'])

/**
 * The bot identity's whole life: the join, renewals on the renewal loop (new key each
 * time), and the heartbeat that confirms each generation. The one place that decides which
 * key a request is sent under; services get a CredentialIssuer bound to the current identity.
 */
export class BotIdentityKeeper {
  readonly source: CredentialSource<BotIdentity>
  readonly #o: BotIdentityOptions
  readonly #loop: RenewalLoop
  #heartbeatFailed = 0
  /** The key pair of the renewal in progress, kept across its retries, and the generation it renews from. */
  #nextKey: { from: number; key: KeyObject } | undefined
  /** Requests under the current identity that have not settled yet. */
  #inflight = 0
  #drained: (() => void)[] = []
  /** While a new identity waits for the old one's requests to settle, no request starts. */
  #swapping: Promise<void> | undefined
  #onboarding: Onboarding | undefined
  #joins = 0

  constructor(o: BotIdentityOptions) {
    this.#o = o
    this.source = new CredentialSource<BotIdentity>('bot identity', o.clock)
    this.#loop = new RenewalLoop({
      name: 'bot-identity', intervalMs: () => this.#nextRenewalMs(), run: (commit) => this.#renew(commit), logger: o.logger,
      renewals: o.renewals, onFatal: o.onFatal,
      onFailure: (err) => {
        // After expiry the identity and the services keep the last real cause (e.g. the auth
        // service being away): the expiry itself is what their state already says.
        if (hasCode(err, 'ERR_IDENTITY_EXPIRED')) return
        this.source.fail(err)
        o.onFailure(err)
      },
    })
  }

  /**
   * The next renewal is due at the earlier of the renewal interval and half the remaining
   * lifetime of the certificate actually issued (the auth service may clamp the TTL to the
   * bot's max TTL).
   */
  #nextRenewalMs(): number {
    const id = this.source.peek()
    if (id === undefined) return this.#o.renewalIntervalMs
    return Math.max(0, Math.min(this.#o.renewalIntervalMs, (id.notAfter.getTime() - this.#o.clock.now()) / 2))
  }

  /** The TTL every certificate is requested with, e.g. `3600s`. */
  get ttl(): string {
    return `${Math.max(5, Math.round(this.#o.certificateTtlMs / 1000))}s`
  }

  get heartbeatFailures(): number {
    return this.#heartbeatFailed
  }

  /** The join method, once joined. */
  get joinMethod(): Onboarding['method'] | undefined {
    return this.#onboarding?.method
  }

  /** Joins this process made (platform joins rejoin when the identity cannot be renewed). */
  get joins(): number {
    return this.#joins
  }

  /** Joins with the onboarding method (this is where the token is read and spent). */
  async join(onboarding: Onboarding): Promise<BotIdentity> {
    this.#onboarding = onboarding
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    // The proof (a platform JWT) is fetched, sent and dropped here: nothing keeps it.
    const res = await this.#o.client.join({ ...(await joinCredentials(onboarding, this.#o.env ?? process.env, this.#o.client)), publicKey: spkiPem(privateKey), ttl: this.ttl })
    const id = this.#build(res, privateKey)
    this.source.set(id)
    this.#joins++
    this.#o.logger.info({ bot: res.bot, instance: res.instanceId, generation: res.generation, serial: res.serial, joinMethod: onboarding.method }, 'joined')
    return id
  }

  /** A platform join again, with a fresh JWT: a new bot instance replaces the one that cannot renew. */
  async #rejoin(onboarding: Onboarding, reason: string): Promise<void> {
    this.#o.logger.warn({ joinMethod: onboarding.method, reason }, 'identity cannot be renewed: joining again with a fresh platform token')
    const old = this.source.peek()
    this.#nextKey = undefined
    await this.join(onboarding)
    old?.caller.agent.destroy()
    await this.heartbeat()
    await this.#o.onRenewed(this.source.current())
  }

  /** Starts periodic renewal and sends the first heartbeat. */
  start(): void {
    this.#loop.start()
    void this.heartbeat()
  }

  /** Renews now (SIGHUP). */
  renew(): Promise<void> {
    return this.#loop.trigger()
  }

  status(): RenewalStatus {
    return this.#loop.status()
  }

  /** Issuing calls authenticated as the current identity. */
  issuer(): CredentialIssuer {
    this.source.current()
    const client = this.#o.client
    return {
      ttl: this.ttl,
      sshUserCa: client.cas.sshUser,
      issueSsh: (req) => this.#withIdentity((id) => client.issueSsh(id.caller, req)),
      issueKube: (req) => this.#withIdentity((id) => client.issueKube(id.caller, req)),
      issueDb: (req) => this.#withIdentity((id) => client.issueDb(id.caller, req)),
    }
  }

  /**
   * Sends a request under the identity current when it starts, never an older one: once a
   * newer identity is in use the auth service takes the older generation for a copy.
   */
  async #withIdentity<T>(send: (id: BotIdentity) => Promise<T>): Promise<T> {
    while (this.#swapping) await this.#swapping
    const id = this.source.current()
    this.#inflight++
    try {
      return await send(id)
    } finally {
      if (--this.#inflight === 0) for (const done of this.#drained.splice(0)) done()
    }
  }

  /** Makes `next` current once every request under the previous identity has settled. */
  async #swap(next: BotIdentity, commit?: () => void): Promise<void> {
    let done!: () => void
    this.#swapping = new Promise((resolve) => (done = resolve))
    try {
      if (this.#inflight > 0) await new Promise<void>((resolve) => this.#drained.push(resolve))
      this.source.set(next)
      commit?.()
    } finally {
      this.#swapping = undefined
      done()
    }
  }

  /** Stops renewing and closes the identity's connections. */
  stop(): void {
    this.#loop.stop()
    this.source.peek()?.caller.agent.destroy()
  }

  #build(res: IdentityResponse, privateKey: KeyObject): BotIdentity {
    const client = this.#o.client
    const secureContext = buildClientContext({ key: privateKey, certPem: res.certificate, caPem: client.cas.tls })
    return {
      kind: 'bot', bot: res.bot, instanceId: res.instanceId, generation: res.generation, privateKey, certificatePem: res.certificate,
      serial: res.serial, notBefore: new Date(res.notBefore), notAfter: new Date(res.notAfter),
      caller: { agent: client.identityAgent(secureContext) },
    }
  }

  /** `commit` counts the renewal in the loop's status in the same step as the new identity becomes visible. */
  async #renew(commit: () => void): Promise<void> {
    const onboarding = this.#onboarding
    const platform = onboarding !== undefined && onboarding.method !== 'token' ? onboarding : undefined
    const current = this.source.peek()
    if (current === undefined) {
      if (platform !== undefined) return this.#rejoin(platform, 'no identity')
      throw new MemidError('ERR_NOT_READY', 'no bot identity yet')
    }
    if (this.#o.clock.now() >= current.notAfter.getTime()) {
      // A platform join proves itself again with a fresh JWT; a token join cannot.
      if (platform !== undefined) return this.#rejoin(platform, 'the identity expired')
      // Said the same way every time: the text never grows however long this lasts.
      throw new MemidError('ERR_IDENTITY_EXPIRED', `the bot identity (generation ${current.generation}) expired at ${current.notAfter.toISOString()} before it could be renewed; the agent must join again`)
    }
    // One key pair per renewal, kept across its retries: the auth service answers a retry
    // with the same key with the same pending generation, and another key is a copy.
    if (this.#nextKey?.from !== current.generation) {
      this.#nextKey = { from: current.generation, key: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey }
    }
    const privateKey = this.#nextKey.key
    let res: IdentityResponse
    try {
      res = await this.#o.client.renew(current.caller, { publicKey: spkiPem(privateKey), ttl: this.ttl })
    } catch (err) {
      if (platform !== undefined && err instanceof MemidError && REJOIN_CODES.has(err.code)) return this.#rejoin(platform, describeError(err))
      throw err
    }
    const next = this.#build(res, privateKey)
    this.#nextKey = undefined
    await this.#swap(next, commit)
    // Old keep-alive sockets still authenticate as the previous generation; drop them.
    setTimeout(() => current.caller.agent.destroy(), 1_000).unref()
    this.#o.logger.info({ generation: next.generation, serial: next.serial, notAfter: next.notAfter.toISOString() }, 'identity renewed')
    collectAfterRenewal()
    // The heartbeat under the new identity is what confirms the new generation.
    await this.heartbeat()
    await this.#o.onRenewed(next)
  }

  /** Reports to the auth service; a fatal answer ends the identity. */
  async heartbeat(): Promise<void> {
    if (!this.source.valid()) return
    try {
      await this.#withIdentity((id) => this.#o.client.heartbeat(id.caller, {
        hostname: os.hostname().slice(0, 256), version: VERSION, os: process.platform, arch: process.arch,
        uptimeSeconds: Math.round(process.uptime()), services: this.#o.services(),
      }))
    } catch (err) {
      this.#o.heartbeatFailures.inc()
      this.#heartbeatFailed++
      if (err instanceof MemidError && FATAL_HEARTBEAT.has(err.code)) {
        this.#o.onFatal(err)
        return
      }
      this.#o.logger.warn({ reason: describeError(err) }, 'heartbeat failed')
    }
  }
}
