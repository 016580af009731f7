import path from 'node:path'
import { ConfigError } from '../../core/errors.ts'
import { parseListenAt, resolveExposure, type ListenAddress, type LocalExposureConfig, type ResolvedExposure } from '../../core/listener.ts'
import { nameSchema, principalSchema } from '../../core/validate.ts'
import { PG_SOCKET } from './socket-name.ts'

/**
 * How a database tunnel is configured (`services[].type: database-tunnel`). The listen
 * address must be loopback or a unix socket unless `allowRemote`; TCP clients are served
 * when they run as the agent's user or one of `allowedUsers`.
 */
export interface DbTunnelConfig extends LocalExposureConfig {
  /** `host:port` (loopback by default) or a unix socket path `<dir>/.s.PGSQL.<port>`. */
  listen: string
  /** The database service as registered with `memid dbs add`. */
  service: string
  /** The database user; the client certificate's CN and the only user the tunnel accepts. */
  username: string
  /** When set, clients may only open this database. */
  database?: string
  /** `postgres` speaks PostgreSQL's SSLRequest on both legs; `tls` wraps raw bytes in TLS. */
  protocol: 'postgres' | 'tls'
  /** Concurrent tunnelled connections; more get a too_many_connections error. */
  maxConnections: number
  /** Deadline for reaching the server: TCP connect, TLS handshake and its first answer. */
  connectTimeoutMs: number
  /** Closes sessions with no traffic either way for this long; no limit when absent. */
  idleTimeoutMs?: number
}

/** A validated config with its listen address parsed. */
export interface ResolvedDbTunnelConfig extends DbTunnelConfig {
  address: ListenAddress
  exposure: ResolvedExposure
}


/**
 * Checks a tunnel config before the service exists. Messages name the key, the agent
 * prefixes the path of the service entry (`services[2].`).
 */
export function resolveDbTunnelConfig(cfg: DbTunnelConfig): ResolvedDbTunnelConfig {
  const address = parseListenAt(cfg.listen, 'listen')
  const exposure = resolveExposure(cfg, address)
  if (address.kind === 'unix' && cfg.protocol === 'postgres' && !PG_SOCKET.test(path.basename(address.path))) {
    throw new ConfigError(
      `listen: name the socket <dir>/.s.PGSQL.<port> so that psql -h <dir> -p <port> finds it (got ${path.basename(address.path)})`,
    )
  }
  if (typeof cfg.service !== 'string' || cfg.service.length === 0) throw new ConfigError('service: should not be empty')
  if (!nameSchema.safeParse(cfg.service).success) throw new ConfigError(`service: "${printable(cfg.service)}" is not a valid service name`)
  if (typeof cfg.username !== 'string' || cfg.username.length === 0) throw new ConfigError('username: should not be empty')
  if (!principalSchema.safeParse(cfg.username).success) throw new ConfigError(`username: "${printable(cfg.username)}" is not a valid user name`)
  if (cfg.database !== undefined && (typeof cfg.database !== 'string' || cfg.database.length === 0)) {
    throw new ConfigError('database: should not be empty when given')
  }
  if (cfg.database !== undefined && !principalSchema.safeParse(cfg.database).success) {
    throw new ConfigError(`database: "${printable(cfg.database)}" is not a valid database name`)
  }
  if (cfg.protocol !== 'postgres' && cfg.protocol !== 'tls') throw new ConfigError(`protocol: must be postgres or tls`)
  if (!Number.isInteger(cfg.maxConnections) || cfg.maxConnections < 1) throw new ConfigError('max_connections: must be a positive integer')
  if (!Number.isFinite(cfg.connectTimeoutMs) || cfg.connectTimeoutMs <= 0) throw new ConfigError('connect_timeout: must be positive')
  if (cfg.idleTimeoutMs !== undefined && (!Number.isFinite(cfg.idleTimeoutMs) || cfg.idleTimeoutMs <= 0)) {
    throw new ConfigError('idle_timeout: must be positive when given')
  }
  return { ...cfg, address, exposure }
}

export { socketPort } from './socket-name.ts'

function printable(s: string): string {
  return s.replace(/[^\x20-\x7e]/g, '?').slice(0, 64)
}
