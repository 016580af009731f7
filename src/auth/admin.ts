import { randomBytes, randomUUID } from 'node:crypto'
import { z } from 'zod'
import { MemidError } from '../core/errors.ts'
import { parseDuration } from '../core/duration.ts'
import { durationSchema, nameSchema, parseWith, principalSchema } from '../core/validate.ts'
import type { Clock } from '../core/clock.ts'
import {
  CA_KINDS, MAX_PAGE, PLATFORM_JOIN_METHODS, RESOURCE_CA_KIND, type JoinMethod, type PlatformJoinMethod, type AuditEvent, type Page, type PageRequest, type Bot,
  type BotInstance, type CaKind, type JoinToken, type Lock, type NewAuditEvent, type Resource, type ResourceKind, type Role, type Store,
} from '../storage/store.ts'
import { generateToken } from './tokens.ts'
import { platformSpec } from './join/platform.ts'
import { signHostCertificate } from './sign-host.ts'
import { createResourceCa } from './cas.ts'
import type { KeyObject } from 'node:crypto'
import { X509Certificate } from 'node:crypto'

export const DEFAULT_TOKEN_TTL_MS = 30 * 60_000
export const DEFAULT_BOT_MAX_TTL_MS = 12 * 3_600_000

const listOf = (item: z.ZodType<string>) => z.array(item).max(64).default([])
const grant = z.union([z.literal('*'), nameSchema])

const roleInput = z.strictObject({
  name: nameSchema,
  logins: listOf(principalSchema),
  kubeClusters: listOf(grant),
  kubeUsers: listOf(principalSchema),
  kubeGroups: listOf(principalSchema),
  databases: listOf(grant),
  dbUsers: listOf(z.union([z.literal('*'), principalSchema])),
  dbNames: listOf(z.union([z.literal('*'), principalSchema])),
})

const botInput = z.strictObject({
  name: nameSchema,
  roles: z.array(nameSchema).min(1, 'at least one role is required').max(32),
  maxTtl: durationSchema.optional(),
})

const tokenInput = z.strictObject({
  bot: nameSchema,
  ttl: z.union([z.literal('0'), durationSchema]).optional(),
  joinMethod: z.enum(['token', ...PLATFORM_JOIN_METHODS]).default('token'),
  name: nameSchema.optional(),
  allow: z.array(z.string().max(4096)).max(64).optional(),
  issuer: z.string().max(512).optional(),
  audience: z.string().max(256).optional(),
  jwks: z.string().max(65_536).optional(),
})

const resourceInput = z.strictObject({
  name: nameSchema,
  uri: z.string().max(512),
  caPem: z.string().max(65536).optional(),
})

const lockInput = z.strictObject({
  bot: nameSchema.optional(),
  instance: z.string().uuid().optional(),
  reason: z.string().max(512).optional(),
}).refine((v) => (v.bot === undefined) !== (v.instance === undefined), 'give exactly one of bot or instance')

const signHostInput = z.strictObject({
  hosts: z.array(z.string().min(1).max(253)).min(1).max(64),
  publicKey: z.string().min(1).max(16_384),
  ttl: durationSchema,
})

/** The default page of an admin listing; `--limit` asks for another (up to MAX_PAGE). */
export const DEFAULT_PAGE = 100

const pageFields = {
  limit: z.coerce.number().int().min(1).max(MAX_PAGE).default(DEFAULT_PAGE),
  after: z.string().min(1).max(1024).optional(),
}
const pageInput = z.strictObject(pageFields)
const instancePageInput = z.strictObject({ ...pageFields, bot: nameSchema.optional() })

const auditInput = z.strictObject({
  since: durationSchema.optional(),
  type: z.string().max(64).optional(),
  bot: nameSchema.optional(),
  ...pageFields,
})

/** A join token as shown to admins: the secret only once, at creation. */
export interface CreatedToken {
  name: string
  bot: string
  token: string
  expiresAt: string
}

