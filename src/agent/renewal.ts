import type { Counter } from '../core/metrics.ts'
import { systemClock, type TimerClock, type TimerHandle } from '../core/clock.ts'
import type { Logger } from '../core/log.ts'
import { FATAL_IDENTITY_CODES, MemidError, describeError } from '../core/errors.ts'

export interface RenewalOptions {
  name: string
  /**
   * Run periodically at this interval (± jitter), or at what the function returns, asked
   * afresh each time a run is scheduled (e.g. from the lifetime of the credential just
   * issued); when omitted, only on `trigger()` and retries.
   */
  intervalMs?: number | (() => number)
  /** Fraction of the interval used as random jitter either way. */
  jitter?: number
  backoffMinMs?: number
  backoffMaxMs?: number
  /**
   * One renewal. A run that makes its result visible before it returns (and then does more
   * work) calls `commit()` in the same synchronous step as publishing the result, so that
   * no status read sees the new result while the run is not yet counted as a success.
   * A run that does not call it is counted when it resolves.
   */
  run: (commit: () => void) => Promise<void>
  /** Called once with the error when an answer means renewal can never succeed again. */
  onFatal: (err: MemidError) => void
  onFailure?: (err: unknown) => void
  logger: Logger
  renewals?: Counter<'credential' | 'result'>
  /** Time, timers and jitter; the system clock unless a test passes a manual one. */
  clock?: TimerClock
}

export interface RenewalStatus {
  lastSuccess?: string
  lastFailure?: string
  lastError?: string
  consecutiveFailures: number
  nextRunAt?: string
  succeeded: number
  failed: number
}

const MAX_TIMER_MS = 2 ** 31 - 1

/**
 * The one renewal primitive, for the bot identity and every service credential: a run
 * every interval with jitter, exponential backoff with jitter on failure (1 s → 60 s by
 * default), an early run on demand (SIGHUP), fatal answers reported once, and metrics.
 */
export class RenewalLoop {
  readonly #o: Required<Pick<RenewalOptions, 'jitter' | 'backoffMinMs' | 'backoffMaxMs' | 'clock'>> & RenewalOptions
  #timer: TimerHandle | undefined
  #running: Promise<void> | undefined
  #again = false
  #stopped = false
  #status: RenewalStatus = { consecutiveFailures: 0, succeeded: 0, failed: 0 }

  constructor(opts: RenewalOptions) {
    this.#o = { jitter: 0.1, backoffMinMs: 1_000, backoffMaxMs: 60_000, clock: systemClock, ...opts }
  }

  /** Schedules the first periodic run (the first credential is obtained by the caller). */
  start(): void {
    this.#schedulePeriodic()
  }

  /** Runs now; a trigger during a run queues exactly one more run after it. */
  trigger(): Promise<void> {
    if (this.#stopped) return Promise.resolve()
    if (this.#running) {
      this.#again = true
      return this.#running
    }
    this.#clear()
    this.#running = this.#runOnce().finally(() => {
      this.#running = undefined
      if (this.#again && !this.#stopped) {
        this.#again = false
        void this.trigger()
      }
    })
    return this.#running
  }

  stop(): void {
    this.#stopped = true
    this.#clear()
  }

  status(): RenewalStatus {
    return { ...this.#status }
  }

  async #runOnce(): Promise<void> {
    let committed = false
    const commit = () => {
      if (committed) return
      committed = true
      this.#succeeded()
    }
    try {
      await this.#o.run(commit)
      commit()
    } catch (err) {
      if (committed) {
        // The new result is already in place and counted; what failed was follow-up work.
        this.#o.logger.warn({ credential: this.#o.name, reason: describeError(err) }, 'after renewal')
        return
      }
      const previous = this.#status.lastError
      this.#status.lastFailure = this.#iso(this.#o.clock.now())
      this.#status.lastError = describeError(err)
      this.#status.consecutiveFailures++
      this.#status.failed++
      this.#o.renewals?.inc({ credential: this.#o.name, result: 'failure' })
      this.#o.onFailure?.(err)
      if (err instanceof MemidError && FATAL_IDENTITY_CODES.has(err.code)) {
        this.#o.logger.error({ credential: this.#o.name, code: err.code, reason: err.message }, 'renewal refused for good')
        this.stop()
        this.#o.onFatal(err)
        return
      }
      const n = this.#status.consecutiveFailures
      const backoff = Math.min(this.#o.backoffMaxMs, this.#o.backoffMinMs * 2 ** (n - 1))
      const delay = this.#jittered(backoff)
      // One line per change of state: the same failure again is not news.
      const level = this.#status.lastError === previous ? 'debug' : 'warn'
      this.#o.logger[level]({ credential: this.#o.name, failures: n, retryInMs: delay, reason: this.#status.lastError }, 'renewal failed; retrying')
      this.#schedule(delay)
    }
  }

  #succeeded(): void {
    this.#status.lastSuccess = this.#iso(this.#o.clock.now())
    this.#status.consecutiveFailures = 0
    this.#status.succeeded++
    delete this.#status.lastError
    this.#o.renewals?.inc({ credential: this.#o.name, result: 'success' })
    this.#schedulePeriodic()
  }

  #schedulePeriodic(): void {
    const every = this.#o.intervalMs
    if (every !== undefined) this.#schedule(this.#jittered(typeof every === 'function' ? every() : every))
  }

  #iso(ms: number): string {
    return new Date(ms).toISOString()
  }

  #jittered(ms: number): number {
    const j = this.#o.jitter
    return Math.max(50, Math.round(ms * (1 - j + this.#o.clock.random() * 2 * j)))
  }

  #schedule(delayMs: number): void {
    if (this.#stopped) return
    this.#clear()
    // setTimeout fires after 1 ms for anything above 2^31-1 ms (~24.8 days); renewing early is safe.
    delayMs = Math.min(delayMs, MAX_TIMER_MS)
    this.#status.nextRunAt = this.#iso(this.#o.clock.now() + delayMs)
    this.#timer = this.#o.clock.setTimeout(() => void this.trigger(), delayMs)
    this.#timer.unref?.()
  }

  #clear(): void {
    if (this.#timer) this.#o.clock.clearTimeout(this.#timer)
    this.#timer = undefined
    delete this.#status.nextRunAt
  }
}
