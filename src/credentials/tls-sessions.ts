/**
 * Upstream TLS sessions to resume, bound to the credential they were made with.
 *
 * A resumed session skips the certificate exchange: the server accepts the identity it
 * verified in the full handshake. So a session must never outlive its credential: one
 * made with an old certificate, resumed after a renewal, would keep presenting the old
 * identity (and its serial, groups and expiry) to the upstream. Entries are looked up by
 * the credential object itself, so a renewed credential finds nothing, and `drop()`
 * (called when the credential is renewed) zeroes what was kept.
 */
export class UpstreamSessions {
  #credential: object | undefined
  #upstream: string | undefined
  #session: Buffer | undefined

  /** The session to offer when dialing `upstream` with `credential`, if one was kept for exactly that pair. */
  get(credential: object, upstream: string): Buffer | undefined {
    return this.#credential === credential && this.#upstream === upstream ? this.#session : undefined
  }

  /**
   * Keeps the latest session (TLS 1.3 tickets arrive after the handshake) for the pair.
   * A session from a connection dialed with a credential other than `current` (one that
   * started before a renewal and finished after it) is not kept.
   */
  remember(credential: object, upstream: string, session: Buffer, current: object | undefined): void {
    if (credential !== current) return
    if (this.#session !== undefined && this.#session !== session) this.#session.fill(0)
    this.#credential = credential
    this.#upstream = upstream
    this.#session = session
  }

  /** Forgets (and zeroes) the kept session: the credential was renewed or the service stops. */
  drop(): void {
    this.#session?.fill(0)
    this.#session = undefined
    this.#credential = undefined
    this.#upstream = undefined
  }
}
