import { createHash, createPublicKey, randomUUID, type KeyObject } from 'node:crypto'
import type { Logger } from '../core/log.ts'
import { MemidError } from '../core/errors.ts'
import { parseDuration } from '../core/duration.ts'
import type { Clock } from '../core/clock.ts'
import type { Authentication, Bot, BotInstance, InstanceChange, JoinToken, Lock, NewAuditEvent, Role, Store } from '../storage/store.ts'
import { INSTANCE_HISTORY } from '../storage/store.ts'
import type {
  CasResponse, DbCertRequest, DbCertResponse, HeartbeatRequest, IdentityResponse, JoinRequest, JoinTokenInfo, KubeCertRequest,
  KubeCertResponse, PlatformJoinRequest, RenewRequest, SshCertRequest, SshCertResponse,
} from '../api/types.ts'
import { PlatformJoins, platformJoin } from './join/platform.ts'
import { JoinRefused } from './join/refused.ts'
import { issueBotIdentity, readBotClaims, type BotClaims } from './bot-identity.ts'
import type { CaSet } from './cas.ts'
import { decideRenewal, decideRequest, type Decision } from './generation.ts'
import { secretMatches, splitToken } from './tokens.ts'
import type { IssueContext } from './issuer.ts'
import { p256SpkiFromPem, spkiDer, type LeafKey } from '../pki/x509.ts'
import { issueKubeCertificate } from './issue-kube.ts'
import { issueDbCertificate } from './issue-db.ts'
import { issueSshCertificate } from './issue-ssh.ts'

/** The shortest certificate TTL we issue: below this renewals could not keep up. */
export const MIN_TTL_MS = 5_000
export const DEFAULT_TTL_MS = 3_600_000

/** The peer of an agent-facing request, as the TLS layer saw it. */
export interface Peer {
  readonly remoteAddr: string
  /** DER of the client certificate, present only when it verified against the bot CA. */
  readonly certificate?: Buffer
}

interface Authenticated {
  claims: BotClaims
  bot: Bot
  instance: BotInstance
}

/** Thrown inside a renewal's transaction when the instance moved since the certificate was signed. */
class Replan extends Error {
  readonly instance: BotInstance

  constructor(instance: BotInstance) {
    super('the instance changed; sign again')
    this.instance = instance
  }
}

type Granted = Exclude<Decision, { kind: 'copy' }>

/** Signing a certificate races with other requests of the same instance at most this often. */
const MAX_REPLANS = 3

/**
 * The auth service's agent-facing operations, independent of HTTP: join, renew (with the
 * generation counter and its confirmation step), heartbeat and certificate issuance.
 */
export class AuthService {
  readonly #store: Store
  readonly #cas: CaSet
  readonly #clock: Clock
  readonly #log: Logger
  readonly #platform: PlatformJoins
  /**
   * The claims of each peer's certificate, parsed once: the HTTP layer gives every request
   * of a connection the same Peer, and parsing the X.509 certificate again for each request
   * was 3.5% of the server's CPU. Expiry is still checked on every request (#authenticate).
   */
  readonly #claims = new WeakMap<Peer, BotClaims | undefined>()

  constructor(deps: { store: Store; cas: CaSet; clock: Clock; logger: Logger; platform?: PlatformJoins }) {
    this.#store = deps.store
    this.#cas = deps.cas
    this.#clock = deps.clock
    this.#log = deps.logger
    this.#platform = deps.platform ?? new PlatformJoins({ clock: deps.clock, log: deps.logger })
  }

  /** What an agent asks before a platform join: the audience to request from its platform. */
  async joinTokenInfo(name: string): Promise<JoinTokenInfo> {
    const t = await this.#store.getToken(name)
    if (t?.platform === undefined) throw new MemidError('ERR_NOT_FOUND', `join token ${name} does not exist or is not a platform join token`)
    return { name: t.name, joinMethod: t.joinMethod, audience: t.platform.audience }
  }

  async audit(ev: NewAuditEvent): Promise<void> {
    try {
      await this.#store.appendAudit(ev)
    } catch (err) {
      this.#log.error({ type: ev.type, err: (err as Error).message }, 'cannot write audit event')
    }
  }

