import type { TlsClientCredential } from '../../credentials/credentials.ts'
import type { Service, ServiceDeps } from '../service.ts'
import { resolveDbTunnelConfig, type DbTunnelConfig, type ResolvedDbTunnelConfig } from './config.ts'
import { DbTunnelService } from './tunnel.ts'

export type { DbTunnelConfig } from './config.ts'
export { resolveDbTunnelConfig } from './config.ts'

/**
 * Creates the database tunnel service (`db-tunnel:<service>`): a local plaintext
 * listener whose connections are carried to the database over TLS with the in-memory
 * client certificate from `deps.credentials`.
 *
 * With `protocol: 'postgres'` it speaks PostgreSQL's startup phase on both legs (the
 * local SSLRequest is answered 'N', upstream TLS starts after SSLRequest/'S') and answers
 * every failure with an ErrorResponse. With `protocol: 'tls'` it wraps raw bytes in TLS
 * from the first byte (Redis, MongoDB…).
 *
 * @throws ConfigError when the config is invalid; the message names the key.
 */
export function createDbTunnelService(cfg: DbTunnelConfig, deps: ServiceDeps<TlsClientCredential>): Service {
  return new DbTunnelService(resolveDbTunnelConfig(cfg), deps)
}

/** Builds the tunnel from settings the agent already resolved. */
export function buildDbTunnelService(cfg: ResolvedDbTunnelConfig, deps: ServiceDeps<TlsClientCredential>): Service {
  return new DbTunnelService(cfg, deps)
}
