import type { KeyObject } from 'node:crypto'
import tls from 'node:tls'
import { withPrivateKeyPem } from './pem.ts'

export interface ClientContextOptions {
  key: KeyObject
  /** The client certificate, optionally followed by intermediates. */
  certPem: string
  /** CA certificates that verify the server; the system roots when omitted. */
  caPem?: string | string[] | undefined
  /**
   * The one group to send a TLS 1.3 key share for (see {@link keyShareGroup}); every
   * default group is still offered, so a server that wants another asks for it (one
   * HelloRetryRequest) rather than failing. Default: OpenSSL's two key shares.
   */
  keyShare?: KeyShareGroup | undefined
}

/**
 * OpenSSL 3.5's default groups, in its order: what a memid client offers. The first two
 * get a key share by default: the hybrid post-quantum X25519MLKEM768 and X25519.
 */
const DEFAULT_GROUPS = ['X25519MLKEM768', 'X25519', 'P-256', 'X448', 'P-384', 'P-521', 'ffdhe2048', 'ffdhe3072'] as const
export type KeyShareGroup = (typeof DEFAULT_GROUPS)[number]

/** `getEphemeralKeyInfo().name` → the group's name in a groups list. */
const NEGOTIATED: Record<string, KeyShareGroup> = {
  X25519MLKEM768: 'X25519MLKEM768', X25519: 'X25519', prime256v1: 'P-256', X448: 'X448', secp384r1: 'P-384', secp521r1: 'P-521',
}

/**
 * The group a finished TLS 1.3 client connection agreed on, when it is one of the
 * defaults that a key share can be sent for; undefined otherwise (TLS 1.2, DHE, unknown).
 */
export function keyShareGroup(socket: tls.TLSSocket): KeyShareGroup | undefined {
  if (socket.getProtocol() !== 'TLSv1.3' || !keySharesSupported()) return undefined
  const name = socket.getEphemeralKeyInfo()
  return name !== null && typeof name === 'object' && 'name' in name && typeof name.name === 'string' ? NEGOTIATED[name.name] : undefined
}

let supported: boolean | undefined

/**
 * Whether this Node's OpenSSL takes such a list: the `*group` key-share syntax and the
 * hybrid group are OpenSSL 3.5's. A Node linked to an older system OpenSSL (distribution
 * builds) does not, and nothing is learned there, rather than every connection building a
 * context that OpenSSL refuses. Asked once, with a context that holds no key.
 */
export function keySharesSupported(): boolean {
  if (supported === undefined) {
    try {
      tls.createSecureContext({ ecdhCurve: keyShareGroups('X25519') })
      supported = true
    } catch {
      supported = false
    }
  }
  return supported
}

/** An OpenSSL groups list: every default group, with the key share for `group` only. */
export function keyShareGroups(group: KeyShareGroup): string {
  return [`*${group}`, ...DEFAULT_GROUPS.filter((g) => g !== group)].join(':')
}

/**
 * The cipher order memid's TLS clients offer and its auth server picks by: Node's default,
 * with TLS_AES_128_GCM_SHA256 first instead of last among the TLS 1.3 suites, the order
 * Go's crypto/tls uses on hardware with AES instructions (kubectl, the Kubernetes API
 * server). A server that follows the client's order (nginx's default; Go servers pick
 * AES-128 on their own) then keys the session with SHA-256 rather than SHA-384 and encrypts
 * with AES-128: ~3% less CPU per resumed tunnel connection, and cheaper bulk. All three suites stay offered and
 * the TLS 1.2 list is Node's, so what a server may pick does not change, only the order.
 */
export const TLS_CIPHERS = ['TLS_AES_128_GCM_SHA256', ...tls.DEFAULT_CIPHERS.split(':').filter((c) => c !== 'TLS_AES_128_GCM_SHA256')].join(':')

/**
 * Builds a TLS secure context once per renewal. The private key is exported to a PEM
 * Buffer only for the duration of the call and wiped afterwards; OpenSSL keeps its own
 * copy inside the context.
 */
export function buildClientContext(opts: ClientContextOptions): tls.SecureContext {
  return withPrivateKeyPem(opts.key, (keyPem) =>
    tls.createSecureContext({
      key: keyPem,
      cert: opts.certPem,
      ...(opts.caPem !== undefined ? { ca: opts.caPem } : {}),
      ...(opts.keyShare !== undefined ? { ecdhCurve: keyShareGroups(opts.keyShare) } : {}),
      minVersion: 'TLSv1.2',
      ciphers: TLS_CIPHERS,
    }),
  )
}
