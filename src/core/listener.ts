import { mkdirSync, lstatSync, chmodSync, unlinkSync, statSync, readFileSync } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { Counter, type Registry, metricOnce } from './metrics.ts'
import type { Clock } from './clock.ts'
import { ConfigError, MemidError } from './errors.ts'
import type { Logger } from './log.ts'
import { sharedPeerOwners, sockDiagMissing, type PeerOwner, type PeerOwners } from './peer-owner.ts'

/** Where a local service listens: TCP on a host and port, or a unix socket path. */
export type ListenAddress =
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'unix'; path: string }


/**
 * Parses `HOST:PORT`, `[v6]:PORT` or an absolute unix socket path. The message names
 * what was wrong; callers prefix the config key path.
 */
export function parseListenAddress(text: string): ListenAddress {
  if (typeof text !== 'string' || text.length === 0) throw new MemidError('ERR_CONFIG', 'must not be empty')
  if (text.startsWith('/')) {
    if (text.length > 100) throw new MemidError('ERR_CONFIG', `socket path is longer than 100 characters: ${text.slice(0, 40)}…`)
    if (text.includes('\0')) throw new MemidError('ERR_CONFIG', 'socket path contains a NUL byte')
    return { kind: 'unix', path: path.normalize(text) }
  }
  const m = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(text)
  if (!m) throw new MemidError('ERR_CONFIG', `must be host:port or an absolute socket path, got "${printable(text)}"`)
  const port = Number(m[2])
  if (port > 65535) throw new MemidError('ERR_CONFIG', `port ${port} is out of range`)
  const host = (m[1] as string).replace(/^\[(.*)\]$/, '$1')
  return { kind: 'tcp', host, port }
}

/** `parseListenAddress` for a config value: the error is a ConfigError naming the key (`listen: …`). */
export function parseListenAt(text: string, key: string): ListenAddress {
  try {
    return parseListenAddress(text)
  } catch (err) {
    throw new ConfigError(`${key}: ${err instanceof Error ? err.message : String(err)}`)
  }
}

/**
 * True for addresses only reachable from this machine: a unix socket, `localhost`, an
 * IPv4 address in 127.0.0.0/8 or `::1`. A host name that merely starts with `127.` is
 * not one (DNS decides where it points).
 */
export function isLoopback(addr: ListenAddress): boolean {
  return addr.kind === 'unix' || isLoopbackHost(addr.host)
}

/** `localhost`, 127.0.0.0/8, `::1` (any spelling), or an IPv4-mapped 127.x address. */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, '$1')
  if (h === 'localhost') return true
  if (net.isIPv4(h)) return h.startsWith('127.')
  if (!net.isIPv6(h)) return false
  // SocketAddress prints the canonical form: `0:0::1` → `::1`, `::ffff:7f00:1` → `::ffff:127.0.0.1`.
  const canonical = new net.SocketAddress({ address: h, family: 'ipv6' }).address
  return canonical === '::1' || canonical.startsWith('::ffff:127.')
}

export function formatAddress(addr: ListenAddress): string {
  if (addr.kind === 'unix') return addr.path
  return hostPort(addr.host, addr.port)
}

