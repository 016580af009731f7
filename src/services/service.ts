import type { Registry } from 'prom-client'
import type { Clock } from '../core/clock.ts'
import type { Logger } from '../core/log.ts'
import type { CredentialSource, IssuedCredential } from '../credentials/credentials.ts'

/** A service's own account of itself, surfaced by /readyz and `memid status`. */
export interface Health {
  status: 'starting' | 'ok' | 'degraded' | 'failed' | 'stopped'
  reason?: string
}

/**
 * The one shape every local service has. `start` resolves once the listener is bound;
 * `stop` stops accepting, lets open connections finish until the deadline, then closes
 * what is left and removes socket files.
 */
export interface Service {
  readonly name: string
  /** The address users connect to: `host:port` or a unix socket path. */
  readonly address: string
  start(): Promise<void>
  stop(deadlineMs: number): Promise<void>
  health(): Health
  /** Extra non-secret facts for `memid status` (current user, cluster, serial…). */
  describe?(): Record<string, unknown>
}

/** What the agent hands a service when it builds it. Nothing is imported as a singleton. */
export interface ServiceDeps<C extends IssuedCredential> {
  credentials: CredentialSource<C>
  logger: Logger
  clock: Clock
  metrics: Registry
}
