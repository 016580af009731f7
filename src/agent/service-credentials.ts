import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto'
import { MemidError } from '../core/errors.ts'
import { parseSshPublicKeyLine } from '../pki/openssh.ts'
import { sshCredential } from '../services/ssh-agent/credential.ts'
import { buildClientContext } from '../pki/tls-context.ts'
import type { AuthClient, CallerIdentity } from './auth-client.ts'
import type { IssuedCredential, SshCredential, TlsClientCredential, Upstream } from '../credentials/credentials.ts'
import type { UpstreamInfo } from '../api/types.ts'
import type { ServiceConfig } from '../config/agent.ts'

/** Fetches one fresh credential (new key pair every time) for a service. */
export type CredentialFetcher<C extends IssuedCredential> = (client: AuthClient, caller: CallerIdentity, ttlMs: number) => Promise<C>

function spki(key: KeyObject): string {
  return createPublicKey(key).export({ type: 'spki', format: 'pem' }) as string
}

const ttlText = (ms: number): string => `${Math.max(5, Math.round(ms / 1000))}s`

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

export function sshFetcher(cfg: Extract<ServiceConfig, { type: 'ssh-agent' }>): CredentialFetcher<SshCredential> {
  return async (client, caller, ttlMs) => {
    const { privateKey } = cfg.keyType === 'ecdsa'
      ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
      : cfg.keyType === 'rsa' ? generateKeyPairSync('rsa', { modulusLength: 3072 }) : generateKeyPairSync('ed25519')
    const res = await client.issueSsh(caller, { publicKey: spki(privateKey), ttl: ttlText(ttlMs), ...(cfg.principals ? { principals: cfg.principals } : {}) })
    // Checked against our key and the pinned cluster's ssh-user CA before it is served.
    return sshCredential(privateKey, res.certificate, parseSshPublicKeyLine(client.cas.sshUser))
  }
}

export function kubeFetcher(cfg: Extract<ServiceConfig, { type: 'kube-proxy' }>): CredentialFetcher<TlsClientCredential> {
  return async (client, caller, ttlMs) => {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const res = await client.issueKube(caller, { publicKey: spki(privateKey), cluster: cfg.cluster, ttl: ttlText(ttlMs), ...(cfg.user ? { user: cfg.user } : {}) })
    const upstream = upstreamOf(res.upstream, 443)
    return {
      kind: 'kube', privateKey, certificatePem: res.certificate, upstream, user: res.user, groups: res.groups,
      secureContext: buildClientContext({ key: privateKey, certPem: res.certificate, caPem: upstream.caPem }),
      serial: res.serial, notBefore: new Date(res.notBefore), notAfter: new Date(res.notAfter),
    }
  }
}

export function dbFetcher(cfg: Extract<ServiceConfig, { type: 'database-tunnel' }>): CredentialFetcher<TlsClientCredential> {
  return async (client, caller, ttlMs) => {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const res = await client.issueDb(caller, {
      publicKey: spki(privateKey), service: cfg.service, username: cfg.username, ttl: ttlText(ttlMs),
      ...(cfg.database ? { database: cfg.database } : {}),
    })
    const upstream = upstreamOf(res.upstream, 5432)
    return {
      kind: 'db', privateKey, certificatePem: res.certificate, upstream, user: res.user, groups: [],
      secureContext: buildClientContext({ key: privateKey, certPem: res.certificate, caPem: upstream.caPem }),
      serial: res.serial, notBefore: new Date(res.notBefore), notAfter: new Date(res.notAfter),
      ...(cfg.database ? { database: cfg.database } : {}),
    }
  }
}
