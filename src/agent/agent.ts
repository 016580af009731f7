import { EventEmitter } from 'node:events'
import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto'
import os from 'node:os'
import { Counter, Gauge, Registry } from 'prom-client'
import type { Clock } from '../core/clock.ts'
import { systemClock } from '../core/clock.ts'
import { MemidError, describeError } from '../core/errors.ts'
import { silentLogger, type Logger } from '../core/log.ts'
import { buildClientContext } from '../pki/tls-context.ts'
import type { ServiceConfig } from '../config/agent.ts'
import type { Health, Service } from '../services/service.ts'
import { VERSION } from '../version.ts'
import { AuthClient, type CallerIdentity } from './auth-client.ts'
import { ControlSocket } from './control-socket.ts'
import { CredentialSource, type CredentialState, type IssuedCredential } from '../credentials/credentials.ts'
import { DiagnosticsServer, type Readiness } from './diagnostics.ts'
import { RenewalLoop, type RenewalStatus } from './renewal.ts'
import { dbFetcher, kubeFetcher, sshFetcher, type CredentialFetcher } from './service-credentials.ts'

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

/** Options of an embedded agent; `memid start` builds these from flags and config. */
export interface AgentOptions {
  /** `host:port` of the auth service. */
  authServer: string
  /** `sha256:<hex>` pins of the auth service's TLS CA. */
  caPins: string[]
  /** The join token value (single use). */
  token: string
  /** Certificate TTL in ms (default 1h). */
  certificateTtlMs?: number
  /** Renewal interval in ms (default 20m); must be shorter than the TTL. */
  renewalIntervalMs?: number
  /** Control socket path; none when omitted. */
  controlSocket?: string
  /** Diagnostics address (`/livez`, `/readyz`, `/metrics`); none when omitted. */
  diagnostics?: string
  services?: ServiceConfig[]
  logger?: Logger
  clock?: Clock
  /** Time allowed to open connections on stop (default 10 s). */
  drainMs?: number
}

export interface ServiceStatus {
  name: string
  type: string
  address: string
  status: Health['status']
  reason?: string
  credential: CredentialState
  [extra: string]: unknown
}

/** What `memid status` shows: never any key or certificate body. */
export interface AgentStatus {
  version: string
  authServer: string
  bot?: string
  instanceId?: string
  generation?: number
  identity: CredentialState & { expiresInSeconds?: number }
  renewal: RenewalStatus
  heartbeatFailures: number
  startedAt: string
  controlSocket?: string
  diagnostics?: string
  services: ServiceStatus[]
}

/** How an agent ended: 0 on stop, 3 when its identity can no longer be renewed. */
export interface AgentExit {
  code: 0 | 3
  reason?: string
}

interface AgentEvents {
  renewed: [info: { generation: number; serial: string; notAfter: Date }]
  fatal: [err: MemidError]
}

/** A running agent, as returned by `startAgent`. */
export interface AgentHandle extends EventEmitter<AgentEvents> {
  /** Resolves when the agent has joined and every service listens; rejects with the reason otherwise. */
  readonly ready: Promise<void>
  /** Resolves when the agent has stopped, by `stop()` or because its identity was refused for good. */
  readonly closed: Promise<AgentExit>
  status(): AgentStatus
  /** Forces an immediate renewal (what SIGHUP does). */
  renew(): Promise<void>
  /** The kubeconfig for this agent's kube proxies (no credentials). */
  kubeconfig(): Promise<string>
  /** `@cert-authority * <ssh-host CA>` for ssh's KnownHostsCommand. */
  knownHosts(): string
  stop(deadlineMs?: number): Promise<void>
}

interface Slot {
  cfg: ServiceConfig
  source: CredentialSource<IssuedCredential>
  fetch: CredentialFetcher<IssuedCredential>
  loop: RenewalLoop
  service?: Service
}

function serviceName(cfg: ServiceConfig): string {
  if (cfg.type === 'ssh-agent') return 'ssh-agent'
  if (cfg.type === 'kube-proxy') return `kube-proxy:${cfg.cluster}`
  return `db-tunnel:${cfg.service}`
}

