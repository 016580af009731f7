import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto'
import { sshPublicKeyLine } from '../pki/openssh.ts'
import { createCaCertificate, spkiPin, type X509Authority } from '../pki/x509.ts'
import { MemidError } from '../core/errors.ts'
import { CA_KINDS, RESOURCE_CA_KIND, type CaKind, type ResourceKind, type Store, type StoredCa } from '../storage/store.ts'

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
}

async function create(kind: CaKind, commonName: string): Promise<StoredCa> {
  const createdAt = new Date().toISOString()
  if (kind === 'ssh-user' || kind === 'ssh-host') {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519')
    return {
      kind, createdAt,
      privateKeyDer: privateKey.export({ format: 'der', type: 'pkcs8' }),
      publicMaterial: sshPublicKeyLine(publicKey, commonName),
    }
  }
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  return {
    kind, createdAt,
    privateKeyDer: privateKey.export({ format: 'der', type: 'pkcs8' }),
    publicMaterial: await createCaCertificate(privateKey, publicKey, commonName, CA_TTL_MS),
  }
}

const RESOURCE_NOUN: Record<ResourceKind, string> = { kube: 'kube cluster', db: 'database' }

/** A new client CA for one kube cluster or database, named after it. */
export function createResourceCa(kind: ResourceKind, name: string): Promise<StoredCa> {
  return create(RESOURCE_CA_KIND[kind], `memid ${RESOURCE_CA_KIND[kind]} CA for ${RESOURCE_NOUN[kind]} ${name}`)
}

/**
 * The client CA of one registered resource, read from the store on each use: a
 * `kube rm` + `kube add` replaces it, and every worker must sign with the current one.
 */
export async function resourceAuthority(store: Store, kind: ResourceKind, name: string): Promise<X509Authority> {
  const ca = await store.getResourceCa(kind, name)
  if (ca === undefined) throw new MemidError('ERR_NOT_FOUND', `${RESOURCE_NOUN[kind]} "${name}" has no client CA yet; restart the auth service to create it`)
  const id = `${kind}/${name}`
  const held = resourceAuthorities.get(id)
  if (held !== undefined && held.certPem === ca.publicMaterial) {
    ca.privateKeyDer.fill(0)
    return held
  }
  const made = toX509(ca)
  if (resourceAuthorities.size >= MAX_RESOURCE_AUTHORITIES) resourceAuthorities.clear()
  resourceAuthorities.set(id, made)
  return made
}

/**
 * The authority last read for each resource, reused while its stored certificate is the
 * same: importing the PKCS#8 key and building the leaf template (which parses the CA
 * certificate and checks the key against it) was most of a database certificate's CPU.
 * A new CA (`rm` + `add`) has a new certificate, so it replaces the entry on first use.
 */
const resourceAuthorities = new Map<string, X509Authority>()
const MAX_RESOURCE_AUTHORITIES = 1024

/**
 * Stores migrated from the single shared client CA: every registration gets its own CA
 * (a key cannot be made in SQL, so this finishes that migration). Its server must then
 * trust that CA (README: upgrading).
 */
async function ensureResourceCas(store: Store): Promise<void> {
  for (const kind of Object.keys(RESOURCE_CA_KIND) as ResourceKind[]) {
    for (const res of await store.listResources(kind)) {
      if ((await store.getResourceCa(kind, res.name)) === undefined) {
        const fresh = await createResourceCa(kind, res.name)
        const stored = await store.putResourceCaIfAbsent(kind, res.name, fresh)
        fresh.privateKeyDer.fill(0)
        stored.privateKeyDer.fill(0)
      }
    }
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
    got.set(kind, existing ?? (await store.putCaIfAbsent(await create(kind, `memid ${clusterName} ${kind} CA`))))
  }
  await ensureResourceCas(store)
  const need = (k: CaKind) => got.get(k) as StoredCa
  return {
    clusterName,
    sshUser: toSsh(need('ssh-user')),
    sshHost: toSsh(need('ssh-host')),
    tls: toX509(need('tls')),
    bot: toX509(need('bot')),
  }
}

export function caPin(cas: CaSet): string {
  return spkiPin(cas.tls.certPem)
}