/** A platform join token: nothing secret, only its name is printed. */
export interface CreatedPlatformToken {
  name: string
  bot: string
  joinMethod: JoinMethod
  expiresAt?: string
}

export type PublicToken = Omit<JoinToken, 'secretHash'>

/** A registered cluster or database, and whether it reuses a client CA kept by `rm --keep-ca`. */
export type AddedResource = Resource & { keptCa: boolean }

const URI_RULES: Record<ResourceKind, { schemes: string[]; example: string }> = {
  kube: { schemes: ['https:'], example: 'https://HOST:PORT' },
  db: { schemes: ['postgres:', 'postgresql:', 'tls:'], example: 'postgres://HOST:PORT' },
}

/**
 * Admin operations behind the admin socket. Every change is audited; inputs are parsed
 * here, at the edge, and bad ones change nothing.
 */
export class AdminService {
  readonly #store: Store
  readonly #clock: Clock
  readonly #audit: (ev: NewAuditEvent) => Promise<void>
  readonly #sshHostCa: KeyObject | undefined
  readonly #clusterName: string

  constructor(deps: { store: Store; clock: Clock; audit: (ev: NewAuditEvent) => Promise<void>; sshHostCa?: KeyObject; clusterName?: string }) {
    this.#store = deps.store
    this.#clock = deps.clock
    this.#audit = deps.audit
    this.#sshHostCa = deps.sshHostCa
    this.#clusterName = deps.clusterName ?? 'memid'
  }

  #now(): string {
    return new Date(this.#clock.now()).toISOString()
  }