function serviceAddress(cfg: ServiceConfig): string {
  return cfg.type === 'ssh-agent' ? cfg.path : cfg.listen
}

async function createService(cfg: ServiceConfig, deps: { credentials: CredentialSource<IssuedCredential>; logger: Logger; clock: Clock; metrics: Registry }): Promise<Service> {
  if (cfg.type === 'ssh-agent') {
    const { createSshAgentService } = await import('../services/ssh-agent/index.ts')
    return createSshAgentService({ path: cfg.path }, deps as never)
  }
  if (cfg.type === 'kube-proxy') {
    const { createKubeProxyService } = await import('../services/kube-proxy/index.ts')
    return createKubeProxyService({ listen: cfg.listen, cluster: cfg.cluster, ...(cfg.allowedHosts ? { allowedHosts: cfg.allowedHosts } : {}) }, deps as never)
  }
  const { createDbTunnelService } = await import('../services/db-tunnel/index.ts')
  return createDbTunnelService({
    listen: cfg.listen, service: cfg.service, username: cfg.username, protocol: cfg.protocol, maxConnections: cfg.maxConnections,
    connectTimeoutMs: cfg.connectTimeoutMs, ...(cfg.database ? { database: cfg.database } : {}), ...(cfg.idleTimeoutMs ? { idleTimeoutMs: cfg.idleTimeoutMs } : {}),
  }, deps as never)
}

/**
 * Starts an agent: joins the auth service, keeps the identity and every service
 * credential in memory, renews them in the background and serves them on local sockets.
 *
 * @example
 * const agent = startAgent({ authServer: '127.0.0.1:3025', caPins: [pin], token, services: [...] })
 * await agent.ready
 */
export function startAgent(options: AgentOptions): AgentHandle {
  return new Agent(options)
}

class Agent extends EventEmitter<AgentEvents> implements AgentHandle {
  readonly ready: Promise<void>
  readonly closed: Promise<AgentExit>
  readonly #o: AgentOptions
  readonly #log: Logger
  readonly #clock: Clock
  readonly #ttlMs: number
  readonly #intervalMs: number
  readonly #client: AuthClient
  readonly #identity: CredentialSource<BotIdentity>
  readonly #registry = new Registry()
  readonly #slots: Slot[] = []
  readonly #startedAt = new Date().toISOString()
  readonly #renewals: Counter<'credential' | 'result'>
  readonly #heartbeatFailures: Counter
  #heartbeatFailed = 0
  #loop: RenewalLoop | undefined
  #control: ControlSocket | undefined
  #diag: DiagnosticsServer | undefined
  #resolveClosed!: (e: AgentExit) => void
  #stopping: Promise<void> | undefined
  #servicesUp = false

  constructor(o: AgentOptions) {
    super()
    this.#o = o
    this.#log = o.logger ?? silentLogger()
    this.#clock = o.clock ?? systemClock
    this.#ttlMs = o.certificateTtlMs ?? 3_600_000
    this.#intervalMs = o.renewalIntervalMs ?? 1_200_000
    if (this.#intervalMs >= this.#ttlMs) throw new MemidError('ERR_CONFIG', 'renewal_interval: must be shorter than certificate_ttl')
    this.#client = new AuthClient({ server: o.authServer, caPins: o.caPins })
    this.#identity = new CredentialSource<BotIdentity>('bot identity', this.#clock)
    this.#renewals = new Counter({ name: 'memid_renewals_total', help: 'Credential renewals by credential and result', labelNames: ['credential', 'result'], registers: [this.#registry] })
    this.#heartbeatFailures = new Counter({ name: 'memid_heartbeat_failures_total', help: 'Heartbeats the auth service did not accept', registers: [this.#registry] })
    new Gauge({
      name: 'memid_identity_expiry_seconds', help: 'Seconds until the bot identity expires (negative once expired)', registers: [this.#registry],
      collect: () => {
        const id = this.#identity.peek()
        if (id) this.#gauge('memid_identity_expiry_seconds')?.set((id.notAfter.getTime() - this.#clock.now()) / 1000)
      },
    })
    new Gauge({
      name: 'memid_identity_generation', help: 'Generation of the current bot identity', registers: [this.#registry],
      collect: () => {
        const id = this.#identity.peek()
        if (id) this.#gauge('memid_identity_generation')?.set(id.generation)
      },
    })
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve))
    this.ready = this.#start(o.token)
    this.ready.catch(() => undefined)
  }

  #gauge(name: string): Gauge | undefined {
    return this.#registry.getSingleMetric(name) as Gauge | undefined
  }

