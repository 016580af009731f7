import { setImmediate as yieldToEventLoop } from 'node:timers/promises'
import type { Clock } from '../core/clock.ts'
import type { Logger } from '../core/log.ts'
import type { BotInstance, NewAuditEvent, Store } from '../storage/store.ts'

const DAY_MS = 24 * 3_600_000
/** Default `instance_ttl`: how long an instance is kept after its identity expired. */
export const DEFAULT_INSTANCE_TTL_MS = 7 * DAY_MS
/** Default `audit_retention`. */
export const DEFAULT_AUDIT_RETENTION_MS = 90 * DAY_MS
/** How often the background sweep runs. */
export const DEFAULT_SWEEP_INTERVAL_MS = 10 * 60_000
/**
 * The identity lifetime assumed for an instance whose bot is gone (its certificate can
 * no longer be renewed, but the last one may still be valid): longer than any max TTL.
 */
const UNKNOWN_BOT_TTL_MS = 31 * DAY_MS
const CHUNK = 100
const AUDIT_BATCH = 1000

export interface RetentionOptions {
  store: Store
  clock: Clock
  logger: Logger
  audit: (ev: NewAuditEvent) => Promise<void>
  instanceTtlMs?: number
  auditRetentionMs?: number
  intervalMs?: number
}

export interface SweepResult {
  instancesRemoved: number
  auditPruned: number
}

/**
 * Keeps state from growing forever: removes bot instances not seen for `instanceTtlMs`
 * after their identity expired, and prunes audit events older than `auditRetentionMs`.
 * Works in small chunks and yields between them, so the API never waits long behind it;
 * an instance renewed or heartbeating while the sweep looks at it is kept (the delete is
 * conditional on the row being unchanged).
 */
export class Retention {
  readonly #o: Required<Omit<RetentionOptions, 'logger' | 'audit' | 'store' | 'clock'>> & RetentionOptions
  #timer: NodeJS.Timeout | undefined
  #running: Promise<SweepResult> | undefined

  constructor(opts: RetentionOptions) {
    this.#o = {
      instanceTtlMs: DEFAULT_INSTANCE_TTL_MS, auditRetentionMs: DEFAULT_AUDIT_RETENTION_MS, intervalMs: DEFAULT_SWEEP_INTERVAL_MS, ...opts,
    }
  }

  /** Runs a sweep now and then every interval, in the background. */
  start(): void {
    const run = () => {
      this.sweep().catch((err: unknown) => this.#o.logger.warn({ err: (err as Error).message }, 'retention sweep failed'))
    }
    this.#timer = setInterval(run, this.#o.intervalMs)
    this.#timer.unref()
    setImmediate(run)
  }

  /** Stops the timer and waits for a sweep in progress. */
  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer)
    this.#timer = undefined
    await this.#running?.catch(() => undefined)
  }

  /** One sweep (concurrent calls share it). */
  sweep(): Promise<SweepResult> {
    this.#running ??= this.#sweep().finally(() => {
      this.#running = undefined
    })
    return this.#running
  }

  async #sweep(): Promise<SweepResult> {
    const now = this.#o.clock.now()
    const auditPruned = await this.#pruneAudit(new Date(now - this.#o.auditRetentionMs).toISOString())
    const instancesRemoved = await this.#removeInstances(now)
    if (instancesRemoved + auditPruned > 0) {
      this.#o.logger.info({ instancesRemoved, auditPruned }, 'retention: old state removed')
      await this.#o.audit({ type: 'retention.pruned', success: true, fields: { instancesRemoved, auditPruned } })
    }
    return { instancesRemoved, auditPruned }
  }

  async #pruneAudit(before: string): Promise<number> {
    let total = 0
    for (;;) {
      const n = await this.#o.store.pruneAudit(before, AUDIT_BATCH)
      total += n
      if (n < AUDIT_BATCH) return total
      await yieldToEventLoop()
    }
  }

  async #removeInstances(now: number): Promise<number> {
    const maxTtl = new Map<string, number>()
    let removed = 0
    let after: string | undefined
    do {
      const page = await this.#o.store.pageInstances({ limit: CHUNK, ...(after !== undefined ? { after } : {}) })
      for (const i of page.items) {
        if (!maxTtl.has(i.bot)) maxTtl.set(i.bot, (await this.#o.store.getBot(i.bot))?.maxTtlMs ?? UNKNOWN_BOT_TTL_MS)
        if (forgottenAt(i, maxTtl.get(i.bot) as number, this.#o.instanceTtlMs) <= now && (await this.#o.store.deleteInstanceIfUnchanged(i))) removed++
      }
      after = page.next
      await yieldToEventLoop()
    } while (after !== undefined)
    return removed
  }
}

/**
 * When an instance may be forgotten: `instanceTtlMs` after both its identity expired (at
 * the latest, its last authentication plus the bot's max TTL) and it was last seen.
 */
export function forgottenAt(i: BotInstance, maxTtlMs: number, instanceTtlMs: number): number {
  const times = [i.initialAuthentication, ...i.latestAuthentications].map((a) => Date.parse(a.time))
  const lastAuth = Math.max(Date.parse(i.createdAt), ...times)
  const lastHeartbeat = Math.max(0, ...i.heartbeats.map((h) => Date.parse(h.time)))
  return Math.max(lastAuth + maxTtlMs, lastHeartbeat) + instanceTtlMs
}
