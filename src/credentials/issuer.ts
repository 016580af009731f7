import { createPublicKey, type KeyObject } from 'node:crypto'
import { MemidError } from '../core/errors.ts'
import { buildClientContext } from '../pki/tls-context.ts'
import type {
  DbCertRequest, DbCertResponse, KubeCertRequest, KubeCertResponse, SshCertRequest, SshCertResponse, UpstreamInfo,
} from '../api/types.ts'
import type { TlsClientCredential, Upstream } from './credentials.ts'

/**
 * What a service definition may ask of the auth service to fetch its credential: the
 * issuing calls, already authenticated as the current bot identity, and the lifetime to
 * request. Implemented by the agent; services never see the client or the identity.
 */
export interface CredentialIssuer {
  /** The lifetime to request, e.g. `3600s`. */
  readonly ttl: string
  /** The pinned cluster's ssh-user CA (`ssh-ed25519 AAAA…`), to check SSH certificates against. */
  readonly sshUserCa: string
  issueSsh(req: SshCertRequest): Promise<SshCertResponse>
  issueKube(req: KubeCertRequest): Promise<KubeCertResponse>
  issueDb(req: DbCertRequest): Promise<DbCertResponse>
}

/** The SPKI PEM of a private key's public half, as the issuing API takes it. */
export function spkiPem(key: KeyObject): string {
  return createPublicKey(key).export({ type: 'spki', format: 'pem' }) as string
}

function upstreamOf(info: UpstreamInfo, defaultPort: number): Upstream {
  let url: URL
  try {
    url = new URL(info.uri)
  } catch {
    throw new MemidError('ERR_AUTH_BAD_RESPONSE', `the auth server sent a malformed upstream address for "${info.name}"`)
  }
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1')
  return { name: info.name, uri: info.uri, host, port: url.port ? Number(url.port) : defaultPort, ...(info.caPem ? { caPem: info.caPem } : {}) }
}

/**
 * Builds the TLS client credential (kube or database) from an issuing answer and the key
 * it was issued for; the TLS context is built once here.
 */
export function tlsClientCredential(
  kind: TlsClientCredential['kind'], privateKey: KeyObject, res: KubeCertResponse | DbCertResponse, defaultPort: number,
  extra: { groups?: string[]; database?: string } = {},
): TlsClientCredential {
  const upstream = upstreamOf(res.upstream, defaultPort)
  return {
    kind, privateKey, certificatePem: res.certificate, upstream, user: res.user, groups: extra.groups ?? [],
    secureContext: buildClientContext({ key: privateKey, certPem: res.certificate, caPem: upstream.caPem }),
    serial: res.serial, notBefore: new Date(res.notBefore), notAfter: new Date(res.notAfter),
    ...(extra.database !== undefined ? { database: extra.database } : {}),
  }
}

/**
 * A TLS client credential in the form `postMessage` can carry to a worker thread: the
 * private key stays a KeyObject (cloned between threads of this process, never serialized
 * to bytes), and the TLS context, which cannot cross threads, is left out.
 */
export type PortableTlsCredential = Omit<TlsClientCredential, 'secureContext'>

/** The credential without its thread-bound TLS context, for a worker thread. */
export function portableTlsCredential(c: TlsClientCredential): PortableTlsCredential {
  const { secureContext: _ctx, ...rest } = c
  return rest
}

/** The credential a worker thread received, with its own TLS context built once. */
export function tlsCredentialFromPortable(p: PortableTlsCredential): TlsClientCredential {
  return { ...p, secureContext: buildClientContext({ key: p.privateKey, certPem: p.certificatePem, caPem: p.upstream.caPem }) }
}
