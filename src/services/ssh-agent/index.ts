import net from 'node:net'
import type { SshCredential } from '../../credentials/credentials.ts'
import { describeError } from '../../core/errors.ts'
import type { Health, Service, ServiceDeps } from '../service.ts'
import { closeServer, ConnectionTracker, listen, removeSocketFile, type ListenAddress } from '../../core/listener.ts'
import { resolveSshAgentConfig, type ResolvedSshAgentConfig, type SshAgentConfig } from './config.ts'
import { AgentConnection, type AgentContext } from './connection.ts'
import { Keyring } from './keyring.ts'
import { sshAgentMetrics, type SshAgentMetrics } from './metrics.ts'

/**
 * How long a sign request naming the certificate of the previous renewal is still
 * honoured: ssh lists identities, then signs; a renewal in between must not fail that login.
 */
const PREVIOUS_GRACE_MS = 60_000

class SshAgentService implements Service {
  readonly name = 'ssh-agent'
  readonly address: string
  readonly #addr: ListenAddress
  readonly #plainKey: boolean
  readonly #deps: ServiceDeps<SshCredential>
  readonly #metrics: SshAgentMetrics
  readonly #tracker = new ConnectionTracker()
  readonly #server: net.Server
  readonly #ctx: AgentContext
  #state: 'new' | 'listening' | 'stopped' = 'new'
  #ring: Keyring | undefined
  #previous: { ring: Keyring; until: number } | undefined
  /** Why the agent currently refuses to serve, logged once per change. */
  #refusing: string | undefined
  readonly #onRenewed: (c: SshCredential) => void

  constructor(cfg: ResolvedSshAgentConfig, deps: ServiceDeps<SshCredential>) {
    const addr = cfg.address
    this.#addr = addr
    this.address = addr.path
    this.#plainKey = cfg.plainKey
    this.#deps = deps
    this.#metrics = sshAgentMetrics(deps.metrics)
    this.#ctx = {
      keyring: () => this.#keyring(),
      previous: (buf, start, end) => this.#previousFor(buf, start, end),
      metrics: this.#metrics,
      logger: deps.logger,
    }
    this.#server = net.createServer((socket) => this.#accept(socket))
    this.#onRenewed = (c) => {
      deps.logger.info({ serial: c.serial, keyId: c.keyId, principals: c.principals, notAfter: c.notAfter.toISOString() }, 'ssh agent serving a new certificate')
    }
  }

  async start(): Promise<void> {
    if (this.#state !== 'new') throw new TypeError(`${this.name} was already started`)
    await listen(this.#server, this.#addr)
    this.#state = 'listening'
    this.#deps.credentials.on('renewed', this.#onRenewed)
    this.#deps.logger.info({ path: this.address }, 'ssh agent listening')
  }

  async stop(deadlineMs: number): Promise<void> {
    if (this.#state === 'stopped') return
    const was = this.#state
    this.#state = 'stopped'
    this.#deps.credentials.off('renewed', this.#onRenewed)
    if (was === 'new') return
    // server.close() resolves only once every connection ended: drain them meanwhile.
    const closed = closeServer(this.#server)
    await this.#tracker.drain(deadlineMs)
    await closed
    removeSocketFile(this.#addr)
    this.#ring = undefined
    this.#previous = undefined
  }

  health(): Health {
    if (this.#state === 'new') return { status: 'starting' }
    if (this.#state === 'stopped') return { status: 'stopped' }
    try {
      this.#deps.credentials.current()
      return { status: 'ok' }
    } catch (err) {
      const st = this.#deps.credentials.state()
      return { status: st.status === 'expired' ? 'failed' : 'degraded', reason: `${describeError(err)}; sign requests get SSH_AGENT_FAILURE` }
    }
  }

  describe(): Record<string, unknown> {
    const c = this.#deps.credentials.peek()
    if (c === undefined) return { socket: this.address }
    return {
      socket: this.address,
      serial: c.serial,
      keyId: c.keyId,
      principals: c.principals,
      certificateType: c.certificateType,
      notAfter: c.notAfter.toISOString(),
      ...(this.#ring?.credential === c ? { fingerprint: this.#ring.fingerprint } : {}),
    }
  }

  #accept(socket: net.Socket): void {
    if (this.#state !== 'listening') {
      socket.destroy()
      return
    }
    this.#tracker.add(socket)
    this.#metrics.connections.inc()
    this.#metrics.open.inc()
    socket.once('close', () => this.#metrics.open.dec())
    new AgentConnection(socket, this.#ctx)
  }

  /** The keyring for the current credential, rebuilt when the credential changed. */
  #keyring(): Keyring {
    let cred: SshCredential
    try {
      cred = this.#deps.credentials.current()
    } catch (err) {
      this.#refuse(describeError(err))
      throw err
    }
    let ring = this.#ring
    if (ring?.credential !== cred) {
      let next: Keyring
      try {
        next = new Keyring(cred, { plainKey: this.#plainKey })
      } catch (err) {
        this.#refuse(describeError(err))
        throw err
      }
      if (ring !== undefined && this.#refusing === undefined) {
        this.#previous = { ring, until: Math.min(ring.credential.notAfter.getTime(), this.#deps.clock.now() + PREVIOUS_GRACE_MS) }
      }
      this.#ring = ring = next
    }
    if (this.#refusing !== undefined) {
      this.#refusing = undefined
      this.#deps.logger.info({ serial: cred.serial }, 'ssh agent serving again')
    }
    return ring
  }

  #previousFor(buf: Buffer, start: number, end: number): Keyring | undefined {
    const p = this.#previous
    if (p === undefined) return undefined
    if (this.#deps.clock.now() >= p.until) {
      this.#previous = undefined
      return undefined
    }
    return p.ring.has(buf, start, end) ? p.ring : undefined
  }

  #refuse(reason: string): void {
    this.#previous = undefined
    if (this.#refusing === reason) return
    this.#refusing = reason
    this.#deps.logger.warn({ reason }, 'ssh agent failing closed: no identities listed, sign requests refused')
  }
}

export type { SshAgentConfig } from './config.ts'

/**
 * The SSH agent service: the ssh-agent protocol on a unix socket (0600 in a 0700
 * directory), serving the bot's OpenSSH certificate and key from memory. Read-only.
 *
 * @throws ConfigError when the config is invalid; the message names the key.
 */
export function createSshAgentService(cfg: SshAgentConfig, deps: ServiceDeps<SshCredential>): Service {
  return new SshAgentService(resolveSshAgentConfig(cfg), deps)
}

/** Builds the service from settings the agent already resolved. */
export function buildSshAgentService(cfg: ResolvedSshAgentConfig, deps: ServiceDeps<SshCredential>): Service {
  return new SshAgentService(cfg, deps)
}
