import type { Heartbeat } from '../api/types.ts'

/**
 * The Store is everything the auth service persists. The rest of the code depends on this
 * interface only; backends live beside it (sqlite.ts first, PostgreSQL later). Methods
 * are async so a networked backend fits; compound writes that must be atomic take a
 * synchronous `decide` function that runs inside the backend's transaction.
 */

export type CaKind = 'ssh-user' | 'ssh-host' | 'tls' | 'bot' | 'kube-client' | 'db-client'
/** The cluster-wide CAs. Client CAs are per resource (`RESOURCE_CA_KIND`), never shared. */
export const CA_KINDS: readonly CaKind[] = ['ssh-user', 'ssh-host', 'tls', 'bot']
/** The kind of the client CA each registered kube cluster or database has of its own. */
export const RESOURCE_CA_KIND = { kube: 'kube-client', db: 'db-client' } as const satisfies Record<ResourceKind, CaKind>

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
  /**
   * Immutable and never reused: a bot deleted and created again under the same name is a
   * new bot with a new id. Bot certificates carry it and every request compares it.
   */
  id: string
  name: string
  roles: string[]
  /** The longest certificate TTL this bot may be issued, in milliseconds. */
  maxTtlMs: number
  createdAt: string
}

export type JoinMethod = 'token' | 'github' | 'gitlab' | 'kubernetes' | 'oidc'
export const PLATFORM_JOIN_METHODS = ['github', 'gitlab', 'kubernetes', 'oidc'] as const
export type PlatformJoinMethod = (typeof PLATFORM_JOIN_METHODS)[number]

/** What a platform join token checks: the JWT's issuer, audience and claims. Rules, not secrets. */
export interface PlatformJoinSpec {
  /** A join is accepted when every pair of at least one rule matches the JWT's claims. */
  rules: Record<string, string>[]
  /** The exact `iss` expected; also where discovery starts unless `jwks` is given. */
  issuer: string
  /** The exact `aud` expected (the agent asks its platform for this audience). */
  audience: string
  /** A static JWKS (JSON text): no discovery is made. */
  jwks?: string
}

export interface JoinToken {
  /** The public half of the token; shown by `tokens ls`, recorded on instances. */
  name: string
  bot: string
  joinMethod: JoinMethod
  /** sha256 (hex) of the secret half. The secret itself is never stored. Empty for platform joins. */
  secretHash: string
  createdAt: string
  /** Absent: never expires (platform tokens created with `--ttl 0`). */
  expiresAt?: string
  usedAt?: string
  usedByInstance?: string
  /** Platform joins only: the checks, and how many joins the token has accepted. */
  platform?: PlatformJoinSpec
  joinCount?: number
}

/** A platform JWT's replay key (its `jti` or hash), remembered until the JWT can no longer be accepted. */
export interface ReplayKey {
  key: string
  expiresAt: string
  /** Keys that expired before this time are pruned in the same transaction. */
  now: string
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
  /** The id of the bot this instance was created for. */
  botId: string
  joinMethod: string
  tokenName: string
  createdAt: string
  /** The confirmed generation: the one the agent has been seen using. */
  generation: number
  /** A generation issued but not yet used by the agent (renewal response maybe lost). */
  pendingGeneration: number | null
  /** How many times the previous generation retried the renewal to the pending one (lost answers). */
  pendingRetries: number
  /**
   * sha256 (hex) of the SPKI of the pending generation's key: a retry with this key gets
   * the pending generation again, any other key is a copy.
   */
  pendingKey?: string
  /** When the instance was ended (its bot deleted); an ended instance is refused everything. */
  endedAt?: string
  initialAuthentication: Authentication
  latestAuthentications: Authentication[]
  heartbeats: Heartbeat[]
  /** Platform joins: the identifying claims of the JWT that created the instance, values as in the JWT. */
  claims?: Record<string, unknown>
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

/**
 * What a transaction on one bot instance decided: the instance to write back (omitted when
 * it does not change), locks to create and audit events to append. All of it commits
 * together, or none of it does.
 */
export interface InstanceChange {
  instance?: BotInstance
  locks?: Lock[]
  audit?: NewAuditEvent[]
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
  /** `pageInstances` with each item as its JSON text (what JSON.stringify gives), made without parsing the stored record. */
  pageInstancesJson(req: PageRequest & { bot?: string }): Promise<Page<string>>
  /** Audit events newest first, filtered as `queryAudit`. */
  pageAudit(req: PageRequest & Omit<AuditQuery, 'limit'>): Promise<Page<AuditEvent>>
  /** Deletes the instance only if it is stored exactly as `instance` (nothing renewed or heartbeat since it was read). */
  deleteInstanceIfUnchanged(instance: BotInstance): Promise<boolean>
  /** Deletes up to `limit` audit events older than `before` (oldest first); how many went. */
  pruneAudit(before: string, limit: number): Promise<number>