  async #changed(type: string, fields: Record<string, unknown>, bot?: string): Promise<void> {
    await this.#audit({ type, success: true, ...(bot !== undefined ? { bot } : {}), fields: { by: 'admin', ...fields } })
  }

  async addRole(body: unknown): Promise<Role> {
    const input = parseWith(roleInput, body)
    const role: Role = { ...input, createdAt: this.#now() }
    await this.#store.createRole(role)
    await this.#changed('role.created', { role: role.name })
    return role
  }

  listRoles(): Promise<Role[]> {
    return this.#store.listRoles()
  }

  async removeRole(name: string): Promise<void> {
    const users = (await this.#store.listBots()).filter((b) => b.roles.includes(name)).map((b) => b.name)
    if (users.length > 0) throw new MemidError('ERR_BAD_REQUEST', `role "${name}" is used by bot${users.length > 1 ? 's' : ''} ${users.join(', ')}; remove it from them first`)
    if (!(await this.#store.deleteRole(name))) throw new MemidError('ERR_NOT_FOUND', `role "${name}" does not exist`)
    await this.#changed('role.deleted', { role: name })
  }

  async addBot(body: unknown): Promise<{ bot: Bot; token: CreatedToken }> {
    const input = parseWith(botInput, body)
    for (const r of input.roles) {
      if ((await this.#store.getRole(r)) === undefined) throw new MemidError('ERR_NOT_FOUND', `role "${r}" does not exist (memid roles add ${r})`)
    }
    const bot: Bot = { id: randomUUID(), name: input.name, roles: input.roles, maxTtlMs: input.maxTtl ? (parseDuration(input.maxTtl) as number) : DEFAULT_BOT_MAX_TTL_MS, createdAt: this.#now() }
    await this.#store.createBot(bot)
    await this.#changed('bot.created', { botId: bot.id, roles: bot.roles, maxTtlSeconds: bot.maxTtlMs / 1000 }, bot.name)
    const token = await this.addToken({ bot: bot.name }) as CreatedToken
    return { bot, token }
  }

  /** Parses a listing's `limit` and `after` (query string or body); bad ones are ERR_BAD_REQUEST naming the field. */
  pageRequest(input: unknown): PageRequest {
    const q = parseWith(pageInput, input)
    return q.after === undefined ? { limit: q.limit } : { limit: q.limit, after: q.after }
  }

  pageBots(req: PageRequest): Promise<Page<Bot>> {
    return this.#store.pageBots(req)
  }

  /** Deletes the bot and ends its instances, in one transaction: their identities are refused from then on. */
  async removeBot(name: string): Promise<void> {
    const bot = await this.#store.getBot(name)
    const deleted = await this.#store.deleteBot(name, this.#now())
    if (deleted === undefined) throw new MemidError('ERR_NOT_FOUND', `bot "${name}" does not exist`)
    await this.#changed('bot.deleted', { ...(bot ? { botId: bot.id } : {}), endedInstances: deleted.endedInstances }, name)
  }

  async addToken(body: unknown): Promise<CreatedToken | CreatedPlatformToken> {
    const input = parseWith(tokenInput, body)
    if ((await this.#store.getBot(input.bot)) === undefined) throw new MemidError('ERR_NOT_FOUND', `bot "${input.bot}" does not exist`)
    if (input.joinMethod !== 'token') return this.#addPlatformToken({ ...input, joinMethod: input.joinMethod })
    for (const k of ['name', 'allow', 'issuer', 'audience', 'jwks'] as const) {
      if (input[k] !== undefined) throw new MemidError('ERR_BAD_REQUEST', `${k}: only for the github, gitlab, kubernetes and oidc join methods`)
    }
    const ttlMs = input.ttl ? (parseDuration(input.ttl) ?? 0) : DEFAULT_TOKEN_TTL_MS
    if (ttlMs < 1000) throw new MemidError('ERR_BAD_REQUEST', 'ttl: must be at least 1s')
    const t = generateToken()
    const now = this.#clock.now()
    const expiresAt = new Date(now + ttlMs).toISOString()
    await this.#store.createToken({ name: t.name, bot: input.bot, joinMethod: 'token', secretHash: t.secretHash, createdAt: new Date(now).toISOString(), expiresAt })
    await this.#changed('token.created', { tokenName: t.name, expiresAt }, input.bot)
    return { name: t.name, bot: input.bot, token: t.value, expiresAt }
  }

  /** A platform token: rules, not a secret; usable by many joins until it expires (`ttl: 0`: never). */
  async #addPlatformToken(input: z.infer<typeof tokenInput> & { joinMethod: PlatformJoinMethod }): Promise<CreatedPlatformToken> {
    const spec = platformSpec(input.joinMethod, { allow: input.allow ?? [], issuer: input.issuer, audience: input.audience, jwks: input.jwks }, this.#clusterName)
    const ttlMs = input.ttl === undefined ? DEFAULT_TOKEN_TTL_MS : (parseDuration(input.ttl) ?? 0)
    if (input.ttl !== undefined && input.ttl !== '0' && ttlMs < 1000) throw new MemidError('ERR_BAD_REQUEST', 'ttl: must be at least 1s, or 0 for no expiry')
    const now = this.#clock.now()
    const name = input.name ?? `${input.joinMethod}-${randomBytes(6).toString('hex')}`
    const token: JoinToken = { name, bot: input.bot, joinMethod: input.joinMethod, secretHash: '', createdAt: new Date(now).toISOString(), platform: spec, joinCount: 0 }
    if (input.ttl !== '0') token.expiresAt = new Date(now + ttlMs).toISOString()
    await this.#store.createToken(token)
    await this.#changed('token.created', { tokenName: name, joinMethod: input.joinMethod, rules: spec.rules, issuer: spec.issuer, audience: spec.audience, expiresAt: token.expiresAt ?? 'never' }, input.bot)
    return { name, bot: input.bot, joinMethod: input.joinMethod, ...(token.expiresAt ? { expiresAt: token.expiresAt } : {}) }
  }

  async pageTokens(req: PageRequest): Promise<Page<PublicToken>> {
    const page = await this.#store.pageTokens(req)
    return { ...page, items: page.items.map(({ secretHash: _s, ...rest }) => rest) }
  }

  async removeToken(name: string): Promise<void> {
    if (!(await this.#store.deleteToken(name))) throw new MemidError('ERR_NOT_FOUND', `token "${name}" does not exist`)
    await this.#changed('token.deleted', { tokenName: name })
  }

  /** Registers a cluster or database with a client CA of its own (new, or the one `rm --keep-ca` kept). */
  async addResource(kind: ResourceKind, body: unknown): Promise<AddedResource> {
    const input = parseWith(resourceInput, body)
    const rule = URI_RULES[kind]
    let url: URL
    try {
      url = new URL(input.uri)
    } catch {
      throw new MemidError('ERR_BAD_REQUEST', `uri: must look like ${rule.example}`)
    }
    if (!rule.schemes.includes(url.protocol) || url.hostname === '' || url.username || url.password || (url.pathname !== '' && url.pathname !== '/') || url.search) {
      throw new MemidError('ERR_BAD_REQUEST', `uri: must look like ${rule.example} (no user, password, path or query)`)
    }
    if (input.caPem !== undefined) {
      try {
        new X509Certificate(input.caPem)
      } catch {
        throw new MemidError('ERR_BAD_REQUEST', 'caPem: is not a PEM certificate')
      }
    }
    const res: Resource = { kind, name: input.name, uri: `${url.protocol}//${url.host}`, createdAt: this.#now(), ...(input.caPem ? { caPem: input.caPem } : {}) }
    const ca = await createResourceCa(kind, res.name)
    let keptCa: boolean
    try {
      ({ keptCa } = await this.#store.putResource(res, ca))
    } finally {
      ca.privateKeyDer.fill(0)
    }
    await this.#changed(`${kind}.created`, { name: res.name, uri: res.uri, clientCa: keptCa ? 'kept' : 'new' })
    return { ...res, keptCa }
  }

  listResources(kind: ResourceKind): Promise<Resource[]> {
    return this.#store.listResources(kind)
  }

  /**
   * Unregisters it; its client CA goes too unless `keepCa` (for a later add of the same
   * name). Without `keepCa`, a CA an earlier `rm --keep-ca` kept is dropped as well.
   */
  async removeResource(kind: ResourceKind, name: string, keepCa = false): Promise<void> {
    if (!(await this.#store.deleteResource(kind, name, { keepCa }))) throw new MemidError('ERR_NOT_FOUND', `${kind === 'kube' ? 'kube cluster' : 'database'} "${name}" does not exist`)
    await this.#changed(`${kind}.deleted`, { name, keepCa })
  }

  /** Parses an instance listing's query: `limit`, `after`, `bot`. */
  instancePageRequest(input: unknown): PageRequest & { bot?: string } {
    const { bot, ...page } = parseWith(instancePageInput, input)
    return { ...this.pageRequest(page), ...(bot !== undefined ? { bot } : {}) }
  }

  pageInstances(req: PageRequest & { bot?: string }): Promise<Page<BotInstance>> {
    return this.#store.pageInstances(req)
  }

  /** `pageInstances` as JSON text per instance, for streaming a listing without re-serializing it. */
  pageInstancesJson(req: PageRequest & { bot?: string }): Promise<Page<string>> {
    return this.#store.pageInstancesJson(req)
  }

  async getInstance(bot: string, id: string): Promise<BotInstance> {
    const i = await this.#store.getInstance(id)
    if (i === undefined || i.bot !== bot) throw new MemidError('ERR_NOT_FOUND', `bot instance ${bot}/${id} does not exist`)
    return i
  }

  async addLock(body: unknown): Promise<Lock> {
    const input = parseWith(lockInput, body)
    const lock: Lock = { id: randomUUID(), reason: input.reason ?? 'locked by an administrator', createdAt: this.#now() }
    if (input.bot !== undefined) lock.bot = input.bot
    if (input.instance !== undefined) lock.instance = input.instance
    await this.#store.createLock(lock)
    await this.#audit({ type: 'lock.created', success: true, ...(lock.bot ? { bot: lock.bot } : {}), ...(lock.instance ? { instance: lock.instance } : {}), message: lock.reason, fields: { by: 'admin', lock: lock.id } })
    return lock
  }

  listLocks(): Promise<Lock[]> {
    return this.#store.listLocks()
  }

  async removeLock(id: string): Promise<void> {
    if (!(await this.#store.deleteLock(id))) throw new MemidError('ERR_NOT_FOUND', `lock ${id} does not exist`)
    await this.#changed('lock.deleted', { lock: id })
  }

  /**
   * The public half of a CA (PEM certificate or OpenSSH line); the key never leaves the
   * store. Client CAs (`kube-client`, `db-client`) are per resource: `name` says whose.
   */
  async exportCa(kind: string, name?: string): Promise<string> {
    const resource = (Object.keys(RESOURCE_CA_KIND) as ResourceKind[]).find((k) => RESOURCE_CA_KIND[k] === kind)
    let ca
    if (resource !== undefined) {
      const noun = resource === 'kube' ? 'kube cluster' : 'database'
      if (name === undefined) throw new MemidError('ERR_BAD_REQUEST', `name: the ${kind} CA is per ${noun}: name one`)
      ca = await this.#store.getResourceCa(resource, name)
      if (ca === undefined) throw new MemidError('ERR_NOT_FOUND', `${noun} "${name}" is not registered (memid ${resource === 'kube' ? 'kube' : 'dbs'} add ${name})`)
    } else {
      const kinds = [...CA_KINDS, ...Object.values(RESOURCE_CA_KIND)]
      if (!(CA_KINDS as readonly string[]).includes(kind)) throw new MemidError('ERR_BAD_REQUEST', `kind: must be one of ${kinds.join(', ')}`)
      if (name !== undefined) throw new MemidError('ERR_BAD_REQUEST', `name: the ${kind} CA is one for the whole cluster, not per resource`)
      ca = await this.#store.getCa(kind as CaKind)
      if (ca === undefined) throw new MemidError('ERR_NOT_FOUND', `the ${kind} CA does not exist yet`)
    }
    ca.privateKeyDer.fill(0)
    return ca.publicMaterial.endsWith('\n') ? ca.publicMaterial : `${ca.publicMaterial}\n`
  }

  /** An OpenSSH host certificate for a server's host key (the server administrator's side). */
  async signHost(body: unknown): Promise<{ certificate: string }> {
    const input = parseWith(signHostInput, body)
    if (this.#sshHostCa === undefined) throw new MemidError('ERR_NOT_FOUND', 'the ssh-host CA is not loaded here')
    const ttlMs = parseDuration(input.ttl) as number
    const certificate = signHostCertificate({ caKey: this.#sshHostCa, hosts: input.hosts, publicKeyLine: input.publicKey, ttlMs, now: this.#clock.now() })
    await this.#changed('cert.issued', { kind: 'ssh-host', principals: input.hosts, ttlSeconds: Math.round(ttlMs / 1000) })
    return { certificate: certificate.endsWith('\n') ? certificate : `${certificate}\n` }
  }

  /** Parses an audit query: filters plus `limit` and `after`. */
  auditRequest(body: unknown): PageRequest & { since?: string; type?: string; bot?: string } {
    const q = parseWith(auditInput, body)
    const since = q.since !== undefined ? new Date(this.#clock.now() - (parseDuration(q.since) as number)).toISOString() : undefined
    return {
      ...this.pageRequest({ limit: q.limit, ...(q.after !== undefined ? { after: q.after } : {}) }),
      ...(since !== undefined ? { since } : {}),
      ...(q.type !== undefined ? { type: q.type } : {}),
      ...(q.bot !== undefined ? { bot: q.bot } : {}),
    }
  }

  pageAudit(req: PageRequest & { since?: string; type?: string; bot?: string }): Promise<Page<AuditEvent>> {
    return this.#store.pageAudit(req)
  }
}
