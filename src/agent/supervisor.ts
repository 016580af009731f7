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
