import type { MetricObjectWithValues, MetricValue, Registry } from '../core/metrics.ts'
import type { Clock } from '../core/clock.ts'
import { describeError } from '../core/errors.ts'
import type { Health } from '../core/lifecycle.ts'
import type { Logger } from '../core/log.ts'
import type { SharedPort } from '../core/shared-port.ts'
import type { CredentialSource, IssuedCredential } from '../credentials/credentials.ts'

export type { Health } from '../core/lifecycle.ts'

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
  /**
   * Metrics kept outside the agent's registry (one list per worker thread), which the
   * agent sums into `/metrics` with its own. Services in the main thread have none.
   */
  metrics?(): Promise<RegistryMetrics[]>
}

/** One registry's metrics as `Registry.getMetricsAsJSON()` gives them. */
export type RegistryMetrics = MetricObjectWithValues<MetricValue<string>>[]

/** What the agent hands a service when it builds it. Nothing is imported as a singleton. */
export interface ServiceDeps<C extends IssuedCredential> {
  credentials: CredentialSource<C>
  logger: Logger
  clock: Clock
  metrics: Registry
  /**
   * Set when the service runs in one of several worker threads: its TCP listener joins
   * the port the others bind (`bindListener`). Unset, the service binds alone.
   */
  sharedPort?: SharedPort
}

/**
 * The one account every service gives of the credential it serves with: undefined while it
 * is valid; `degraded` before the first one arrives (renewal keeps trying); `failed` once
 * the last one expired. `consequence` tells the reader what users get meanwhile.
 */
export function credentialHealth<C extends IssuedCredential>(credentials: CredentialSource<C>, consequence?: string): Health | undefined {
  try {
    credentials.current()
    return undefined
  } catch (err) {
    const reason = consequence === undefined ? describeError(err) : `${describeError(err)}; ${consequence}`
    return { status: credentials.peek() === undefined ? 'degraded' : 'failed', reason }
  }
}