  async #auditAll(evs: NewAuditEvent[]): Promise<void> {
    try {
      await this.#store.appendAudits(evs)
    } catch (err) {
      for (const ev of evs) this.#log.error({ type: ev.type, err: (err as Error).message }, 'cannot write audit event')
    }
  }

  cas(): CasResponse {
    return {
      clusterName: this.#cas.clusterName,
      tls: this.#cas.tls.certPem,
      sshHost: this.#cas.sshHost.publicLine,
      sshUser: this.#cas.sshUser.publicLine,
    }
  }

  async join(req: JoinRequest, peer: Peer): Promise<IdentityResponse> {
    if (req.joinMethod !== 'token') return this.#platformJoin(req, peer)
    const now = this.#clock.now()
    const parts = splitToken(req.token)
    const tokenName = parts?.name
    try {
      if (parts === undefined) throw new MemidError('ERR_TOKEN_INVALID', 'the join token is not valid')
      // The request's own faults are refused before the token is spent, so fixing the
      // agent's config is enough to join with the same token.
      const publicKey = parseAgentKey(req.publicKey, 'ec')
      const askedTtlMs = requestedTtl(req.ttl)
      const token = await this.#store.getToken(parts.name)
      const bot = token && (await this.#store.getBot(token.bot))
      /** The token's bot, if the token lets whoever holds its secret join now. */
      const admit = (t: JoinToken | undefined): Bot => {
        if (t === undefined || t.joinMethod !== 'token' || !secretMatches(parts.secret, t.secretHash)) throw new MemidError('ERR_TOKEN_INVALID', 'the join token is not valid')
        if (t.usedAt !== undefined) throw new MemidError('ERR_TOKEN_USED', `join token ${t.name} was already used`)
        if (t.expiresAt === undefined || Date.parse(t.expiresAt) <= now) throw new MemidError('ERR_TOKEN_EXPIRED', `join token ${t.name} expired at ${t.expiresAt}`)
        if (bot === undefined || bot.name !== t.bot) throw new MemidError('ERR_BOT_NOT_FOUND', `bot "${t.bot}" no longer exists`)
        return bot
      }
      // The token first (only its holder may learn of a lock and its reason), then the
      // locks: a refused join writes nothing. The transaction checks the token again.
      await this.#refuseIfLocked(admit(token))
      const instance = await this.#store.consumeToken(parts.name, (t) => {
        const b = admit(t)
        const auth: Authentication = { time: new Date(now).toISOString(), joinMethod: 'token', remoteAddr: peer.remoteAddr, generation: 1 }
        return {
          id: randomUUID(), bot: b.name, botId: b.id, joinMethod: 'token', tokenName: parts.name, createdAt: auth.time,
          generation: 1, pendingGeneration: null, pendingRetries: 0,
          initialAuthentication: auth, latestAuthentications: [auth], heartbeats: [],
        }
      }, token)
      return await this.#admitted(bot as Bot, instance, askedTtlMs, peer, publicKey, now)
    } catch (err) {
      throw await this.#joinFailed(err, req, peer, tokenName)
    }
  }

  /** Platform joins (join/): the JWT is verified and the instance created there. */
  async #platformJoin(req: PlatformJoinRequest, peer: Peer): Promise<IdentityResponse> {
    const now = this.#clock.now()
    try {
      const publicKey = parseAgentKey(req.publicKey, 'ec')
      const askedTtlMs = requestedTtl(req.ttl)
      const { bot, instance } = await platformJoin(this.#store, this.#platform, req, peer.remoteAddr, now, (b) => this.#refuseIfLocked(b))
      return await this.#admitted(bot, instance, askedTtlMs, peer, publicKey, now)
    } catch (err) {
      throw await this.#joinFailed(err, req, peer, req.tokenName)
    }
  }

  /**
   * A join for a locked bot is refused before it writes anything: no instance, the token
   * (or a platform join's JWT) not used up, so it joins once the lock is removed. A lock
   * made while a join is on its way may come after it, as for any request: the new
   * instance's next request meets it.
   */
  async #refuseIfLocked(bot: Bot): Promise<void> {
    // A new instance cannot be locked yet: only the bot's locks can apply.
    const locks = await this.#store.locksFor(bot.name, '')
    if (locks.length > 0) throw new MemidError('ERR_LOCKED', `bot "${bot.name}" is locked: ${locks[0]?.reason}`)
  }

  /** The common end of every join: the first bot identity and the audit. */
  async #admitted(bot: Bot, instance: BotInstance, askedTtlMs: number, peer: Peer, publicKey: LeafKey, now: number): Promise<IdentityResponse> {
    const ttlMs = Math.min(askedTtlMs, bot.maxTtlMs)
    const cert = await issueBotIdentity(this.#cas.bot, publicKey, { bot: bot.name, botId: bot.id, instanceId: instance.id, generation: 1 }, ttlMs, now)
    // One commit for both (each its own was a group commit and an fsync more per join).
    await this.#auditAll([
      { type: 'join', success: true, bot: bot.name, instance: instance.id, remoteAddr: peer.remoteAddr, fields: { joinMethod: instance.joinMethod, tokenName: instance.tokenName, ...(instance.claims ? { claims: instance.claims } : {}) } },
      this.#issuedEvent('bot', { bot, instance }, peer, cert.serial, ttlMs, { generation: 1 }),
    ])
    this.#log.info({ bot: bot.name, instance: instance.id, joinMethod: instance.joinMethod, remoteAddr: peer.remoteAddr }, 'bot joined')
    return identityResponse(bot.name, instance.id, 1, cert)
  }

  /** Audits a refused join (naming the token and, for platform joins, the first claim that did not match). */
  async #joinFailed(err: unknown, req: JoinRequest, peer: Peer, tokenName: string | undefined): Promise<MemidError> {
    const e = asMemidError(err)
    await this.audit({
      type: 'join.failed', success: false, code: e.code, message: e.message, remoteAddr: peer.remoteAddr,
      fields: { joinMethod: req.joinMethod, ...(tokenName !== undefined ? { tokenName } : {}), ...(e instanceof JoinRefused ? e.auditFields() : {}) },
    })
    return e
  }

  /**
   * Verifies the caller's bot identity: valid now by the service's clock (the TLS layer
   * checked it only at the handshake), and its bot and instance alive. Locks and the
   * generation are decided later, inside the transaction that acts on them (#move).
   */
  async #authenticate(peer: Peer, op: string): Promise<Authenticated> {
    const claims = this.#claimsOf(peer)
    if (claims === undefined) throw new MemidError('ERR_UNAUTHENTICATED', `${op} needs a valid bot identity (client certificate from the bot CA)`)
    try {
      const now = this.#clock.now()
      if (now >= claims.notAfter.getTime()) throw new MemidError('ERR_CERT_EXPIRED', `the bot identity (generation ${claims.generation}) expired at ${claims.notAfter.toISOString()}`)
      if (now < claims.notBefore.getTime()) throw new MemidError('ERR_CERT_EXPIRED', `the bot identity (generation ${claims.generation}) is not valid before ${claims.notBefore.toISOString()}`)
      // One read for both: on PostgreSQL every read is a round trip (the renewal's budget is 3).
      const { bot, instance } = await this.#store.getBotAndInstance(claims.bot, claims.instanceId)
      if (bot === undefined) throw new MemidError('ERR_BOT_NOT_FOUND', `bot "${claims.bot}" was deleted`)
      if (claims.botId !== undefined && claims.botId !== bot.id) throw deletedBot(claims.bot)
      if (instance === undefined || instance.bot !== claims.bot) {
        throw new MemidError('ERR_INSTANCE_NOT_FOUND', `bot instance ${claims.instanceId} does not exist`)
      }
      const a = { claims, bot, instance }
      checkAlive(a, instance)
      return a
    } catch (err) {
      const e = asMemidError(err)
      await this.audit({ type: `${op}.failed`, success: false, code: e.code, message: e.message, bot: claims.bot, instance: claims.instanceId, remoteAddr: peer.remoteAddr, fields: { generation: claims.generation } })
      throw e
    }
  }

  #claimsOf(peer: Peer): BotClaims | undefined {
    if (peer.certificate === undefined) return undefined
    if (!this.#claims.has(peer)) this.#claims.set(peer, readBotClaims(peer.certificate))
    return this.#claims.get(peer)
  }

  /**
   * Decides a request in the store's transaction on the instance: the instance must still
   * be alive and unlocked as of that transaction (a lock or a bot deletion committed while
   * the request was on its way stops it), then `decide` moves the generation. What it
   * grants commits with `audit(granted)`; a copy commits its lock and audit events instead,
   * and is refused. One durable commit either way. `seen` is the instance the request was
   * planned on: the store may decide on it without reading again (one round trip).
   */
  async #move(a: Authenticated, peer: Peer, op: string, decide: (inst: BotInstance) => Decision, audit: (granted: Granted) => NewAuditEvent[] = () => [], seen = a.instance): Promise<Granted> {
    let granted: Granted | undefined
    let stale: string | undefined
    try {
      await this.#store.updateInstance(a.instance.id, (cur, locks): InstanceChange => {
        // The store may decide twice (on `seen`, then on the stored row): only the last run counts.
        granted = undefined
        stale = undefined
        if (cur === undefined) throw new MemidError('ERR_INSTANCE_NOT_FOUND', `bot instance ${a.instance.id} does not exist`)
        checkAlive(a, cur)
        refuseLocked(locks)
        const d = decide(cur)
        if (d.kind === 'copy') {
          stale = d.expected
          return this.#copyDetected(a, peer, op, d.expected)
        }
        granted = d
        return { ...(d.instance !== cur ? { instance: d.instance } : {}), audit: audit(d) }
      }, seen)
    } catch (err) {
      if (err instanceof Replan) throw err
      const e = asMemidError(err)
      await this.audit({ type: `${op}.failed`, success: false, code: e.code, message: e.message, bot: a.bot.name, instance: a.instance.id, remoteAddr: peer.remoteAddr, fields: { generation: a.claims.generation } })
      throw e
    }
    if (stale !== undefined) {
      this.#log.warn({ bot: a.bot.name, instance: a.instance.id, presented: a.claims.generation, expected: stale }, 'stale generation: instance locked')
      throw new MemidError('ERR_STALE_GENERATION', `bot instance ${a.instance.id} presented a stale identity (generation ${a.claims.generation}, expected ${stale}); it is now locked`)
    }
    return granted as Granted
  }

  /**
   * A stale generation means the identity was copied: the lock (which makes every later
   * request of either copy fail) and its audit events, to commit together.
   */
  #copyDetected(a: Authenticated, peer: Peer, op: string, expected: string): InstanceChange {
    const reason = `generation mismatch on ${op}: presented ${a.claims.generation}, expected ${expected} (identity copied?)`
    // The cause makes the lock idempotent: copies racing on several replicas leave one row.
    const lock: Lock = { id: randomUUID(), instance: a.instance.id, reason, cause: 'generation.mismatch', createdAt: new Date(this.#clock.now()).toISOString() }
    return {
      locks: [lock],
      audit: [
        { type: 'generation.mismatch', success: false, code: 'ERR_STALE_GENERATION', message: reason, bot: a.bot.name, instance: a.instance.id, remoteAddr: peer.remoteAddr, fields: { presented: a.claims.generation, expected } },
        { type: 'lock.created', success: true, bot: a.bot.name, instance: a.instance.id, message: reason, fields: { by: 'auth-service', lock: lock.id } },
      ],
    }
  }

  /**
   * Renewal (the table in the README): the confirmed generation moves to a pending next
   * one bound to the new key; the same request again (its answer lost) gets the same
   * pending generation; another key or an older generation is a copy. The certificate is
   * signed before the transaction so that its audit rows commit with the generation move;
   * if the instance moved meanwhile it is signed again.
   */
  async renew(req: RenewRequest, peer: Peer): Promise<IdentityResponse> {
    const a = await this.#authenticate(peer, 'renew')
    const now = this.#clock.now()
    const publicKey = parseAgentKey(req.publicKey, 'ec')
    // spkiDer: the bytes OpenSSL's SPKI export gives (the agent's own, for a key read by p256SpkiFromPem).
    const keyId = createHash('sha256').update(spkiDer(publicKey)).digest('hex')
    const g = a.claims.generation
    const ttlMs = clampTtl(req.ttl, a.bot)
    let seen = a.instance
    for (let attempt = 0; ; attempt++) {
      const plan = decideRenewal(seen, g, keyId)
      const generation = plan.kind === 'renew' ? plan.generation : 0
      const cert = generation > 0 ? await issueBotIdentity(this.#cas.bot, publicKey, { bot: a.bot.name, botId: a.bot.id, instanceId: a.instance.id, generation }, ttlMs, now) : undefined
      const auth: Authentication = { time: new Date(now).toISOString(), joinMethod: 'bot-certificate', remoteAddr: peer.remoteAddr, generation }
      try {
        await this.#move(a, peer, 'renew', (cur) => {
          const d = decideRenewal(cur, g, keyId)
          if (d.kind !== 'renew') return d
          if (d.generation !== generation || cert === undefined) throw new Replan(cur)
          return { ...d, instance: { ...d.instance, latestAuthentications: [...d.instance.latestAuthentications, auth].slice(-INSTANCE_HISTORY) } }
        }, (d) => [
          { type: 'renew', success: true, bot: a.bot.name, instance: a.instance.id, remoteAddr: peer.remoteAddr, fields: { from: g, generation, retry: d.kind === 'renew' && d.retry } },
          this.#issuedEvent('bot', a, peer, (cert as IssuedCert).serial, ttlMs, { generation }),
        ], seen)
      } catch (err) {
        if (err instanceof Replan && attempt < MAX_REPLANS) {
          seen = err.instance
          continue
        }
        if (err instanceof Replan) throw new MemidError('ERR_INTERNAL', 'the bot instance kept changing during the renewal; retry')
        throw err
      }
      return identityResponse(a.bot.name, a.instance.id, generation, cert as IssuedCert)
    }
  }

  async heartbeat(req: HeartbeatRequest, peer: Peer): Promise<{ generation: number }> {
    const a = await this.#authenticate(peer, 'heartbeat')
    const time = new Date(this.#clock.now()).toISOString()
    await this.#move(a, peer, 'heartbeat', (cur) => {
      const d = decideRequest(cur, a.claims.generation)
      return d.kind === 'accept' ? { ...d, instance: { ...d.instance, heartbeats: [...d.instance.heartbeats, { time, ...req }].slice(-INSTANCE_HISTORY) } } : d
    })
    return { generation: a.claims.generation }
  }

  async #issue<Req extends { publicKey: string; ttl?: string | undefined }, Res extends { serial: string }>(
    kind: 'ssh' | 'kube' | 'db', req: Req, peer: Peer, keyType: 'any' | 'ec',
    fn: (ctx: IssueContext, req: Req) => Promise<Res>, describe: (res: Res) => Record<string, unknown>,
  ): Promise<Res> {
    const a = await this.#authenticate(peer, `cert.${kind}`)
    const now = this.#clock.now()
    const { publicKey: _pk, ...asked } = req
    // Signed (or denied) first, so that its audit event commits with the instance's check
    // (generation, locks): one durable commit per certificate, as a renewal's, and no
    // certificate goes out without its audit row. A copy or a lock refuses the request
    // in that commit, and the certificate, never sent, is dropped.
    let issued: { res: Res; ttlMs: number } | undefined
    let denied: MemidError | undefined
    try {
      const roles = await this.#roles(a.bot)
      const ttlMs = Math.min(clampTtl(req.ttl, a.bot), a.claims.notAfter.getTime() - now)
      if (ttlMs < 1000) throw new MemidError('ERR_IDENTITY_EXPIRED', 'the bot identity expires too soon to issue certificates; renew first')
      const ctx: IssueContext = { bot: a.bot, instance: a.instance, roles, cas: this.#cas, store: this.#store, publicKey: parseAgentKey(req.publicKey, keyType), ttlMs, now }
      issued = { res: await fn(ctx, req), ttlMs }
    } catch (err) {
      denied = asMemidError(err)
    }
    await this.#move(a, peer, `cert.${kind}`, (cur) => decideRequest(cur, a.claims.generation), () => [issued !== undefined
      ? this.#issuedEvent(kind, a, peer, issued.res.serial, issued.ttlMs, describe(issued.res))
      : { type: 'cert.denied', success: false, code: denied?.code, message: denied?.message, bot: a.bot.name, instance: a.instance.id, remoteAddr: peer.remoteAddr, fields: { kind, ...asked } }])
    if (issued === undefined) throw denied as MemidError
    return issued.res
  }

  issueSsh(req: SshCertRequest, peer: Peer): Promise<SshCertResponse> {
    return this.#issue('ssh', req, peer, 'any', issueSshCertificate, (r) => ({ principals: r.principals, keyId: r.keyId }))
  }

  issueKube(req: KubeCertRequest, peer: Peer): Promise<KubeCertResponse> {
    return this.#issue('kube', req, peer, 'ec', issueKubeCertificate, (r) => ({ user: r.user, groups: r.groups, cluster: r.upstream.name }))
  }

  issueDb(req: DbCertRequest, peer: Peer): Promise<DbCertResponse> {
    return this.#issue('db', req, peer, 'ec', issueDbCertificate, (r) => ({ user: r.user, service: r.upstream.name }))
  }

  async #roles(bot: Bot): Promise<Role[]> {
    const roles: Role[] = []
    for (const name of bot.roles) {
      const r = await this.#store.getRole(name)
      if (r !== undefined) roles.push(r)
    }
    return roles
  }

  #issuedEvent(kind: string, a: Pick<Authenticated, 'bot' | 'instance'>, peer: Peer, serial: string, ttlMs: number, fields: Record<string, unknown>): NewAuditEvent {
    return { type: 'cert.issued', success: true, bot: a.bot.name, instance: a.instance.id, remoteAddr: peer.remoteAddr, fields: { kind, serial, ttlSeconds: Math.round(ttlMs / 1000), ...fields } }
  }
}

