import type { TimerClock, TimerHandle } from '../../src/core/clock.ts'

interface Timer extends TimerHandle {
  at: number
  seq: number
  fn: () => void
}

// Node's setTimeout fires after 1 ms for any delay above 2^31-1; the manual clock does the
// same so that code guarding against it is tested against the real behaviour.
const MAX_TIMER_MS = 2 ** 31 - 1

/**
 * A clock that moves only when the test says so. Timers fire in order of due time during
 * `advance()`, with the event loop drained after each so that the promise chains they start
 * (a run, its failure handling, the next schedule) settle before time moves on.
 */
export class ManualClock implements TimerClock {
  #now: number
  #seq = 0
  #timers = new Set<Timer>()
  /** What `random()` returns; 0.5 means no jitter either way. */
  nextRandom = 0.5

  constructor(start = Date.parse('2026-01-01T00:00:00Z')) {
    this.#now = start
  }

  now(): number {
    return this.#now
  }

  random(): number {
    return this.nextRandom
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    const delay = ms > MAX_TIMER_MS ? 1 : Math.max(1, ms)
    const t: Timer = { at: this.#now + delay, seq: this.#seq++, fn, unref: () => t }
    this.#timers.add(t)
    return t
  }

  clearTimeout(handle: TimerHandle): void {
    this.#timers.delete(handle as Timer)
  }

  /** Timers waiting right now. */
  get pending(): number {
    return this.#timers.size
  }

  /** Milliseconds from now to the earliest timer, or undefined when none is set. */
  nextDelay(): number | undefined {
    const first = this.#first()
    return first === undefined ? undefined : first.at - this.#now
  }

  /** Moves time forward by `ms`, firing every timer that falls due on the way. */
  async advance(ms: number): Promise<void> {
    const end = this.#now + ms
    for (;;) {
      await settle()
      const t = this.#first()
      if (t === undefined || t.at > end) break
      this.#timers.delete(t)
      this.#now = t.at
      t.fn()
    }
    this.#now = end
    await settle()
  }

  #first(): Timer | undefined {
    let first: Timer | undefined
    for (const t of this.#timers) if (first === undefined || t.at < first.at || (t.at === first.at && t.seq < first.seq)) first = t
    return first
  }
}

/** Lets pending promise callbacks and I/O callbacks run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((r) => setImmediate(r))
}
