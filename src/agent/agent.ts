import { EventEmitter } from 'node:events'
import { aggregateMetrics, Counter, Gauge, Registry } from '../core/metrics.ts'
import type { Clock } from '../core/clock.ts'
import { systemClock } from '../core/clock.ts'
import { MemidError, describeError } from '../core/errors.ts'
import { collectAfterRenewal } from '../core/gc.ts'
import { formatAddress } from '../core/listener.ts'
import { silentLogger, type Logger } from '../core/log.ts'
import { resolveAgentOptions, type AgentConfig, type AgentConfigOptions } from '../config/agent.ts'
import type { ResolvedService, ServiceSlot } from '../services/definition.ts'
import type { Service } from '../services/service.ts'
import { releasePrestarted } from '../services/prestart.ts'
import { WorkerGroup } from '../services/workers.ts'
import { AuthClient } from './auth-client.ts'
import { BotIdentityKeeper } from './bot-identity.ts'
import { ControlSocket } from './control-socket.ts'
import { DiagnosticsServer } from './diagnostics.ts'
import { RenewalLoop } from './renewal.ts'
import { agentStatus, readiness, type AgentStatus, type AgentView, type ServiceView } from './status.ts'
import { Supervisor } from './supervisor.ts'

export type { BotIdentity } from './bot-identity.ts'
export type { AgentStatus, ServiceStatus } from './status.ts'

/** Options of an embedded agent: the config in its options form, plus what is not config. */
export interface AgentOptions extends AgentConfigOptions {
  logger?: Logger
  clock?: Clock
}

/** What an agent is given besides its config. */
export interface AgentRuntime {
  logger?: Logger
  clock?: Clock
  /** Where `{ kind: 'env' }` token sources read `MEMID_TOKEN` (default `process.env`). */
  env?: NodeJS.ProcessEnv
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

/**
 * Starts an agent: joins the auth service, keeps the identity and every service
 * credential in memory, renews them in the background and serves them on local sockets.
 * The options are resolved first, with the same rules as `memid start`.
 *
 * @throws ConfigError (synchronously) when an option is invalid; the message names it,
 * and nothing has been read or sent yet.
 * @example
 * const agent = startAgent({ authServer: '127.0.0.1:3025', caPins: [pin], token, services: [...] })
 * await agent.ready
 */
export function startAgent(options: AgentOptions): AgentHandle {
  const { logger, clock, ...config } = options
  return createAgent(resolveAgentOptions(config), { ...(logger ? { logger } : {}), ...(clock ? { clock } : {}) })
}

/** Starts an agent on an already resolved config (what `memid start` does). */
export function createAgent(config: AgentConfig, runtime: AgentRuntime = {}): AgentHandle {
  return new Agent(config, runtime)
}

/** One configured service: its credential, the loop renewing it, and the service once built. */
interface Slot extends ServiceView {
  slot: ServiceSlot
  loop: RenewalLoop
}

class Agent extends EventEmitter<AgentEvents> implements AgentHandle {
  readonly ready: Promise<void>
  readonly closed: Promise<AgentExit>
  readonly #cfg: AgentConfig
  readonly #log: Logger
  readonly #clock: Clock
  readonly #client: AuthClient
  readonly #identity: BotIdentityKeeper
  readonly #registry = new Registry()
  readonly #slots: Slot[]
  readonly #supervisor = new Supervisor()
  readonly #startedAt = new Date().toISOString()
  readonly #renewals: Counter<'credential' | 'result'>
  #control: ControlSocket | undefined
  #diag: DiagnosticsServer | undefined
  #resolveClosed!: (e: AgentExit) => void
  #stopping: Promise<void> | undefined
  #servicesUp = false

