import type { Heartbeat } from '../api/types.ts'

/**
 * The Store is everything the auth service persists. The rest of the code depends on this
 * interface only; backends live beside it (sqlite.ts first, PostgreSQL later). Methods
 * are async so a networked backend fits; compound writes that must be atomic take a
 * synchronous `decide` function that runs inside the backend's transaction.
 */

export type CaKind = 'ssh-user' | 'ssh-host' | 'tls' | 'bot' | 'kube-client' | 'db-client'
export const CA_KINDS: readonly CaKind[] = ['ssh-user', 'ssh-host', 'tls', 'bot', 'kube-client', 'db-client']

export interface StoredCa {
  kind: CaKind
  /** PKCS#8 DER of the CA's private key. */
  privateKeyDer: Buffer
  /** PEM certificate for X.509 CAs; the OpenSSH public key line for SSH CAs. */
  publicMaterial: string
  createdAt: string
}

export interface Role {
  name: string
  logins: string[]
  kubeClusters: string[]
  kubeUsers: string[]
  kubeGroups: string[]
  databases: string[]
  dbUsers: string[]
  dbNames: string[]
  createdAt: string
}

export interface Bot {
  name: string
  roles: string[]
  /** The longest certificate TTL this bot may be issued, in milliseconds. */
  maxTtlMs: number
  createdAt: string
}

export interface JoinToken {
  /** The public half of the token; shown by `tokens ls`, recorded on instances. */
  name: string
  bot: string
  joinMethod: 'token'
  /** sha256 (hex) of the secret half. The secret itself is never stored. */
  secretHash: string
  createdAt: string
  expiresAt: string
  usedAt?: string
  usedByInstance?: string
}

export interface Authentication {
  time: string
  joinMethod: string
  remoteAddr: string
  generation: number
}


export type { Heartbeat }

export interface BotInstance {
  id: string
  bot: string
  joinMethod: string
  tokenName: string
  createdAt: string
  /** The confirmed generation: the one the agent has been seen using. */
  generation: number
  /** A generation issued but not yet used by the agent (renewal response maybe lost). */
  pendingGeneration: number | null
  /** How many times the previous generation was used to retry an unconfirmed renewal. */
  pendingRetries: number
  initialAuthentication: Authentication
  latestAuthentications: Authentication[]
  heartbeats: Heartbeat[]
}

export interface Lock {
  id: string
  bot?: string
  instance?: string
  reason: string
  createdAt: string
  /**
   * Why the service itself locked (e.g. `generation.mismatch`). At most one lock exists
   * per target and cause: creating it again is a no-op. Admin locks have none.
   */
  cause?: string
}

export type ResourceKind = 'kube' | 'db'

export interface Resource {
  kind: ResourceKind
  name: string
  /** `https://host:port` for kube clusters, `postgres://host:port` for databases. */
  uri: string
  /** The CA that signed the resource's server certificate. */
  caPem?: string
  createdAt: string
}

export interface AuditEvent {
  id: number
  time: string
  type: string
  success: boolean
  code?: string
  message?: string
  bot?: string
  instance?: string
  remoteAddr?: string
  fields: Record<string, unknown>
}

export type NewAuditEvent = Omit<AuditEvent, 'id' | 'time'> & { time?: string }

export interface AuditQuery {
  since?: string
  type?: string
  bot?: string
  limit?: number
}

/** One page of a newest-first listing. `after` is the `next` of the page before. */
export interface PageRequest {
  /** 1 to MAX_PAGE. */
  limit: number
  /** An opaque cursor from a previous page's `next`. */
  after?: string
}

export interface Page<T> {
  items: T[]
  /** Present when more items remain after this page. */
  next?: string
}

/** The most items one page may ask for. */
export const MAX_PAGE = 10_000

/** Kept on every instance: the first authentication plus this many latest ones and heartbeats. */
export const INSTANCE_HISTORY = 10

export interface Store {
  close(): Promise<void>

  getCa(kind: CaKind): Promise<StoredCa | undefined>
  /** Inserts the CA unless one of that kind exists; returns whichever is stored. */
  putCaIfAbsent(ca: StoredCa): Promise<StoredCa>

  createRole(role: Role): Promise<void>
  getRole(name: string): Promise<Role | undefined>
  listRoles(): Promise<Role[]>
  deleteRole(name: string): Promise<boolean>

  /** Bots, newest first; the listings below page the same way (keyset on creation time and key). */
  pageBots(req: PageRequest): Promise<Page<Bot>>
  pageTokens(req: PageRequest): Promise<Page<JoinToken>>
  pageInstances(req: PageRequest & { bot?: string }): Promise<Page<BotInstance>>
  /** Audit events newest first, filtered as `queryAudit`. */
  pageAudit(req: PageRequest & Omit<AuditQuery, 'limit'>): Promise<Page<AuditEvent>>
  /** Deletes the instance only if it is stored exactly as `instance` (nothing renewed or heartbeat since it was read). */
  deleteInstanceIfUnchanged(instance: BotInstance): Promise<boolean>
  /** Deletes up to `limit` audit events older than `before` (oldest first); how many went. */
  pruneAudit(before: string, limit: number): Promise<number>

  createBot(bot: Bot): Promise<void>
  getBot(name: string): Promise<Bot | undefined>
  listBots(): Promise<Bot[]>
  /** Deletes the bot and its unused tokens; its instances stay for the record. */
  deleteBot(name: string): Promise<boolean>

  createToken(token: JoinToken): Promise<void>
  getToken(name: string): Promise<JoinToken | undefined>
  listTokens(): Promise<JoinToken[]>
  deleteToken(name: string): Promise<boolean>
  /**
   * Atomically reads the token, lets `decide` accept or refuse it (by throwing), and on
   * acceptance marks it used by `instanceId` and creates the instance, in one transaction.
   */
  consumeToken(name: string, decide: (token: JoinToken | undefined) => BotInstance): Promise<BotInstance>

  getInstance(id: string): Promise<BotInstance | undefined>
  listInstances(bot?: string): Promise<BotInstance[]>
  /** Read, `decide` (which may throw), write back, in one transaction. */
  updateInstance(id: string, decide: (instance: BotInstance | undefined) => BotInstance): Promise<BotInstance>

  /** Creates the lock; one with a `cause` that already exists for its target is not created again (false). */
  createLock(lock: Lock): Promise<boolean>
  listLocks(): Promise<Lock[]>
  deleteLock(id: string): Promise<boolean>
  /** Locks that apply to this bot or this instance. */
  locksFor(bot: string, instance: string): Promise<Lock[]>

  putResource(resource: Resource): Promise<void>
  getResource(kind: ResourceKind, name: string): Promise<Resource | undefined>
  listResources(kind: ResourceKind): Promise<Resource[]>
  deleteResource(kind: ResourceKind, name: string): Promise<boolean>

  appendAudit(event: NewAuditEvent): Promise<AuditEvent>
  queryAudit(query: AuditQuery): Promise<AuditEvent[]>
}
