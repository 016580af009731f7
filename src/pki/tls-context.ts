import type { KeyObject } from 'node:crypto'
import tls from 'node:tls'
import { withPrivateKeyPem } from './pem.ts'

export interface ClientContextOptions {
  key: KeyObject
  /** The client certificate, optionally followed by intermediates. */
  certPem: string
  /** CA certificates that verify the server; the system roots when omitted. */
  caPem?: string | string[] | undefined
}

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
      minVersion: 'TLSv1.2',
    }),
  )
}
