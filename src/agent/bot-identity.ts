import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import os from 'node:os'
import type { Counter } from 'prom-client'
import type { Clock } from '../core/clock.ts'
import { MemidError, describeError } from '../core/errors.ts'
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

  constructor(o: BotIdentityOptions) {
    this.#o = o
    this.source = new CredentialSource<BotIdentity>('bot identity', o.clock)
    this.#loop = new RenewalLoop({
      name: 'bot-identity', intervalMs: o.renewalIntervalMs, run: (commit) => this.#renew(commit), logger: o.logger,
      renewals: o.renewals, onFatal: o.onFatal,
      onFailure: (err) => {
        this.source.fail(err)
        o.onFailure(err)
      },
    })
  }

  /** The TTL every certificate is requested with, e.g. `3600s`. */
  get ttl(): string {
    return `${Math.max(5, Math.round(this.#o.certificateTtlMs / 1000))}s`
  }

  get heartbeatFailures(): number {
    return this.#heartbeatFailed
  }

  /** Joins with the onboarding method (this is where the token is read and spent). */
  async join(onboarding: Onboarding): Promise<BotIdentity> {
    const proof = await joinCredentials(onboarding, this.#o.env ?? process.env)
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const res = await this.#o.client.join({ ...proof, publicKey: spkiPem(privateKey), ttl: this.ttl })
    const id = this.#build(res, privateKey)
    this.source.set(id)
    this.#o.logger.info({ bot: res.bot, instance: res.instanceId, generation: res.generation, serial: res.serial }, 'joined')
    return id
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
    const { caller } = this.source.current()
    const client = this.#o.client
    return {
      ttl: this.ttl,
      sshUserCa: client.cas.sshUser,
      issueSsh: (req) => client.issueSsh(caller, req),
      issueKube: (req) => client.issueKube(caller, req),
      issueDb: (req) => client.issueDb(caller, req),
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
    const current = this.source.current()
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const res = await this.#o.client.renew(current.caller, { publicKey: spkiPem(privateKey), ttl: this.ttl })
    const next = this.#build(res, privateKey)
    commit()
    this.source.set(next)
    // Old keep-alive sockets still authenticate as the previous generation; drop them.
    setTimeout(() => current.caller.agent.destroy(), 1_000).unref()
    this.#o.logger.info({ generation: next.generation, serial: next.serial, notAfter: next.notAfter.toISOString() }, 'identity renewed')
    // The heartbeat under the new identity is what confirms the new generation.
    await this.heartbeat()
    await this.#o.onRenewed(next)
  }

  /** Reports to the auth service; a fatal answer ends the identity. */
  async heartbeat(): Promise<void> {
    let id: BotIdentity
    try {
      id = this.source.current()
    } catch {
      return
    }
    try {
      await this.#o.client.heartbeat(id.caller, {
        hostname: os.hostname().slice(0, 256), version: VERSION, os: process.platform, arch: process.arch,
        uptimeSeconds: Math.round(process.uptime()), services: this.#o.services(),
      })
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
