import { ConfigError } from '../../core/errors.ts'
import { parseListenAt, type ListenAddress } from '../../core/listener.ts'

export interface SshAgentConfig {
  /** Absolute path of the agent socket (`SSH_AUTH_SOCK`). */
  path: string
  /**
   * Also list the plain public key beside the certificate (default true), as OpenSSH's
   * agent does for a key added with its certificate.
   */
  plainKey?: boolean
}

/** The validated form the service works with. */
export interface ResolvedSshAgentConfig {
  address: Extract<ListenAddress, { kind: 'unix' }>
  plainKey: boolean
}

/** Validates the config once, at the edge; messages name the key. */
export function resolveSshAgentConfig(cfg: SshAgentConfig): ResolvedSshAgentConfig {
  const addr = parseListenAt(cfg.path, 'path')
  if (addr.kind !== 'unix') throw new ConfigError(`path: must be an absolute unix socket path, got "${cfg.path}"`)
  return { address: addr, plainKey: cfg.plainKey ?? true }
}