/** `host:port`, an IPv6 address in brackets (`[::1]:5432`), as in URLs and HTTP Host headers. */
export function hostPort(host: string, port: number | string): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`
}

function printable(s: string): string {
  return s.replace(/[^\x20-\x7e]/g, '?').slice(0, 80)
}

/**
 * Makes sure the socket's directory exists with mode 0700 and belongs to us, and that
 * nothing but a stale socket sits at the path. tbot and cloud-sql-proxy chmod their
 * sockets 0777; we deliberately keep them private to the agent's user.
 */
export async function prepareSocketPath(socketPath: string): Promise<void> {
  const dir = path.dirname(socketPath)
  let st
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 })
    st = statSync(dir)
  } catch (err) {
    // e.g. a path component is a regular file (EEXIST/ENOTDIR) or not writable (EACCES).
    throw new MemidError('ERR_LISTEN', `cannot create the socket directory ${dir}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`)
  }
  const uid = process.getuid?.() ?? st.uid
  if (!st.isDirectory()) throw new MemidError('ERR_LISTEN', `${dir} is not a directory`)
  if (st.uid !== uid) throw new MemidError('ERR_LISTEN', `directory ${dir} is owned by uid ${st.uid}, not by this user (uid ${uid})`)
  if ((st.mode & 0o077) !== 0) {
    throw new MemidError('ERR_LISTEN', `directory ${dir} has mode ${(st.mode & 0o777).toString(8)}; it must be 0700 (chmod 700 ${dir})`)
  }
  let existing
  try {
    existing = lstatSync(socketPath)
  } catch {
    return
  }
  if (!existing.isSocket()) throw new MemidError('ERR_LISTEN', `${socketPath} exists and is not a socket; refusing to replace it`)
  if (await socketAnswers(socketPath)) throw new MemidError('ERR_LISTEN', `${socketPath} is in use by another process`)
  unlinkSync(socketPath)
}

function socketAnswers(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath)
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

/**
 * Binds a server to the address. Unix sockets are created 0600 (umask held for the
 * synchronous bind, then chmod to be sure). Resolves with the real address, so
 * `127.0.0.1:0` comes back with the port the kernel picked.
 */
export async function listen(server: net.Server, addr: ListenAddress, opts: { reusePort?: boolean } = {}): Promise<ListenAddress> {
  if (addr.kind === 'unix') await prepareSocketPath(addr.path)
  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      reject(new MemidError('ERR_LISTEN', `cannot listen on ${formatAddress(addr)}: ${err.code ?? err.message}`))
    }
    server.once('error', onError)
    const done = () => {
      server.off('error', onError)
      resolve()
    }
    if (addr.kind === 'unix') {
      const old = process.umask(0o177)
      try {
        server.listen(addr.path, done)
      } finally {
        process.umask(old)
      }
    } else {
      // reusePort: several worker threads each bind the same port (SO_REUSEPORT, which
      // Linux grants only to sockets of the same user) and the kernel spreads connections.
      server.listen(opts.reusePort === true ? { host: addr.host, port: addr.port, reusePort: true } : { host: addr.host, port: addr.port, exclusive: true }, done)
    }
  })
  if (addr.kind === 'unix') {
    chmodSync(addr.path, 0o600)
    return addr
  }
  const bound = server.address() as net.AddressInfo
  return { kind: 'tcp', host: addr.host, port: bound.port }
}

/** Removes a unix socket file we created; TCP needs nothing. */
export function removeSocketFile(addr: ListenAddress): void {
  if (addr.kind !== 'unix') return
  try {
    if (lstatSync(addr.path).isSocket()) unlinkSync(addr.path)
  } catch {
    // already gone
  }
}

/**
 * Tracks open connections so a service can stop accepting, give them until a deadline
 * to finish, then destroy the rest.
 */
export class ConnectionTracker {
  readonly #open = new Set<net.Socket>()

  add(socket: net.Socket): void {
    this.#open.add(socket)
    socket.once('close', () => this.#open.delete(socket))
  }

  get size(): number {
    return this.#open.size
  }

  /** Resolves once every tracked socket closed, or destroys them at the deadline. */
  async drain(deadlineMs: number): Promise<void> {
    const until = Date.now() + Math.max(0, deadlineMs)
    while (this.#open.size > 0 && Date.now() < until) {
      await new Promise((r) => setTimeout(r, Math.min(50, Math.max(1, until - Date.now()))))
    }
    for (const s of this.#open) s.destroy()
    this.#open.clear()
  }
}

/**
 * Stops accepting at once and resolves when the server has fully closed, which Node does
 * only after every open connection has ended: start it, drain, then await it.
 */
export function closeServer(server: net.Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve()
    server.close(() => resolve())
  })
}

/**
 * Who may use a local listener besides the agent's own user: the config keys every
 * service with a TCP listener (kube-proxy, database-tunnel) shares.
 */
export interface LocalExposureConfig {
  /**
   * More users whose TCP connections are served: names (resolved from /etc/passwd at
   * start) or numeric uids. `['*']` serves every process that can connect.
   */
  allowedUsers?: readonly string[]
  /** Permits a listen address that is neither loopback nor a unix socket. No flag form. */
  allowRemote?: boolean
}

/** The validated form: who is served, decided once at start. */
export interface ResolvedExposure {
  allowRemote: boolean
  /** `allowed_users: ['*']`: no owner check at all. */
  anyUser: boolean
  /** The agent's own uid and the allowed users' uids. */
  uids: ReadonlySet<number>
  /** The agent's own uid (-1 where the platform has none). */
  ownUid: number
}

/**
 * Checks a service's listen address and allowed users. A non-loopback TCP address is an
 * error unless `allowRemote`: the proxy and the tunnel lend the bot's identity to whoever
 * connects, and a remote client can send any `Host` header it likes. Messages name the
 * config key; callers prefix the service's path.
 */
export function resolveExposure(cfg: LocalExposureConfig, listen: ListenAddress, passwdFile = '/etc/passwd'): ResolvedExposure {
  if (cfg.allowRemote !== undefined && typeof cfg.allowRemote !== 'boolean') throw new ConfigError('allow_remote: must be true or false')
  const allowRemote = cfg.allowRemote === true
  if (!allowRemote && !isLoopback(listen)) {
    throw new ConfigError(`listen: ${formatAddress(listen)} is not a loopback address or a unix socket: every host that can reach it would use this bot's identity ` +
      '(use 127.0.0.1, [::1] or a socket path, or set allow_remote: true for this service in the config file)')
  }
  const ownUid = process.geteuid?.() ?? -1
  const entries = cfg.allowedUsers ?? []
  if (!Array.isArray(entries)) throw new ConfigError('allowed_users: must be a list of user names or uids')
  if (entries.includes('*')) {
    if (entries.length > 1) throw new ConfigError('allowed_users: "*" must be the only entry')
    return { allowRemote, anyUser: true, uids: new Set([ownUid]), ownUid }
  }
  if (entries.length > 0 && listen.kind === 'unix') {
    throw new ConfigError(`allowed_users: applies to TCP listeners; the socket ${listen.path} is 0600 and only this user can connect to it`)
  }
  const uids = new Set<number>([ownUid])
  let passwd: Map<string, number> | undefined
  entries.forEach((entry, i) => {
    if (typeof entry !== 'string' || entry === '') throw new ConfigError(`allowed_users[${i}]: must be a user name or a uid`)
    if (/^\d{1,10}$/.test(entry) && Number(entry) <= 0xfffffffe) {
      uids.add(Number(entry))
      return
    }
    passwd ??= readPasswd(passwdFile)
    const uid = passwd.get(entry)
    if (uid === undefined) throw new ConfigError(`allowed_users[${i}]: no user "${printable(entry)}" in ${passwdFile} (give the numeric uid for users from LDAP or other directories)`)
    uids.add(uid)
  })
  return { allowRemote, anyUser: false, uids, ownUid }
}

