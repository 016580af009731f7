import type tls from 'node:tls'
import { buildClientContext, keyShareGroup, type KeyShareGroup } from '../pki/tls-context.ts'
import type { TlsClientCredential } from './credentials.ts'

/**
 * How long a kept session is offered before a connection asks the upstream for a newer one.
 * Asking costs every connection that does it: OpenSSL serializes each ticket the server
 * sends and Node hands it to JavaScript (~3–5% of the tunnel's CPU per connection in
 * bench/db-tunnel.ts). A server resumes a TLS 1.3 ticket as often as it likes within the
 * ticket's lifetime (minutes to hours: nginx 5 min, OpenSSL 2 h), and 10 s is far inside
 * that; a server that takes each ticket only once is noticed and asked every time.
 */
export const SESSION_REFRESH_MS = 10_000

/**
 * Upstream TLS sessions to resume, bound to the credential they were made with.
 *
 * A resumed session skips the certificate exchange: the server accepts the identity it
 * verified in the full handshake. So a session must never outlive its credential: one
 * made with an old certificate, resumed after a renewal, would keep presenting the old
 * identity (and its serial, groups and expiry) to the upstream. Entries are looked up by
 * the credential object itself, so a renewed credential finds nothing, and `drop()`
 * (called when the credential is renewed) zeroes what was kept.
 *
 * It also remembers which key-exchange group the upstream agreed on, so later handshakes
 * send one key share instead of two (see {@link UpstreamSessions.secureContext}).
 */
export class UpstreamSessions {
  #credential: object | undefined
  #upstream: string | undefined
  #session: Buffer | undefined
  /** When the kept session arrived (`now()`), and whether the upstream has resumed it yet. */
  #keptAt = 0
  #resumed = false
  /** Sessions in a row the upstream refused after resuming them once; a session resumed twice resets it. */
  #refusedAfterUse = 0
  /** Two in a row: the upstream takes each session once, so every connection asks for one. */
  #singleUse = false
  readonly #now: () => number
  /** The group the upstream agreed on in its last TLS 1.3 handshake: the server's, so kept across renewals. */
  #group: { upstream: string; group: KeyShareGroup } | undefined
  /** The context that sends a key share for that group only, for the credential it holds. */
  #keyed: { credential: TlsClientCredential; group: KeyShareGroup; context: tls.SecureContext } | undefined

  /** `now` (ms) dates kept sessions for {@link SESSION_REFRESH_MS}: the service's clock. */
  constructor(now: () => number = () => Date.now()) {
    this.#now = now
  }

  /**
   * The context to dial `upstream` with. OpenSSL 3.5 sends two key shares: the hybrid
   * post-quantum X25519MLKEM768 (its ML-KEM key pair alone is ~0.4 ms of CPU) and
   * X25519. An upstream on an older OpenSSL (PostgreSQL or nginx on Debian 12's 3.0, say)
   * picks X25519 and the ML-KEM work is thrown away on every connection. So once an
   * upstream has agreed on a group, later connections send a key share for that group
   * only. The choice stays the server's: every default group is still offered, the
   * server agreed on this one when offered both shares, and a server that now prefers
   * another asks for it with a HelloRetryRequest (and is remembered again).
   */
  secureContext(credential: TlsClientCredential, upstream: string): tls.SecureContext {
    const learned = this.#group
    if (learned === undefined || learned.upstream !== upstream) return credential.secureContext
    const keyed = this.#keyed
    if (keyed !== undefined && keyed.credential === credential && keyed.group === learned.group) return keyed.context
    let context: tls.SecureContext
    try {
      context = buildClientContext({ key: credential.privateKey, certPem: credential.certificatePem, caPem: credential.upstream.caPem, keyShare: learned.group })
    } catch {
      // keyShareGroup learns nothing where OpenSSL lacks the syntax; any other refusal: the defaults it is.
      this.#group = undefined
      return credential.secureContext
    }
    this.#keyed = { credential, group: learned.group, context }
    return context
  }

