/** The time source. Passed in rather than imported so tests can pin it where they must. */
export interface Clock {
  now(): number
}

/** What a timer call returns; only `unref()` is ever used on it. */
export interface TimerHandle {
  unref?(): unknown
}

/**
 * A clock that can also wait and draw jitter: what a retry loop needs. Tests pass a manual
 * one and move time forward themselves instead of sleeping.
 */
export interface TimerClock extends Clock {
  setTimeout(fn: () => void, ms: number): TimerHandle
  clearTimeout(handle: TimerHandle): void
  /** A number in [0, 1), as `Math.random()`. */
  random(): number
}

export const systemClock: TimerClock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
  random: () => Math.random(),
}