function readPasswd(file: string): Map<string, number> {
  const users = new Map<string, number>()
  let text = ''
  try {
    text = readFileSync(file, 'utf8')
  } catch {
    return users
  }
  for (const line of text.split('\n')) {
    const [name, , uid] = line.split(':')
    if (name && uid && /^\d+$/.test(uid) && !users.has(name)) users.set(name, Number(uid))
  }
  return users
}

/** Why a connection is not served; `message` names the uid and is safe to send the client. */
export interface LocalRefusal {
  uid: number | undefined
  message: string
}

/** One counter per registry, shared by every service that checks local users. */
function refusedCounter(registry: Registry): Counter<'service'> {
  return metricOnce(registry, 'memid_local_refused_total', () => new Counter({
    name: 'memid_local_refused_total',
    help: 'Local connections refused because the connecting process runs as a user not allowed to use the service.',
    labelNames: ['service'],
    registers: [registry],
  }))
}

/** At most one refusal log line per service in this period; the next one counts the rest. */
const REFUSAL_LOG_EVERY_MS = 10_000

export interface LocalAccessDeps {
  logger: Logger
  metrics: Registry
  clock: Clock
  /** Where peer owners are looked up; the process-wide shared lookup by default. */
  owners?: PeerOwners
}

/**
 * The per-connection half of local exposure. On a TCP listener, a connection is served
 * only when the process that opened it runs as the agent's user or an allowed user
 * (asked of the kernel; see `PeerOwners`). When the owner cannot be found — a
 * remote peer, a client that already closed, a system without /proc — the answer is no.
 * The service turns a refusal into its protocol's own answer.
 */