interface IssuedCert { pem: string; serial: string; notBefore: Date; notAfter: Date }

/** The instance must belong to the bot the certificate names, as it is now, and not have been ended with an earlier bot of that name. */
function checkAlive(a: Authenticated, inst: BotInstance): void {
  if (inst.endedAt !== undefined || inst.botId !== a.bot.id) throw deletedBot(a.bot.name)
}

function deletedBot(name: string): MemidError {
  return new MemidError('ERR_BOT_NOT_FOUND', `the bot "${name}" this identity belongs to was deleted`)
}

function refuseLocked(locks: Lock[]): void {
  const l = locks[0]
  if (l !== undefined) throw new MemidError('ERR_LOCKED', `${l.instance ? `bot instance ${l.instance}` : `bot "${l.bot}"`} is locked: ${l.reason}`)
}

function identityResponse(bot: string, instanceId: string, generation: number, cert: IssuedCert): IdentityResponse {
  return {
    certificate: cert.pem, bot, instanceId, generation, serial: cert.serial,
    notBefore: cert.notBefore.toISOString(), notAfter: cert.notAfter.toISOString(),
  }
}

/** Requested TTL, defaulting to 1h; too short is refused. */
function requestedTtl(ttl: string | undefined): number {
  const asked = ttl === undefined ? DEFAULT_TTL_MS : (parseDuration(ttl) as number)
  if (asked < MIN_TTL_MS) throw new MemidError('ERR_BAD_REQUEST', `ttl: must be at least ${MIN_TTL_MS / 1000}s`)
  return asked
}