  /** Notes the group a finished handshake with `upstream` agreed on (nothing for TLS 1.2). */
  learnKeyShare(upstream: string, socket: tls.TLSSocket): void {
    const group = keyShareGroup(socket)
    if (group === undefined) return
    if (this.#group?.upstream !== upstream || this.#group.group !== group) this.#group = { upstream, group }
  }

  /** The session to offer when dialing `upstream` with `credential`, if one was kept for exactly that pair. */
  get(credential: object, upstream: string): Buffer | undefined {
    return this.#credential === credential && this.#upstream === upstream ? this.#session : undefined
  }

  /**
   * Whether a connection to `upstream` with `credential` should listen for the session the
   * server sends (a 'session' listener): when none is kept for the pair, the kept one is
   * older than {@link SESSION_REFRESH_MS}, or the upstream takes each session only once.
   * A connection that does not listen and then is not resumed asks too (see {@link resumed}).
   */
  wantsSession(credential: object, upstream: string): boolean {
    return this.#singleUse || this.get(credential, upstream) === undefined || this.#now() - this.#keptAt >= SESSION_REFRESH_MS
  }

  /**
   * What the upstream did with `session`, offered on a handshake that is now done. One it
   * did not resume is forgotten (the connection that offered it keeps the new one the
   * server made, or else the next connection asks for one). Two
   * sessions in a row refused after being resumed once mean the upstream takes each session
   * once (one alone may be a server restart or a ticket-key rotation).
   */
  resumed(session: Buffer, reused: boolean): void {
    // A newer session has replaced (and zeroed) this one meanwhile: nothing to learn.
    if (session !== this.#session) return
    if (reused) {
      if (this.#resumed) this.#refusedAfterUse = 0
      this.#resumed = true
      return
    }
    if (this.#resumed && ++this.#refusedAfterUse >= 2) this.#singleUse = true
    this.#forget()
  }

  /**
   * Learns from a connection just dialed to `upstream` with `credential`, `offered` the
   * session it was given (if any): what the server did with that session, the session the
   * server sends when one is wanted, and the key-share group it agrees on. A session is
   * kept only if `current()` is still `credential` when it arrives (see {@link remember}).
   *
   * Only connections that need a session listen for one up front ({@link wantsSession}):
   * with a listener, OpenSSL serializes every ticket the server sends and Node hands it to
   * JavaScript. A connection that was not resumed and did not listen listens after its
   * handshake (TLS 1.3 tickets come after it) or, for TLS 1.2, takes the session the
   * handshake made from the socket.
   */
  follow(socket: tls.TLSSocket, credential: TlsClientCredential, upstream: string, offered: Buffer | undefined, current: () => object | undefined): void {
    const keep = (s: Buffer) => this.remember(credential, upstream, s, current())
    if (this.wantsSession(credential, upstream)) socket.on('session', keep)
    socket.once('secureConnect', () => {
      const reused = socket.isSessionReused()
      if (offered !== undefined) this.resumed(offered, reused)
      if (!reused && socket.listenerCount('session') === 0) {
        if (socket.getProtocol() === 'TLSv1.3') socket.on('session', keep)
        else {
          const made = socket.getSession()
          if (made !== undefined) keep(made)
        }
      }
      this.learnKeyShare(upstream, socket)
    })
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
    this.#keptAt = this.#now()
    this.#resumed = false
  }

  /** Forgets (and zeroes) the kept session: the credential was renewed or the service stops. */
  drop(): void {
    // The keyed context holds the old private key inside OpenSSL: let it go with the credential.
    this.#keyed = undefined
    this.#singleUse = false
    this.#refusedAfterUse = 0
    this.#forget()
  }

  #forget(): void {
    this.#session?.fill(0)
    this.#session = undefined
    this.#credential = undefined
    this.#upstream = undefined
    this.#resumed = false
  }
}