  constructor(cfg: AgentConfig, rt: AgentRuntime) {
    super()
    this.#cfg = cfg
    this.#log = rt.logger ?? silentLogger()
    this.#clock = rt.clock ?? systemClock
    this.#client = new AuthClient({ server: cfg.authServers, caPins: cfg.caPins })
    this.#renewals = new Counter({ name: 'memid_renewals_total', help: 'Credential renewals by credential and result', labelNames: ['credential', 'result'], registers: [this.#registry] })
    this.#identity = new BotIdentityKeeper({
      client: this.#client, certificateTtlMs: cfg.certificateTtlMs, renewalIntervalMs: cfg.renewalIntervalMs, clock: this.#clock, logger: this.#log,
      renewals: this.#renewals,
      heartbeatFailures: new Counter({ name: 'memid_heartbeat_failures_total', help: 'Heartbeats the auth service did not accept', registers: [this.#registry] }),
      services: () => this.#slots.map((s) => ({ name: s.service?.name ?? s.resolved.name, type: s.resolved.type, address: this.#address(s), status: s.service?.health().status ?? 'starting' })),
      onRenewed: async (next) => {
        await Promise.all(this.#slots.map((s) => s.loop.trigger()))
        this.emit('renewed', { generation: next.generation, serial: next.serial, notAfter: next.notAfter })
      },
      // Services report the cause too: their certificates cannot renew without the identity.
      onFailure: (err) => {
        for (const s of this.#slots) s.credential.fail(err)
      },
      onFatal: (err) => this.#fatal(err),
      ...(rt.env ? { env: rt.env } : {}),
    })
    const source = this.#identity.source
    const clock = this.#clock
    new Gauge({
      name: 'memid_identity_expiry_seconds', help: 'Seconds until the bot identity expires (negative once expired)', registers: [this.#registry],
      collect() {
        const id = source.peek()
        if (id) this.set((id.notAfter.getTime() - clock.now()) / 1000)
      },
    })
    new Gauge({
      name: 'memid_identity_generation', help: 'Generation of the current bot identity', registers: [this.#registry],
      collect() {
        const id = source.peek()
        if (id) this.set(id.generation)
      },
    })
    this.#slots = cfg.services.map((r) => this.#slot(r))
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve))
    this.ready = this.#start()
    this.ready.catch(() => undefined)
  }

  #slot(resolved: ResolvedService): Slot {
    const slot = resolved.open(this.#clock)
    const name = resolved.name
    const loop = new RenewalLoop({
      name, logger: this.#log, renewals: this.#renewals, onFatal: (err) => this.#fatal(err),
      onFailure: (err) => {
        slot.credential.fail(err)
        this.#log.warn({ service: name, reason: describeError(err) }, 'service certificate not issued')
      },
      run: async () => {
        const cred = await slot.renew(this.#identity.issuer())
        this.#log.info({ service: name, serial: cred.serial, notAfter: cred.notAfter.toISOString() }, 'service certificate issued')
        collectAfterRenewal()
      },
    })
    return { resolved, slot, credential: slot.credential, loop, service: undefined }
  }

  #address(s: Slot): string {
    return s.service?.address ?? formatAddress(s.resolved.address)
  }

  async #start(): Promise<void> {
    // Built before the join: worker threads load their code while the agent joins and
    // fetches the first certificates. Nothing listens before `start`.
    const workers = this.#cfg.workers > 1 ? new WorkerGroup(this.#cfg.workers, this.#log) : undefined
    const built = this.#slots.map((s) => s.slot.build({
      logger: this.#log.child({ service: s.resolved.name }), clock: this.#clock, metrics: this.#registry, ...(workers ? { workers } : {}),
    }))
    // Awaited below or on failure; a build that fails during the join must not count as unhandled.
    for (const b of built) b.catch(() => undefined)
    try {
      await this.#client.bootstrap()
      await this.#identity.join(this.#cfg.onboarding)
      await Promise.all(this.#slots.map((s) => s.loop.trigger()))
      // Together: a service in the worker threads waits for its thread to load, and the
      // others need not wait behind it.
      await this.#supervisor.startAll(this.#slots.map(async (s, i) => {
        const service: Service = await (built[i] as Promise<Service>)
        s.service = service
        return service
      }))
      this.#servicesUp = true
      if (this.#cfg.controlSocket !== undefined) {
        const control = new ControlSocket(this.#cfg.controlSocket, {
          status: () => this.status(),
          kubeconfig: () => this.kubeconfig(),
          knownHosts: () => this.knownHosts(),
        })
        this.#control = control
        await this.#supervisor.start(control)
      }
      if (this.#cfg.diagnostics !== undefined) {
        const diag = new DiagnosticsServer(this.#cfg.diagnostics, () => this.#metrics(), () => readiness(this.#view()))
        this.#diag = diag
        await this.#supervisor.start(diag)
      }
      this.#identity.start()
      // Every service has its threads by now: a first thread started early and not taken is not needed.
      releasePrestarted()
      const id = this.#identity.source.current()
      this.#log.info({
        bot: id.bot, instance: id.instanceId, generation: id.generation, notAfter: id.notAfter.toISOString(),
        services: Object.fromEntries(this.#slots.map((s) => [s.service?.name ?? s.resolved.name, this.#address(s)])),
        ...(this.#control ? { controlSocket: this.#control.path } : {}),
        ...(this.#diag ? { diagnostics: this.#diag.address } : {}),
      }, 'agent ready')
    } catch (err) {
      releasePrestarted()
      await this.#shutdown(0, undefined, 0, false).catch(() => undefined)
      // Services built but never started (their worker threads are running) end too.
      await Promise.all(built.map((b) => b.then((service) => service.stop(0), () => undefined)))
      throw err
    }
  }

  /**
   * `/metrics`: the agent's registry, plus what services keep in worker threads, summed
   * per metric and label set (the same family from several workers becomes one).
   */
  async #metrics(): Promise<string> {
    const extra = (await Promise.all(this.#slots.map((s) => s.service?.metrics?.() ?? []))).flat()
    if (extra.length === 0) return this.#registry.metrics()
    return aggregateMetrics([await this.#registry.getMetricsAsJSON(), ...extra]).metrics()
  }

  #fatal(err: MemidError): void {
    if (this.#stopping) return
    this.#log.error({ code: err.code, reason: err.message }, 'identity can no longer be renewed; stopping')
    this.emit('fatal', err)
    void this.#shutdown(3, err.message)
  }

  #view(): AgentView {
    return {
      authServer: this.#client.server,
      authServers: this.#client.servers,
      identity: this.#identity.source,
      renewal: this.#identity.status(),
      heartbeatFailures: this.#identity.heartbeatFailures,
      ...(this.#identity.joinMethod !== undefined ? { joinMethod: this.#identity.joinMethod } : {}),
      joins: this.#identity.joins,
      startedAt: this.#startedAt,
      servicesUp: this.#servicesUp,
      ...(this.#control ? { controlSocket: this.#control.path } : {}),
      ...(this.#diag ? { diagnostics: this.#diag.address } : {}),
      services: this.#slots,
      clock: this.#clock,
    }
  }

  status(): AgentStatus {
    return agentStatus(this.#view())
  }

  async renew(): Promise<void> {
    await this.ready
    await this.#identity.renew()
  }

  async kubeconfig(): Promise<string> {
    const { renderKubeconfig } = await import('../services/kube-proxy/kubeconfig.ts')
    const entries = this.#slots.flatMap((s) => {
      const entry = s.service ? s.slot.kubeconfig(s.service) : undefined
      return entry ? [entry] : []
    })
    if (entries.length === 0) throw new MemidError('ERR_NOT_FOUND', 'this agent runs no kube proxy (add --kube-proxy LISTEN=CLUSTER)')
    return renderKubeconfig(entries)
  }

  knownHosts(): string {
    return `@cert-authority * ${this.#client.cas.sshHost.trim()}\n`
  }

  stop(deadlineMs?: number): Promise<void> {
    return this.#shutdown(0, undefined, deadlineMs)
  }

  #shutdown(code: 0 | 3, reason?: string, deadlineMs = this.#cfg.drainMs, logStop = true): Promise<void> {
    this.#stopping ??= (async () => {
      this.#identity.stop()
      for (const s of this.#slots) s.loop.stop()
      const errors = await this.#supervisor.stop(deadlineMs)
      for (const e of errors) this.#log.warn({ unit: e.name, reason: e.reason }, 'did not stop cleanly')
      this.#client.close()
      if (logStop) this.#log.info({ code, ...(reason ? { reason } : {}) }, 'agent stopped')
      this.#resolveClosed(reason !== undefined ? { code, reason } : { code })
    })()
    return this.#stopping
  }
}