export class LocalAccess {
  readonly #service: string
  readonly #exposure: ResolvedExposure
  readonly #log: Logger
  readonly #clock: Clock
  readonly #refused: Counter<'service'>
  readonly #owners: PeerOwners
  #loggedAt = -Infinity
  #unlogged = 0

  constructor(service: string, exposure: ResolvedExposure, deps: LocalAccessDeps) {
    this.#service = service
    this.#exposure = exposure
    this.#log = deps.logger
    this.#clock = deps.clock
    this.#refused = refusedCounter(deps.metrics)
    this.#owners = deps.owners ?? sharedPeerOwners
  }

  /** Logs, once when the listener is bound, what is exposed beyond the agent's user. */
  announce(bound: ListenAddress): void {
    const where = formatAddress(bound)
    if (this.#exposure.allowRemote && !isLoopback(bound)) {
      this.#log.warn({ listen: where }, `${this.#service} listens on ${where}, reachable from other hosts (allow_remote: true)` +
        (this.#exposure.anyUser ? '' : '; connections from other hosts are refused unless allowed_users is ["*"]'))
    }
    if (bound.kind === 'tcp' && this.#exposure.anyUser) {
      this.#log.warn({ listen: where }, `${this.#service}: allowed_users is ["*"]: the connecting user is not checked, every process that can connect to ${where} uses this bot's identity`)
    }
    if (bound.kind === 'tcp' && !this.#exposure.anyUser && this.#owners.method !== 'sock_diag') {
      this.#log.warn({ listen: where, why: sockDiagMissing },
        `${this.#service}: the connecting user is found by reading ${this.#owners.method}, which costs milliseconds of CPU per batch of new connections; build the sock-diag addon (npm run build:native) for a per-connection lookup`)
    }
  }

  /**
   * Resolves with undefined when the connection may be served, or with the refusal
   * (already logged and counted). Unix sockets are not checked: they are 0600.
   */
  async check(socket: net.Socket): Promise<LocalRefusal | undefined> {
    if (this.#exposure.anyUser || socket.remoteAddress === undefined) return undefined
    let owner: PeerOwner
    try {
      owner = await this.#owners.owner({
        localAddress: socket.localAddress ?? '', localPort: socket.localPort ?? 0,
        remoteAddress: socket.remoteAddress, remotePort: socket.remotePort ?? 0,
      })
    } catch (err) {
      // Never a rejection: callers start the check and await it later.
      owner = { uid: undefined, why: err instanceof Error ? err.message : 'lookup failed' }
    }
    if (owner.uid !== undefined && this.#exposure.uids.has(owner.uid)) return undefined
    const own = `uid ${this.#exposure.ownUid}`
    const refusal: LocalRefusal = owner.uid !== undefined
      ? { uid: owner.uid, message: `connections from uid ${owner.uid} are refused: ${this.#service} serves only the agent's user (${own}) and its allowed_users` }
      : { uid: undefined, message: `connection refused: the user of the connecting process is unknown (${owner.why}); ${this.#service} serves only the agent's user (${own}) and its allowed_users` }
    this.#refused.inc({ service: this.#service })
    const now = this.#clock.now()
    if (now - this.#loggedAt >= REFUSAL_LOG_EVERY_MS) {
      this.#log.warn({
        uid: owner.uid, ...(owner.uid === undefined ? { why: owner.why } : {}),
        peer: `${socket.remoteAddress}:${socket.remotePort}`, ...(this.#unlogged > 0 ? { alsoRefused: this.#unlogged } : {}),
      }, 'local connection refused: user not allowed')
      this.#loggedAt = now
      this.#unlogged = 0
    } else {
      this.#unlogged++
    }
    return refusal
  }
}
