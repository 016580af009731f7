import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto'
import { sshPublicKeyLine } from '../pki/openssh.ts'
import { createCaCertificate, spkiPin, type X509Authority } from '../pki/x509.ts'
import { CA_KINDS, type CaKind, type Store, type StoredCa } from '../storage/store.ts'

const CA_TTL_MS = 10 * 365 * 24 * 3600 * 1000

export interface SshAuthority {
  key: KeyObject
  publicKey: KeyObject
  /** `ssh-ed25519 AAAA… memid <cluster> ssh-user CA` */
  publicLine: string
}

/** The cluster's certificate authorities, loaded once at start and kept in memory. */
export interface CaSet {
  clusterName: string
  sshUser: SshAuthority
  sshHost: SshAuthority
  tls: X509Authority
  bot: X509Authority
  kubeClient: X509Authority
  dbClient: X509Authority
}

async function create(kind: CaKind, clusterName: string): Promise<StoredCa> {
  const createdAt = new Date().toISOString()
  if (kind === 'ssh-user' || kind === 'ssh-host') {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519')
    return {
      kind, createdAt,
      privateKeyDer: privateKey.export({ format: 'der', type: 'pkcs8' }),
      publicMaterial: sshPublicKeyLine(publicKey, `memid ${clusterName} ${kind} CA`),
    }
  }
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  return {
    kind, createdAt,
    privateKeyDer: privateKey.export({ format: 'der', type: 'pkcs8' }),
    publicMaterial: await createCaCertificate(privateKey, publicKey, `memid ${clusterName} ${kind} CA`, CA_TTL_MS),
  }
}

function toSsh(ca: StoredCa): SshAuthority {
  const key = createPrivateKey({ key: ca.privateKeyDer, format: 'der', type: 'pkcs8' })
  ca.privateKeyDer.fill(0)
  return { key, publicKey: createPublicKey(key), publicLine: ca.publicMaterial }
}

function toX509(ca: StoredCa): X509Authority {
  const key = createPrivateKey({ key: ca.privateKeyDer, format: 'der', type: 'pkcs8' })
  ca.privateKeyDer.fill(0)
  return { key, certPem: ca.publicMaterial }
}

/** Loads every CA, creating the missing ones (first start). Later starts reuse them. */
export async function loadOrCreateCas(store: Store, clusterName: string): Promise<CaSet> {
  const got = new Map<CaKind, StoredCa>()
  for (const kind of CA_KINDS) {
    const existing = await store.getCa(kind)
    got.set(kind, existing ?? (await store.putCaIfAbsent(await create(kind, clusterName))))
  }
  const need = (k: CaKind) => got.get(k) as StoredCa
  return {
    clusterName,
    sshUser: toSsh(need('ssh-user')),
    sshHost: toSsh(need('ssh-host')),
    tls: toX509(need('tls')),
    bot: toX509(need('bot')),
    kubeClient: toX509(need('kube-client')),
    dbClient: toX509(need('db-client')),
  }
}

export function caPin(cas: CaSet): string {
  return spkiPin(cas.tls.certPem)
}
