/** Join attempts per second per client address (the burst is twice this). */
export const DEFAULT_JOIN_RATE = 10

/** A token bucket per client address: `rate` per second, `burst` at most. */
export class RateLimiter {
  readonly #rate: number
  readonly #burst: number
  readonly #buckets = new Map<string, { tokens: number; at: number }>()

  constructor(rate: number, burst: number) {
    this.#rate = rate
    this.#burst = burst
  }

  /** Takes one token for the key; false when the caller must be refused. */
  take(key: string, now = Date.now()): boolean {
    let b = this.#buckets.get(key)
    if (b === undefined) {
      if (this.#buckets.size > 10_000) this.#sweep(now)
      b = { tokens: this.#burst, at: now }
      this.#buckets.set(key, b)
    }
    // A wall clock stepped back must not put the bucket into debt.
    b.tokens = Math.min(this.#burst, b.tokens + (Math.max(0, now - b.at) / 1000) * this.#rate)
    b.at = now
    if (b.tokens < 1) return false
    b.tokens -= 1
    return true
  }

  #sweep(now: number): void {
    for (const [k, b] of this.#buckets) {
      if (now - b.at > (this.#burst / this.#rate) * 1000) this.#buckets.delete(k)
    }
  }
}