  createBot(bot: Bot): Promise<void>
  getBot(name: string): Promise<Bot | undefined>
  listBots(): Promise<Bot[]>
  /**
   * Deletes the bot and its unused tokens and ends its instances (they stay for the
   * record, marked `endedAt`), in one transaction. Undefined when there is no such bot.
   */
  deleteBot(name: string, endedAt: string): Promise<{ endedInstances: number } | undefined>

  createToken(token: JoinToken): Promise<void>
  getToken(name: string): Promise<JoinToken | undefined>
  listTokens(): Promise<JoinToken[]>
  deleteToken(name: string): Promise<boolean>
  /**
   * Atomically reads the token, lets `decide` accept or refuse it (by throwing), and on
   * acceptance marks it used by `instanceId` and creates the instance, in one transaction.
   * `seen`, the token as the caller read it, lets a networked backend decide on it and then
   * mark and create in one statement that applies only if the token is still exactly that
   * and unused; otherwise it runs the transaction (so `decide` may run twice).
   */
  consumeToken(name: string, decide: (token: JoinToken | undefined) => BotInstance, seen?: JoinToken): Promise<BotInstance>
  /**
   * A platform join, in one transaction: `decide` accepts or refuses the token (by
   * throwing); on acceptance the replay key is recorded — one already recorded refuses
   * with ERR_JOIN_JWT_REPLAYED, across restarts and replicas — the token's join count goes
   * up and the instance is created. Replay keys expired before `replay.now` are pruned.
   */
  joinWithPlatformToken(name: string, replay: ReplayKey, decide: (token: JoinToken | undefined) => BotInstance): Promise<BotInstance>

  getInstance(id: string): Promise<BotInstance | undefined>
  /** The bot of that name and the instance of that id, each undefined when absent, read together (one round trip). */
  getBotAndInstance(bot: string, instanceId: string): Promise<{ bot?: Bot; instance?: BotInstance }>
  listInstances(bot?: string): Promise<BotInstance[]>
  /**
   * In one transaction: reads the instance and the locks that apply to it (its bot's name
   * or its id), lets `decide` (synchronous; it may throw, and then nothing is written) say
   * what changes, and writes that. Locks committed before the instance was read are seen.
   *
   * `seen` is the instance as the caller last read it. A networked backend may first
   * decide on it (with no locks) without reading, and write that decision only if the
   * stored row is still exactly `seen` and no lock applies, in one statement; when it is
   * not (or `decide` throws, or wants a lock) it runs the transaction above. So `decide`
   * may run twice and must keep nothing from a run but what it returns.
   */
  updateInstance(id: string, decide: (instance: BotInstance | undefined, locks: Lock[]) => InstanceChange, seen?: BotInstance): Promise<InstanceChange>

  /** Creates the lock; one with a `cause` that already exists for its target is not created again (false). */
  createLock(lock: Lock): Promise<boolean>
  listLocks(): Promise<Lock[]>
  deleteLock(id: string): Promise<boolean>
  /** Locks that apply to this bot or this instance. */
  locksFor(bot: string, instance: string): Promise<Lock[]>

  /**
   * Registers the resource with its own client CA, in one transaction: the CA kept by an
   * earlier `deleteResource(…, { keepCa: true })` of the same name if there is one
   * (`keptCa: true`), otherwise `ca`, replacing nothing else.
   */
  putResource(resource: Resource, ca: StoredCa): Promise<{ keptCa: boolean }>
  getResource(kind: ResourceKind, name: string): Promise<Resource | undefined>
  listResources(kind: ResourceKind): Promise<Resource[]>
  /**
   * Removes the resource and, unless `keepCa`, its client CA (same transaction); without
   * `keepCa` it also drops a CA kept by an earlier removal. False when neither existed.
   */
  deleteResource(kind: ResourceKind, name: string, opts?: { keepCa?: boolean }): Promise<boolean>
  /** The client CA of a registered resource (or one kept after its removal). */
  getResourceCa(kind: ResourceKind, name: string): Promise<StoredCa | undefined>
  /** Gives a resource `ca` unless it has one (stores from before per-resource CAs); returns whichever is stored. */
  putResourceCaIfAbsent(kind: ResourceKind, name: string, ca: StoredCa): Promise<StoredCa>

  appendAudit(event: NewAuditEvent): Promise<AuditEvent>
  /** Several events in one durable write, in this order (one commit, one round trip). */
  appendAudits(events: NewAuditEvent[]): Promise<void>
  queryAudit(query: AuditQuery): Promise<AuditEvent[]>
}
