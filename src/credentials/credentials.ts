import { EventEmitter } from 'node:events'
import type { KeyObject } from 'node:crypto'
import type tls from 'node:tls'
import type { Clock } from '../core/clock.ts'
import { systemClock } from '../core/clock.ts'
import { MemidError, describeError } from '../core/errors.ts'

/** What every issued credential carries, all of it safe to show. */
export interface IssuedCredential {
  serial: string
  notBefore: Date
  notAfter: Date
}

/** An OpenSSH user certificate and its key, as the SSH agent serves them. */
export interface SshCredential extends IssuedCredential {
  kind: 'ssh'
  privateKey: KeyObject
  /** The plain public key in SSH wire format (`string type, …`). */
  publicKeyBlob: Buffer
  /** The certificate in SSH wire format, as it goes in an identities answer. */
  certificateBlob: Buffer
  /** e.g. `ssh-ed25519-cert-v01@openssh.com`. */
  certificateType: string
  principals: string[]
  keyId: string
}

/** Where a TLS client credential is used, as registered on the auth service. */
export interface Upstream {
  /** The registered resource name (kube cluster or database service). */
  name: string
  /** `https://host:port` for kube, `postgres://host:port` for databases. */
  uri: string
  host: string
  port: number
  /** The CA that signed the upstream server's certificate; system roots when absent. */
  caPem?: string
}

/** An X.509 client certificate for a kube cluster or a database, with its TLS context. */
export interface TlsClientCredential extends IssuedCredential {
  kind: 'kube' | 'db'
  privateKey: KeyObject
  certificatePem: string
  /** Built once when the credential arrived: key, certificate and upstream CA. */
  secureContext: tls.SecureContext
  upstream: Upstream
  /** Kube user or database user (the certificate's CN). */
  user: string
  /** Kube groups (the certificate's O values); empty for databases. */
  groups: string[]
  /** The database name the tunnel was configured with, if any. */
  database?: string
}

export type CredentialState =
  | { status: 'pending'; lastError?: string }
  | { status: 'valid'; serial: string; notAfter: string; lastError?: string }
  | { status: 'expired'; serial?: string; notAfter?: string; lastError?: string }

interface CredentialEvents<C> {
  renewed: [credential: C]
  /** A renewal failed; the reason, as `lastError` now holds it. */
  failed: [reason: string]
}

/**
 * The in-memory holder of one credential. The renewal loop `set`s it; services read
 * `current()` for every new connection and subscribe to `renewed` to rebuild pooled
 * state. Open connections keep what they started with.
 */
export class CredentialSource<C extends IssuedCredential> extends EventEmitter<CredentialEvents<C>> {
  readonly name: string
  readonly #clock: Clock
  #current: C | undefined
  #lastError: string | undefined

  constructor(name: string, clock: Clock = systemClock) {
    super()
    this.name = name
    this.#clock = clock
  }

  /** The credential to use now, or a MemidError saying why there is none. */
  current(): C {
    const c = this.#current
    if (c === undefined) {
      throw new MemidError('ERR_NOT_READY', `no ${this.name} credential yet${this.#lastError ? `: ${this.#lastError}` : ''}`)
    }
    if (this.#clock.now() >= c.notAfter.getTime()) {
      throw new MemidError(
        'ERR_IDENTITY_EXPIRED',
        `the ${this.name} certificate expired at ${c.notAfter.toISOString()} and could not be renewed${this.#lastError ? `: ${this.#lastError}` : ''}`,
      )
    }
    return c
  }

  /** The latest credential even if expired (for status), or undefined before the first. */
  peek(): C | undefined {
    return this.#current
  }

  valid(): boolean {
    return this.#current !== undefined && this.#clock.now() < this.#current.notAfter.getTime()
  }

  set(credential: C): void {
    this.#current = credential
    this.#lastError = undefined
    this.emit('renewed', credential)
  }

  /** Records why the latest renewal failed; the current credential stays in use while valid. */
  fail(err: unknown): void {
    this.#lastError = describeError(err)
    this.emit('failed', this.#lastError)
  }

  get lastError(): string | undefined {
    return this.#lastError
  }

  state(): CredentialState {
    const c = this.#current
    const err = this.#lastError !== undefined ? { lastError: this.#lastError } : {}
    if (c === undefined) return { status: 'pending', ...err }
    const base = { serial: c.serial, notAfter: c.notAfter.toISOString(), ...err }
    return this.valid() ? { status: 'valid', ...base } : { status: 'expired', ...base }
  }
}
