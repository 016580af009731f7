/** A service's own account of itself, surfaced by /readyz and `memid status`. */
export interface Health {
  status: 'starting' | 'ok' | 'degraded' | 'failed' | 'stopped'
  reason?: string
}

/** The states every listener-owning thing goes through, with the same names everywhere. */
export type ListenerState = 'new' | 'listening' | 'stopping' | 'stopped'

/**
 * The lifecycle of a listener-owning thing (services, control socket, diagnostics):
 * `start` once, `stop` any number of times. Starting twice is a programming error and
 * gets the same TypeError everywhere.
 */
export class Lifecycle {
  readonly #name: string
  #state: ListenerState = 'new'
  #starting = false

  constructor(name: string) {
    this.#name = name
  }

  get state(): ListenerState {
    return this.#state
  }

  /** At the top of `start()`; a second call, even while the first is still binding, throws. */
  beginStart(): void {
    if (this.#state !== 'new' || this.#starting) throw new TypeError(`${this.#name} was already started`)
    this.#starting = true
  }

  /** Once the listener is bound. */
  listening(): void {
    this.#starting = false
    this.#state = 'listening'
  }

  /**
   * At the top of `stop()`: the state it was in, or undefined when a stop already ran (the
   * caller returns at once).
   */
  beginStop(): ListenerState | undefined {
    if (this.#state === 'stopping' || this.#state === 'stopped') return undefined
    const was = this.#state
    this.#state = 'stopping'
    return was
  }

  /** Once everything is closed. */
  stopped(): void {
    this.#state = 'stopped'
  }

  /** `starting`/`stopped` while not listening; undefined while listening (the owner reports then). */
  health(): Health | undefined {
    if (this.#state === 'new') return { status: 'starting' }
    if (this.#state !== 'listening') return { status: 'stopped' }
    return undefined
  }
}
