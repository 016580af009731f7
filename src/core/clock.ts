/** The time source. Passed in rather than imported so tests can pin it where they must. */
export interface Clock {
  now(): number
}

export const systemClock: Clock = { now: () => Date.now() }