  async #start(token: string): Promise<void> {
    try {
      await this.#client.bootstrap()
      await this.#join(token)
      for (const cfg of this.#o.services ?? []) this.#addSlot(cfg)
      await Promise.all(this.#slots.map((s) => s.loop.trigger()))
      for (const slot of this.#slots) {
        slot.service = await createService(slot.cfg, { credentials: slot.source, logger: this.#log.child({ service: serviceName(slot.cfg) }), clock: this.#clock, metrics: this.#registry })
        await slot.service.start()
      }
      this.#servicesUp = true
      if (this.#o.controlSocket !== undefined) {
        this.#control = new ControlSocket(this.#o.controlSocket, {
          status: () => this.status(),
          kubeconfig: () => this.kubeconfig(),
          knownHosts: () => this.knownHosts(),
        })
        await this.#control.start()
      }
      if (this.#o.diagnostics !== undefined) {
        this.#diag = new DiagnosticsServer(this.#o.diagnostics, this.#registry, () => this.#readiness())
        await this.#diag.start()
      }
      this.#loop = new RenewalLoop({
        name: 'bot-identity', intervalMs: this.#intervalMs, run: (commit) => this.#renewIdentity(commit), logger: this.#log,
        renewals: this.#renewals, onFatal: (err) => this.#fatal(err),
        onFailure: (err) => {
          // Services report the cause too: their certificates cannot renew without the identity.
          this.#identity.fail(err)
          for (const slot of this.#slots) slot.source.fail(err)
        },
      })
      this.#loop.start()
      void this.#heartbeat()
      const id = this.#identity.current()
      this.#log.info({
        bot: id.bot, instance: id.instanceId, generation: id.generation, notAfter: id.notAfter.toISOString(),
        services: Object.fromEntries(this.#slots.map((s) => [s.service?.name ?? serviceName(s.cfg), s.service?.address ?? serviceAddress(s.cfg)])),
        ...(this.#control ? { controlSocket: this.#control.path } : {}),
        ...(this.#diag ? { diagnostics: this.#diag.address } : {}),
      }, 'agent ready')
    } catch (err) {
      await this.#shutdown(0, undefined, 0, false).catch(() => undefined)
      throw err
    }
  }

  #addSlot(cfg: ServiceConfig): void {
    const name = serviceName(cfg)
    const source = new CredentialSource<IssuedCredential>(name, this.#clock)
    const fetch = (cfg.type === 'ssh-agent' ? sshFetcher(cfg) : cfg.type === 'kube-proxy' ? kubeFetcher(cfg) : dbFetcher(cfg)) as CredentialFetcher<IssuedCredential>
    const loop = new RenewalLoop({
      name, logger: this.#log, renewals: this.#renewals, onFatal: (err) => this.#fatal(err),
      onFailure: (err) => {
        source.fail(err)
        this.#log.warn({ service: name, reason: describeError(err) }, 'service certificate not issued')
      },
      run: async () => {
        const id = this.#identity.current()
        const cred = await fetch(this.#client, id.caller, this.#ttlMs)
        source.set(cred)
        this.#log.info({ service: name, serial: cred.serial, notAfter: cred.notAfter.toISOString() }, 'service certificate issued')
      },
    })
    this.#slots.push({ cfg, source, fetch, loop })
  }

  #buildIdentity(res: { certificate: string; bot: string; instanceId: string; generation: number; serial: string; notBefore: string; notAfter: string }, privateKey: KeyObject): BotIdentity {
    const secureContext = buildClientContext({ key: privateKey, certPem: res.certificate, caPem: this.#client.cas.tls })
    return {
      kind: 'bot', bot: res.bot, instanceId: res.instanceId, generation: res.generation, privateKey, certificatePem: res.certificate,
      serial: res.serial, notBefore: new Date(res.notBefore), notAfter: new Date(res.notAfter),
      caller: { agent: this.#client.identityAgent(secureContext) },
    }
  }

  #ttlText(): string {
    return `${Math.round(this.#ttlMs / 1000)}s`
  }

  async #join(token: string): Promise<void> {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const res = await this.#client.join({ joinMethod: 'token', token, publicKey: spkiPem(privateKey), ttl: this.#ttlText() })
    this.#identity.set(this.#buildIdentity(res, privateKey))
    this.#log.info({ bot: res.bot, instance: res.instanceId, generation: res.generation, serial: res.serial }, 'joined')
  }

  /** `commit` counts the renewal in the loop's status in the same step as the new identity becomes visible. */
  async #renewIdentity(commit: () => void): Promise<void> {
    const current = this.#identity.current()
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const res = await this.#client.renew(current.caller, { publicKey: spkiPem(privateKey), ttl: this.#ttlText() })
    const next = this.#buildIdentity(res, privateKey)
    commit()
    this.#identity.set(next)
    // Old keep-alive sockets still authenticate as the previous generation; drop them.
    setTimeout(() => current.caller.agent.destroy(), 1_000).unref()
    this.#log.info({ generation: next.generation, serial: next.serial, notAfter: next.notAfter.toISOString() }, 'identity renewed')
    // The heartbeat under the new identity is what confirms the new generation.
    await this.#heartbeat()
    await Promise.all(this.#slots.map((s) => s.loop.trigger()))
    this.emit('renewed', { generation: next.generation, serial: next.serial, notAfter: next.notAfter })
  }

  async #heartbeat(): Promise<void> {
    let id: BotIdentity
    try {
      id = this.#identity.current()
    } catch {
      return
    }
    try {
      await this.#client.heartbeat(id.caller, {
        hostname: os.hostname().slice(0, 256), version: VERSION, os: process.platform, arch: process.arch,
        uptimeSeconds: Math.round(process.uptime()),
        services: this.#slots.map((s) => ({ name: serviceName(s.cfg), type: s.cfg.type, address: serviceAddress(s.cfg), status: s.service?.health().status ?? 'starting' })),
      })
    } catch (err) {
      this.#heartbeatFailures.inc()
      this.#heartbeatFailed++
      if (err instanceof MemidError && (err.code === 'ERR_LOCKED' || err.code === 'ERR_BOT_NOT_FOUND' || err.code === 'ERR_INSTANCE_NOT_FOUND' || err.code === 'ERR_STALE_GENERATION')) {
        this.#fatal(err)
        return
      }
      this.#log.warn({ reason: describeError(err) }, 'heartbeat failed')
    }
  }

  #fatal(err: MemidError): void {
    if (this.#stopping) return
    this.#log.error({ code: err.code, reason: err.message }, 'identity can no longer be renewed; stopping')
    this.emit('fatal', err)
    void this.#shutdown(3, err.message)
  }

  #readiness(): Readiness {
    const services: Readiness['services'] = {}
    const idValid = this.#identity.valid()
    services['identity'] = idValid ? { status: 'ok' } : { status: 'expired', reason: problem(this.#identity) }
    let ok = idValid && this.#servicesUp
    for (const s of this.#slots) {
      const h = s.service?.health() ?? { status: 'starting' as const }
      const credOk = s.source.valid()
      const entry: { status: string; reason?: string } = { status: credOk ? h.status : 'failed' }
      const reason = credOk ? h.reason : problem(s.source)
      if (reason !== undefined) entry.reason = reason
      if (entry.status !== 'ok') ok = false
      services[this.#key(s)] = entry
    }
    return { status: ok ? 'ok' : 'unavailable', services }
  }

  /** The service's name, with its address when two services share a name (TCP and socket tunnels). */
  #key(s: Slot): string {
    const name = s.service?.name ?? serviceName(s.cfg)
    const shared = this.#slots.filter((o) => (o.service?.name ?? serviceName(o.cfg)) === name).length > 1
    return shared ? `${name}@${serviceAddress(s.cfg)}` : name
  }

  status(): AgentStatus {
    const id = this.#identity.peek()
    const state = this.#identity.state()
    return {
      version: VERSION,
      authServer: this.#client.server,
      ...(id ? { bot: id.bot, instanceId: id.instanceId, generation: id.generation } : {}),
      identity: id ? { ...state, expiresInSeconds: Math.round((id.notAfter.getTime() - this.#clock.now()) / 1000) } : state,
      renewal: this.#loop?.status() ?? { consecutiveFailures: 0, succeeded: 0, failed: 0 },
      heartbeatFailures: this.#heartbeatFailed,
      startedAt: this.#startedAt,
      ...(this.#control ? { controlSocket: this.#control.path } : {}),
      ...(this.#diag ? { diagnostics: this.#diag.address } : {}),
      services: this.#slots.map((s) => {
        const h = s.service?.health() ?? { status: 'starting' as const }
        const valid = s.source.valid()
        return {
          name: s.service?.name ?? serviceName(s.cfg), type: s.cfg.type, address: s.service?.address ?? serviceAddress(s.cfg),
          ...(s.service?.describe?.() ?? {}),
          status: valid ? h.status : 'failed',
          ...(valid ? (h.reason !== undefined ? { reason: h.reason } : {}) : { reason: problem(s.source) }),
          credential: s.source.state(),
        }
      }),
    }
  }

  async renew(): Promise<void> {
    await this.ready
    await this.#loop?.trigger()
  }

  async kubeconfig(): Promise<string> {
    const { renderKubeconfig } = await import('../services/kube-proxy/kubeconfig.ts')
    const proxies = this.#slots.flatMap((s) => s.cfg.type === 'kube-proxy' && s.service
      ? [{ name: s.cfg.cluster, cluster: s.cfg.cluster, server: proxyUrl(s.service.address) }]
      : [])
    if (proxies.length === 0) throw new MemidError('ERR_NOT_FOUND', 'this agent runs no kube proxy (add --kube-proxy LISTEN=CLUSTER)')
    return renderKubeconfig(proxies)
  }

  knownHosts(): string {
    return `@cert-authority * ${this.#client.cas.sshHost.trim()}\n`
  }

  stop(deadlineMs?: number): Promise<void> {
    return this.#shutdown(0, undefined, deadlineMs)
  }

  #shutdown(code: 0 | 3, reason?: string, deadlineMs = this.#o.drainMs ?? 10_000, logStop = true): Promise<void> {
    this.#stopping ??= (async () => {
      this.#loop?.stop()
      for (const s of this.#slots) s.loop.stop()
      const started = this.#slots.filter((s) => s.service).reverse()
      await Promise.allSettled(started.map((s) => (s.service as Service).stop(deadlineMs)))
      await this.#control?.stop().catch(() => undefined)
      await this.#diag?.stop().catch(() => undefined)
      this.#identity.peek()?.caller.agent.destroy()
      this.#client.close()
      if (logStop) this.#log.info({ code, ...(reason ? { reason } : {}) }, 'agent stopped')
      this.#resolveClosed(reason !== undefined ? { code, reason } : { code })
    })()
    return this.#stopping
  }
}

/** Why a credential cannot be used, in the words its services use too. */
function problem(source: CredentialSource<IssuedCredential>): string {
  try {
    source.current()
    return 'ok'
  } catch (err) {
    return describeError(err)
  }
}

function spkiPem(privateKey: KeyObject): string {
  return createPublicKey(privateKey).export({ type: 'spki', format: 'pem' }) as string
}

/** `http://127.0.0.1:8001` for a TCP proxy; unix-socket proxies have no URL kubectl can use. */
function proxyUrl(address: string): string {
  return address.startsWith('/') ? `unix://${address}` : `http://${address}`
}
