import { describeError } from '../core/errors.ts'

/** Anything the supervisor starts and stops: services, the control socket, diagnostics. */
export interface Supervised {
  readonly name: string
  start(): Promise<void>
  stop(deadlineMs: number): Promise<void>
}

/** A unit that failed to stop cleanly. */
export interface StopError {
  name: string
  reason: string
}

/**
 * Starts units in order and stops them in reverse order. Stops are begun in reverse order
 * but drain together against one deadline, so a later unit's drain does not eat an earlier
 * unit's time; every failure is collected rather than the first one ending the shutdown.
 */
export class Supervisor {
  readonly #started: Supervised[] = []
  #stopping: Promise<StopError[]> | undefined

  /** Starts one unit; it is stopped on `stop()` only if its start succeeded. */
  async start(unit: Supervised): Promise<void> {
    if (this.#stopping) throw new Error(`cannot start ${unit.name}: stopping`)
    await unit.start()
    this.#started.push(unit)
  }

  /**
   * Starts units at once (each may still be being built): one unit's start does not wait
   * for another's, so the agent is ready after the slowest, not after their sum. Every unit
   * that started is stopped on `stop()`, in the order given whatever order they came up in;
   * once all have settled, the first failure in that order is thrown.
   */
  async startAll(units: readonly Promise<Supervised>[]): Promise<void> {
    if (this.#stopping) throw new Error('cannot start: stopping')
    const results = await Promise.allSettled(units.map(async (u) => {
      const unit = await u
      await unit.start()
      return unit
    }))
    for (const r of results) if (r.status === 'fulfilled') this.#started.push(r.value)
    const failed = results.find((r) => r.status === 'rejected')
    if (failed !== undefined) throw failed.reason
  }

  get started(): readonly Supervised[] {
    return this.#started
  }

  /** Stops everything started, last first; resolves with what failed. Idempotent. */
  stop(deadlineMs: number): Promise<StopError[]> {
    this.#stopping ??= (async () => {
      const units = [...this.#started].reverse()
      const results = await Promise.allSettled(units.map((u) => u.stop(deadlineMs)))
      return results.flatMap((r, i) => (r.status === 'rejected' ? [{ name: (units[i] as Supervised).name, reason: describeError(r.reason) }] : []))
    })()
    return this.#stopping
  }
}