/** Requested TTL clamped to the bot's max TTL. */
function clampTtl(ttl: string | undefined, bot: Bot): number {
  return Math.min(requestedTtl(ttl), bot.maxTtlMs)
}

/**
 * Parses an agent's SPKI PEM public key; `ec` demands P-256 (TLS client identities). A
 * P-256 key in the form agents send is read without a KeyObject (p256SpkiFromPem).
 */
function parseAgentKey(pem: string, want: 'ec'): LeafKey
function parseAgentKey(pem: string, want: 'any'): KeyObject
function parseAgentKey(pem: string, want: 'ec' | 'any'): LeafKey
function parseAgentKey(pem: string, want: 'ec' | 'any'): LeafKey {
  if (want === 'ec') {
    const spki = p256SpkiFromPem(pem)
    if (spki !== undefined) return spki
  }
  let key: KeyObject
  try {
    key = createPublicKey({ key: pem, format: 'pem' })
  } catch {
    throw new MemidError('ERR_BAD_REQUEST', 'publicKey: must be a PEM SubjectPublicKeyInfo public key')
  }
  const t = key.asymmetricKeyType
  if (want === 'ec' && !(t === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1')) {
    throw new MemidError('ERR_BAD_REQUEST', 'publicKey: must be an ECDSA P-256 key')
  }
  if (want === 'any') {
    const ok = t === 'ed25519' || (t === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') || (t === 'rsa' && (key.asymmetricKeyDetails?.modulusLength ?? 0) >= 2048)
    if (!ok) throw new MemidError('ERR_BAD_REQUEST', 'publicKey: must be Ed25519, ECDSA P-256 or RSA (2048 bits or more)')
  }
  return key
}

function asMemidError(err: unknown): MemidError {
  if (err instanceof MemidError) return err
  return new MemidError('ERR_INTERNAL', 'internal error', { cause: err })
}
