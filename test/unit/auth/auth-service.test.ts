import { afterEach, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { ECDH, X509Certificate, createHash, createPublicKey, generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto'
import { SignJWT, exportJWK } from 'jose'
import { AuthService, type Peer } from '../../../src/auth/auth-service.ts'
import { AdminService } from '../../../src/auth/admin.ts'
import { createResourceCa, loadOrCreateCas, type CaSet } from '../../../src/auth/cas.ts'
import { issueBotIdentity, readBotClaims } from '../../../src/auth/bot-identity.ts'
import { issueLeaf } from '../../../src/pki/x509.ts'
import { SqliteStore } from '../../../src/storage/sqlite.ts'
import type { BotInstance, NewAuditEvent, Store } from '../../../src/storage/store.ts'
import type { IdentityResponse } from '../../../src/api/types.ts'
import { MemidError } from '../../../src/core/errors.ts'
import { createLogger } from '../../../src/core/log.ts'
import { ManualClock } from '../../helpers/manual-clock.ts'
import { newKey } from '../../helpers/identity.ts'

/**
 * The auth service's own checks, driven directly (no TLS, no HTTP) on an in-memory SQLite
 * store and a manual clock: who may join, which identity a request authenticates as, the
 * TTL rules, the key types, and the audit trail each decision leaves. Fast enough to run
 * for every mutant of the `auth-service` mutation group.
 */

interface World {
  store: SqliteStore
  auth: AuthService
  admin: AdminService
  cas: CaSet
  clock: ManualClock
  logLines: string[]
  /** Runs once, just before the next updateInstance transaction. */
  beforeUpdate: (() => Promise<void>) | undefined
  /** When set, appendAudit fails (a full disk) for events of these types. */
  failAudit: Set<string>
}

interface Held {
  res: IdentityResponse
  peer: Peer
}

const opened: SqliteStore[] = []
afterEach(async () => {
  for (const s of opened.splice(0)) await s.close()
})

async function world(): Promise<World> {
  const store = SqliteStore.open(':memory:')
  opened.push(store)
  // Now, on a whole second: certificate times have one-second resolution.
  const clock = new ManualClock(Math.floor(Date.now() / 1000) * 1000)
  const w = { store, clock, logLines: [] as string[], beforeUpdate: undefined, failAudit: new Set<string>() } as unknown as World
  const watched = new Proxy(store, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver)
      if (typeof v !== 'function') return v
      return async (...args: unknown[]) => {
        if (prop === 'updateInstance' && w.beforeUpdate) {
          const hook = w.beforeUpdate
          w.beforeUpdate = undefined
          await hook()
        }
        if (prop === 'appendAudit' && w.failAudit.has((args[0] as NewAuditEvent).type)) throw new Error('disk full')
        if (prop === 'appendAudits' && (args[0] as NewAuditEvent[]).some((ev) => w.failAudit.has(ev.type))) throw new Error('disk full')
        return (v as (...a: unknown[]) => unknown).apply(target, args)
      }
    },
  }) as Store
  w.cas = await loadOrCreateCas(store, 'test')
  const logger = createLogger({ level: 'trace', sink: { write: (l) => void w.logLines.push(l) } })
  w.auth = new AuthService({ store: watched, cas: w.cas, clock, logger })
  w.admin = new AdminService({ store: watched, clock, audit: (ev) => w.auth.audit(ev) })
  return w
}

let bots = 0
/** A bot with a role granting `grant` (ssh login `deploy` unless given); returns its name and a fresh join token. */
async function addBot(w: World, grant: Record<string, unknown> = { logins: ['deploy'] }, extra: Record<string, unknown> = {}): Promise<{ name: string; token: string }> {
  const name = `bot${++bots}`
  await w.admin.addRole({ name, ...grant })
  const { token } = await w.admin.addBot({ name, roles: [name], ...extra })
  return { name, token: token.token }
}

const peerOf = (res: IdentityResponse, remoteAddr = '10.0.0.7'): Peer => ({ remoteAddr, certificate: Buffer.from(new X509Certificate(res.certificate).raw) })

async function join(w: World, token: string, ttl: string | undefined = '1h', publicKey = newKey().publicKey): Promise<Held> {
  const res = await w.auth.join({ joinMethod: 'token', token, publicKey, ...(ttl !== undefined ? { ttl } : {}) }, { remoteAddr: '10.0.0.7' })
  return { res, peer: peerOf(res) }
}

const heartbeat = (w: World, peer: Peer) => w.auth.heartbeat({ hostname: 'h', version: '0', os: 'linux', arch: 'x64', uptimeSeconds: 1, services: [] }, peer)

async function refused(p: Promise<unknown>, code: string, message?: RegExp): Promise<MemidError> {
  let caught: unknown
  try {
    await p
  } catch (err) {
    caught = err
  }
  assert.ok(caught !== undefined, `expected ${code}, but it succeeded`)
  assert.ok(caught instanceof MemidError, String(caught))
  assert.equal(caught.code, code, caught.message)
  if (message) assert.match(caught.message, message)
  return caught
}

async function lastAudit(w: World, type: string) {
  const events = await w.store.queryAudit({ type })
  return events[events.length - 1]
}

/** A bot identity signed by the real bot CA, for claims and validity the test picks. */
async function identity(w: World, claims: { bot: string; botId: string; instanceId: string; generation: number }, ttlMs = 3_600_000, now = w.clock.now()): Promise<Peer> {
  const cert = await issueBotIdentity(w.cas.bot, createPublicKey(newKey().key), claims, ttlMs, now)
  return { remoteAddr: '10.0.0.7', certificate: Buffer.from(new X509Certificate(cert.pem).raw) }
}

function claimsOf(h: Held) {
  return readBotClaims(h.peer.certificate as Buffer)!
}

/** Keys of the types the service refuses or accepts, made once (RSA key generation is slow). */
const KEYS = {
  ed25519: generateKeyPairSync('ed25519').privateKey,
  p256: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
  p384: generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey,
  rsa2048: generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey,
  rsa1024: generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey,
  rsaPss2048: generateKeyPairSync('rsa-pss', { modulusLength: 2048 }).privateKey,
}

const pem = (k: KeyObject) => createPublicKey(k).export({ type: 'spki', format: 'pem' }) as string

describe('auth service: joins with a join token', () => {
  it('a good join answers generation 1 with a certificate for the joining key, the bot and a new instance, and records how it joined', async () => {
    const w = await world()
    const b = await addBot(w)
    const k = newKey()
    const id = await join(w, b.token, '1h', k.publicKey)
    assert.equal(id.res.bot, b.name)
    assert.equal(id.res.generation, 1)
    const cert = new X509Certificate(id.res.certificate)
    assert.ok(cert.publicKey.equals(createPublicKey(k.key)), 'the certificate is for the joining key')
    assert.ok(cert.verify(new X509Certificate(w.cas.bot.certPem).publicKey), 'signed by the bot CA')
    assert.equal(id.res.serial, cert.serialNumber.toLowerCase())
    assert.equal(id.res.notBefore, new Date(cert.validFrom).toISOString())
    assert.equal(id.res.notAfter, new Date(cert.validTo).toISOString())
    const c = claimsOf(id)
    assert.deepEqual([c.bot, c.instanceId, c.generation, c.botId], [b.name, id.res.instanceId, 1, (await w.store.getBot(b.name))!.id])
    const inst = (await w.store.getInstance(id.res.instanceId))!
    assert.equal(inst.bot, b.name)
    assert.equal(inst.tokenName, b.token.split('.')[0])
    assert.equal(inst.joinMethod, 'token')
    assert.deepEqual(inst.initialAuthentication, { time: new Date(w.clock.now()).toISOString(), joinMethod: 'token', remoteAddr: '10.0.0.7', generation: 1 })
    assert.deepEqual([inst.generation, inst.pendingGeneration], [1, null])
    assert.deepEqual(inst.latestAuthentications, [inst.initialAuthentication])
    assert.deepEqual(inst.heartbeats, [])
    const logged = w.logLines.map((l) => JSON.parse(l)).find((l) => l.msg === 'bot joined')
    assert.deepEqual([logged?.bot, logged?.instance, logged?.joinMethod, logged?.remoteAddr], [b.name, id.res.instanceId, 'token', '10.0.0.7'])
  })

  it('a token that is not NAME.SECRET is refused (ERR_TOKEN_INVALID) and the refusal is audited without a token name', async () => {
    const w = await world()
    await refused(join(w, 'no-dot-here'), 'ERR_TOKEN_INVALID', /^the join token is not valid$/)
    const ev = await lastAudit(w, 'join.failed')
    assert.equal(ev?.code, 'ERR_TOKEN_INVALID')
    assert.equal(ev?.success, false)
    assert.equal(ev?.remoteAddr, '10.0.0.7')
    assert.deepEqual(ev?.fields, { joinMethod: 'token' })
  })

  it('a wrong secret for a real token name is refused (ERR_TOKEN_INVALID), and the token stays usable by its owner', async () => {
    const w = await world()
    const b = await addBot(w)
    const [name] = b.token.split('.')
    await refused(join(w, `${name}.${'A'.repeat(43)}`), 'ERR_TOKEN_INVALID', /the join token is not valid/)
    assert.deepEqual((await lastAudit(w, 'join.failed'))?.fields, { joinMethod: 'token', tokenName: name })
    assert.equal((await w.store.listInstances()).length, 0, 'no instance for a refused join')
    await join(w, b.token)
  })

  it('a well-formed token with an unknown name is refused (ERR_TOKEN_INVALID), not as an internal error', async () => {
    const w = await world()
    await refused(join(w, `tok-000000000000.${'A'.repeat(43)}`), 'ERR_TOKEN_INVALID', /^the join token is not valid$/)
    assert.deepEqual((await lastAudit(w, 'join.failed'))?.fields, { joinMethod: 'token', tokenName: 'tok-000000000000' })
  })

  it('a used token is refused (ERR_TOKEN_USED): one token, one instance', async () => {
    const w = await world()
    const b = await addBot(w)
    await join(w, b.token)
    await refused(join(w, b.token), 'ERR_TOKEN_USED', /was already used/)
    assert.equal((await w.store.listInstances()).length, 1)
  })

  it('a token is refused from the instant it expires (ERR_TOKEN_EXPIRED), accepted the millisecond before', async () => {
    const w = await world()
    const b = await addBot(w)
    const t = (await w.store.getToken(b.token.split('.')[0]!))!
    const expires = Date.parse(t.expiresAt!)
    await w.clock.advance(expires - w.clock.now())
    await refused(join(w, b.token), 'ERR_TOKEN_EXPIRED', /expired at/)
    const early = await world()
    const b2 = await addBot(early)
    const t2 = (await early.store.getToken(b2.token.split('.')[0]!))!
    await early.clock.advance(Date.parse(t2.expiresAt!) - early.clock.now() - 1)
    await join(early, b2.token)
  })

  it('a token without an expiry is refused as expired (ERR_TOKEN_EXPIRED), never taken as "valid forever"', async () => {
    const w = await world()
    const b = await addBot(w)
    const { generateToken } = await import('../../../src/auth/tokens.ts')
    const t = generateToken()
    await w.store.createToken({ name: t.name, bot: b.name, joinMethod: 'token', secretHash: t.secretHash, createdAt: new Date(w.clock.now()).toISOString() })
    await refused(join(w, t.value), 'ERR_TOKEN_EXPIRED')
  })

  it('a token whose bot no longer exists is refused (ERR_BOT_NOT_FOUND)', async () => {
    const w = await world()
    const { generateToken } = await import('../../../src/auth/tokens.ts')
    const t = generateToken()
    await w.store.createToken({ name: t.name, bot: 'ghost', joinMethod: 'token', secretHash: t.secretHash, createdAt: new Date(w.clock.now()).toISOString(), expiresAt: new Date(w.clock.now() + 60_000).toISOString() })
    await refused(join(w, t.value), 'ERR_BOT_NOT_FOUND', /"ghost" no longer exists/)
  })

  it('a platform token cannot be used as a secret join token (ERR_TOKEN_INVALID)', async () => {
    const w = await world()
    const b = await addBot(w)
    const { name } = await w.admin.addToken({ bot: b.name, joinMethod: 'oidc', issuer: 'https://issuer.example', audience: 'memid', allow: ['sub=x'], jwks: JSON.stringify({ keys: [await exportJWK(generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey)] }) })
    // A platform token has an empty secret hash: an empty or any secret must not match it.
    await refused(join(w, `${name}.${'A'.repeat(43)}`), 'ERR_TOKEN_INVALID')
  })

  it('a join key that is not ECDSA P-256 is refused (ERR_BAD_REQUEST), and the token is not spent', async () => {
    const w = await world()
    const b = await addBot(w)
    const keys = [
      KEYS.ed25519,
      KEYS.p384,
      KEYS.rsa2048,
    ]
    for (const k of keys) await refused(join(w, b.token, '1h', pem(k)), 'ERR_BAD_REQUEST', /publicKey: must be an ECDSA P-256 key/)
    await refused(join(w, b.token, '1h', 'not a key'), 'ERR_BAD_REQUEST', /publicKey: must be a PEM SubjectPublicKeyInfo public key/)
    await join(w, b.token)
  })

  it('a locked bot cannot join with a fresh token (ERR_LOCKED), and the refusal names the lock', async () => {
    const w = await world()
    const b = await addBot(w)
    await w.admin.addLock({ bot: b.name, reason: 'stolen laptop' })
    await refused(join(w, b.token), 'ERR_LOCKED', new RegExp(`bot "${b.name}" is locked: stolen laptop`))
    assert.equal((await lastAudit(w, 'join.failed'))?.code, 'ERR_LOCKED')
    assert.equal((await w.store.queryAudit({ type: 'join' })).length, 0, 'no join audited')
  })

  // A lock stops requests; a refused request leaves nothing behind. An instance for the
  // refused join would show in `memid get bot_instance` as a bot that joined, to the admin
  // who locked the bot because it may be compromised.
  it('a join refused because its bot is locked writes nothing: no bot instance, the token unused; without the lock the same token joins', async () => {
    const w = await world()
    const b = await addBot(w)
    const lock = await w.admin.addLock({ bot: b.name, reason: 'incident 42' })
    await refused(join(w, b.token), 'ERR_LOCKED', /incident 42/)
    assert.deepEqual(await w.store.listInstances(b.name), [], 'no instance for the refused join')
    assert.equal((await w.store.getToken(b.token.split('.')[0] as string))?.usedAt, undefined, 'the token is not used')
    await w.admin.removeLock(lock.id)
    const id = await join(w, b.token)
    assert.equal(id.res.generation, 1)
  })

  it("a wrong secret for a locked bot's token is ERR_TOKEN_INVALID: the lock and its reason are told only to a valid token", async () => {
    const w = await world()
    const b = await addBot(w)
    await w.admin.addLock({ bot: b.name, reason: 'incident 42' })
    const name = b.token.split('.')[0] as string
    const err = await refused(join(w, `${name}.${'A'.repeat(43)}`), 'ERR_TOKEN_INVALID')
    assert.doesNotMatch(err.message, /incident 42|locked/)
  })
})

describe('auth service: TTLs', () => {
  it('a TTL below 5s is refused (ERR_BAD_REQUEST); exactly 5s is issued', async () => {
    const w = await world()
    const b = await addBot(w)
    await refused(join(w, b.token, '4s'), 'ERR_BAD_REQUEST', /ttl: must be at least 5s/)
    const { token } = await w.admin.addToken({ bot: b.name }) as { token: string }
    const id = await join(w, token, '5s')
    assert.equal(Date.parse(id.res.notAfter) - w.clock.now(), 5_000)
  })

  it('a join refused for its TTL does not spend the token: the runner fixes its config and joins with the same token', async () => {
    const w = await world()
    const b = await addBot(w)
    await refused(join(w, b.token, '4s'), 'ERR_BAD_REQUEST', /ttl: must be at least 5s/)
    assert.equal((await w.store.listInstances(b.name)).length, 0, 'no instance created')
    const id = await join(w, b.token, '1h')
    assert.equal(id.res.generation, 1)
  })

  it('no TTL asked: the identity lasts 1h, the default, below the bot\'s max TTL', async () => {
    const w = await world()
    const b = await addBot(w)
    const id = await join(w, b.token, undefined)
    assert.equal(Date.parse(id.res.notAfter) - w.clock.now(), 3_600_000)
  })

  it('the bot\'s max TTL caps joins and renewals, and the audit records the TTL issued', async () => {
    const w = await world()
    const b = await addBot(w, { logins: ['deploy'] }, { maxTtl: '10m' })
    const id = await join(w, b.token, '2h')
    assert.equal(Date.parse(id.res.notAfter) - w.clock.now(), 600_000)
    const issued = await lastAudit(w, 'cert.issued')
    assert.deepEqual(issued?.fields, { kind: 'bot', serial: id.res.serial, ttlSeconds: 600, generation: 1 })
    const next = await w.auth.renew({ publicKey: newKey().publicKey, ttl: '2h' }, id.peer)
    assert.equal(Date.parse(next.notAfter) - w.clock.now(), 600_000)
  })

  it('a service certificate ends with the identity: the rest of the identity\'s life, not the TTL asked', async () => {
    const w = await world()
    const b = await addBot(w)
    const id = await join(w, b.token, '10m')
    await w.clock.advance(4 * 60_000)
    const ssh = await w.auth.issueSsh({ publicKey: newKey().publicKey, ttl: '1h' }, id.peer)
    assert.equal(Date.parse(ssh.notAfter), Date.parse(id.res.notAfter))
    assert.equal((await lastAudit(w, 'cert.issued'))?.fields.ttlSeconds, 360)
  })

  it('an identity with less than 1s left gets no service certificate (ERR_IDENTITY_EXPIRED), with 1s left it does', async () => {
    const w = await world()
    const b = await addBot(w)
    const id = await join(w, b.token, '10s')
    await w.clock.advance(Date.parse(id.res.notAfter) - w.clock.now() - 1_000)
    await w.auth.issueSsh({ publicKey: newKey().publicKey }, id.peer)
    await w.clock.advance(1)
    await refused(w.auth.issueSsh({ publicKey: newKey().publicKey }, id.peer), 'ERR_IDENTITY_EXPIRED', /renew first/)
    assert.equal((await lastAudit(w, 'cert.denied'))?.code, 'ERR_IDENTITY_EXPIRED')
  })
})

describe('auth service: which identity a request authenticates as', () => {
  it('no client certificate: every identity-bound request is refused (ERR_UNAUTHENTICATED)', async () => {
    const w = await world()
    const anon: Peer = { remoteAddr: '10.0.0.9' }
    const k = newKey().publicKey
    await refused(w.auth.renew({ publicKey: k }, anon), 'ERR_UNAUTHENTICATED', /renew needs a valid bot identity/)
    await refused(heartbeat(w, anon), 'ERR_UNAUTHENTICATED', /heartbeat needs/)
    await refused(w.auth.issueSsh({ publicKey: k }, anon), 'ERR_UNAUTHENTICATED', /cert\.ssh needs/)
    await refused(w.auth.issueKube({ publicKey: k, cluster: 'dev' }, anon), 'ERR_UNAUTHENTICATED', /cert\.kube needs/)
    await refused(w.auth.issueDb({ publicKey: k, service: 'orders', username: 'app' }, anon), 'ERR_UNAUTHENTICATED', /cert\.db needs/)
  })

  it('a verified certificate that carries no bot claims is refused (ERR_UNAUTHENTICATED)', async () => {
    const w = await world()
    const leaf = await issueLeaf({ ca: w.cas.bot, publicKey: createPublicKey(newKey().key), commonName: 'ci', organizations: ['memid-bot'], ttlMs: 3_600_000, usage: 'client', now: w.clock.now() })
    await refused(heartbeat(w, { remoteAddr: '10.0.0.7', certificate: Buffer.from(new X509Certificate(leaf.pem).raw) }), 'ERR_UNAUTHENTICATED')
  })

  it('an identity is refused from the second it expires (ERR_CERT_EXPIRED), and the refusal is audited with its generation', async () => {
    const w = await world()
    const b = await addBot(w)
    const id = await join(w, b.token, '1m')
    await w.clock.advance(Date.parse(id.res.notAfter) - w.clock.now() - 1)
    await heartbeat(w, id.peer)
    await w.clock.advance(1)
    await refused(heartbeat(w, id.peer), 'ERR_CERT_EXPIRED', /generation 1\) expired at/)
    const ev = await lastAudit(w, 'heartbeat.failed')
    assert.deepEqual([ev?.code, ev?.bot, ev?.instance, ev?.remoteAddr, ev?.fields.generation, ev?.success], ['ERR_CERT_EXPIRED', b.name, id.res.instanceId, '10.0.0.7', 1, false])
  })

  it('an identity is refused before its notBefore (ERR_CERT_EXPIRED) and accepted from that instant', async () => {
    const w = await world()
    const b = await addBot(w)
    const id = await join(w, b.token)
    const notBefore = Date.parse(id.res.notBefore)
    await w.clock.advance(notBefore - 1 - w.clock.now())
    await refused(heartbeat(w, id.peer), 'ERR_CERT_EXPIRED', /is not valid before/)
    await w.clock.advance(1)
    await heartbeat(w, id.peer)
  })

  it('a lock on the whole bot refuses its instances\' requests (ERR_LOCKED), naming the bot and the reason', async () => {
    const w = await world()
    const b = await addBot(w)
    const id = await join(w, b.token)
    await w.admin.addLock({ bot: b.name, reason: 'leaked runner' })
    await refused(heartbeat(w, id.peer), 'ERR_LOCKED', new RegExp(`^bot "${b.name}" is locked: leaked runner$`))
    await refused(w.auth.renew({ publicKey: newKey().publicKey }, id.peer), 'ERR_LOCKED')
  })

  it('an instance of an earlier bot of the same name is refused (ERR_BOT_NOT_FOUND), even if it was never marked ended', async () => {
    const w = await world()
    const b = await addBot(w)
    const id = await join(w, b.token)
    await w.admin.removeBot(b.name)
    await w.admin.addBot({ name: b.name, roles: [b.name] })
    // A row that escaped the deletion's end mark (a restore of an old backup): it still names the old bot id.
    await w.store.updateInstance(id.res.instanceId, (cur) => {
      const { endedAt: _e, ...alive } = cur!
      return { instance: alive }
    })
    // An identity from before bot ids in certificates: only the instance row can tell the bots apart.
    const leaf = await issueLeaf({
      ca: w.cas.bot, publicKey: createPublicKey(newKey().key), commonName: b.name, organizations: ['memid-bot'],
      uris: [`memid://bot/${b.name}?instance=${id.res.instanceId}&generation=1`], ttlMs: 3_600_000, usage: 'client', now: w.clock.now(),
    })
    await refused(heartbeat(w, { remoteAddr: '10.0.0.7', certificate: Buffer.from(new X509Certificate(leaf.pem).raw) }), 'ERR_BOT_NOT_FOUND')
  })

  it('a bot-CA identity naming an instance that does not exist is refused (ERR_INSTANCE_NOT_FOUND)', async () => {
    const w = await world()
    const b = await addBot(w)
    const id = await join(w, b.token)
    const c = claimsOf(id)
    const forged = await identity(w, { bot: b.name, botId: c.botId!, instanceId: randomUUID(), generation: 1 })
    await refused(heartbeat(w, forged), 'ERR_INSTANCE_NOT_FOUND', /does not exist/)
  })

  it('an identity of one bot naming another bot\'s instance is refused (ERR_INSTANCE_NOT_FOUND)', async () => {
    const w = await world()
    const a = await addBot(w)
    const b = await addBot(w)
    const ida = await join(w, a.token)
    const idb = await join(w, b.token)
    const forged = await identity(w, { bot: a.name, botId: claimsOf(ida).botId!, instanceId: idb.res.instanceId, generation: 1 })
    await refused(heartbeat(w, forged), 'ERR_INSTANCE_NOT_FOUND')
    await heartbeat(w, ida.peer)
  })

  it('a deleted bot\'s identity is refused (ERR_BOT_NOT_FOUND), also after a new bot of the same name joined', async () => {
    const w = await world()
    const b = await addBot(w)
    const old = await join(w, b.token)
    await w.admin.removeBot(b.name)
    await refused(heartbeat(w, old.peer), 'ERR_BOT_NOT_FOUND', /was deleted/)
    const { token } = await w.admin.addBot({ name: b.name, roles: [b.name] })
    const fresh = await join(w, token.token)
    await refused(heartbeat(w, old.peer), 'ERR_BOT_NOT_FOUND', new RegExp(`the bot "${b.name}" this identity belongs to was deleted`))
    // The old identity carrying the new instance: the bot id in the certificate still tells them apart.
    const mixed = await identity(w, { bot: b.name, botId: claimsOf(old).botId!, instanceId: fresh.res.instanceId, generation: 1 })
    await refused(heartbeat(w, mixed), 'ERR_BOT_NOT_FOUND')
    await heartbeat(w, fresh.peer)
  })

  it('an identity from before bot ids (no id in its SAN) is accepted for its live instance, and refused once that bot is deleted', async () => {
    const w = await world()
    const b = await addBot(w)
    const id = await join(w, b.token)
    const leaf = await issueLeaf({
      ca: w.cas.bot, publicKey: createPublicKey(newKey().key), commonName: b.name, organizations: ['memid-bot'],
      uris: [`memid://bot/${b.name}?instance=${id.res.instanceId}&generation=1`], ttlMs: 3_600_000, usage: 'client', now: w.clock.now(),
    })
    const legacy: Peer = { remoteAddr: '10.0.0.7', certificate: Buffer.from(new X509Certificate(leaf.pem).raw) }
    assert.equal(readBotClaims(legacy.certificate as Buffer)?.botId, undefined)
    await heartbeat(w, legacy)
    await w.admin.removeBot(b.name)
    await refused(heartbeat(w, legacy), 'ERR_BOT_NOT_FOUND')
  })
})

describe('auth service: renewals and heartbeats', () => {
  it('a renewal is signed for the new key, names the next generation and records the renewal on the instance', async () => {
    const w = await world()
    const b = await addBot(w)
    const id = await join(w, b.token)
    await w.clock.advance(30_000)
    const k = newKey()
    const next = await w.auth.renew({ publicKey: k.publicKey, ttl: '30m' }, id.peer)
    assert.equal(next.generation, 2)
    assert.equal(next.bot, b.name)
    assert.equal(next.instanceId, id.res.instanceId)
    const cert = new X509Certificate(next.certificate)
    assert.ok(cert.publicKey.equals(createPublicKey(k.key)))
    assert.equal(Date.parse(next.notAfter) - w.clock.now(), 1_800_000)
    assert.equal(next.serial, cert.serialNumber.toLowerCase())
    const c = readBotClaims(Buffer.from(cert.raw))!
    assert.deepEqual([c.bot, c.botId, c.instanceId, c.generation], [b.name, claimsOf(id).botId, id.res.instanceId, 2])
    const inst = (await w.store.getInstance(id.res.instanceId))!
    assert.deepEqual(inst.latestAuthentications.at(-1), { time: new Date(w.clock.now()).toISOString(), joinMethod: 'bot-certificate', remoteAddr: '10.0.0.7', generation: 2 })
    assert.equal(inst.latestAuthentications.length, 2)
    const renewed = await lastAudit(w, 'renew')
    assert.deepEqual([renewed?.bot, renewed?.instance, renewed?.remoteAddr, renewed?.success, renewed?.fields], [b.name, id.res.instanceId, '10.0.0.7', true, { from: 1, generation: 2, retry: false }])
    const again = await w.auth.renew({ publicKey: k.publicKey }, id.peer)
    assert.equal(again.generation, 2)
    assert.deepEqual((await lastAudit(w, 'renew'))?.fields, { from: 1, generation: 2, retry: true })
  })

  it('a renewal key that is not ECDSA P-256 is refused (ERR_BAD_REQUEST) and moves nothing', async () => {
    const w = await world()
    const b = await addBot(w)
    const id = await join(w, b.token)
    await refused(w.auth.renew({ publicKey: pem(KEYS.ed25519) }, id.peer), 'ERR_BAD_REQUEST')
    assert.equal((await w.store.getInstance(id.res.instanceId))!.pendingGeneration, null)
  })

  it('a renewal or join key whose P-256 point is off the curve, or not the SPKI form agents send, is refused or read as OpenSSL reads it', async () => {
    const w = await world()
    const b = await addBot(w)
    const id = await join(w, b.token)
    const der = createPublicKey(KEYS.p256).export({ type: 'spki', format: 'der' })
    const asPem = (d: Buffer) => `-----BEGIN PUBLIC KEY-----\n${d.toString('base64').replace(/.{64}/g, '$&\n')}\n-----END PUBLIC KEY-----\n`
    const offCurve = Buffer.from(der)
    offCurve[offCurve.length - 1] = (offCurve[offCurve.length - 1] as number) ^ 1
    await refused(w.auth.renew({ publicKey: asPem(offCurve) }, id.peer), 'ERR_BAD_REQUEST', /publicKey: must be a PEM SubjectPublicKeyInfo public key/)
    const next = await addBot(w)
    await refused(join(w, next.token, '1h', asPem(offCurve)), 'ERR_BAD_REQUEST', /publicKey/)
    assert.equal((await w.store.getInstance(id.res.instanceId))!.pendingGeneration, null)
    // A compressed point is a valid P-256 SPKI too: read by OpenSSL, certified with the key as OpenSSL exports it.
    const compressed = createPublicKey({ key: Buffer.concat([Buffer.from('3039301306072a8648ce3d020106082a8648ce3d030107032200', 'hex'), ECDH.convertKey(der.subarray(26), 'prime256v1', undefined, undefined, 'compressed') as Buffer]), format: 'der', type: 'spki' })
    const res = await w.auth.renew({ publicKey: compressed.export({ type: 'spki', format: 'pem' }) as string }, id.peer)
    assert.ok(new X509Certificate(res.certificate).publicKey.equals(createPublicKey(KEYS.p256)))
  })

  it('heartbeats of one instance committed together each land in its history, none overwriting another', async () => {
    const w = await world()
    const b = await addBot(w)
    const id = await join(w, b.token)
    await heartbeat(w, id.peer)
    const beat = (hostname: string) => w.auth.heartbeat({ hostname, version: '0', os: 'linux', arch: 'x64', uptimeSeconds: 1, services: [] }, id.peer)
    // All read the same row before any writes it (one group commit): each must decide on the row as the one before left it.
    await Promise.all(['a', 'b', 'c', 'd'].map(beat))
    assert.deepEqual((await w.store.getInstance(id.res.instanceId))!.heartbeats.map((h) => h.hostname).sort(), ['a', 'b', 'c', 'd', 'h'])
  })

  it('the instance keeps only the last 10 authentications and heartbeats', async () => {
    const w = await world()
    const b = await addBot(w)
    let id = await join(w, b.token)
    for (let i = 0; i < 12; i++) {
      id = { res: await w.auth.renew({ publicKey: newKey().publicKey }, id.peer), peer: id.peer }
      id.peer = peerOf(id.res)
      assert.deepEqual(await heartbeat(w, id.peer), { generation: id.res.generation })
    }
    const inst = (await w.store.getInstance(id.res.instanceId))!
    assert.deepEqual(inst.latestAuthentications.map((a) => a.generation), [4, 5, 6, 7, 8, 9, 10, 11, 12, 13])
    assert.equal(inst.heartbeats.length, 10)
    assert.equal(inst.heartbeats.at(-1)?.hostname, 'h')
  })

  it('a copy is refused with ERR_STALE_GENERATION naming what was expected, locked, audited and logged', async () => {
    const w = await world()
    const b = await addBot(w)
    const id = await join(w, b.token)
    await w.auth.renew({ publicKey: newKey().publicKey }, id.peer)
    await refused(w.auth.renew({ publicKey: newKey().publicKey }, id.peer), 'ERR_STALE_GENERATION',
      new RegExp(`bot instance ${id.res.instanceId} presented a stale identity \\(generation 1, expected 2, or 1 with the key of the renewal in flight\\); it is now locked`))
    const [lock] = await w.store.listLocks()
    assert.equal(lock?.instance, id.res.instanceId)
    assert.equal(lock?.cause, 'generation.mismatch')
    assert.equal(lock?.createdAt, new Date(w.clock.now()).toISOString())
    assert.match(lock?.reason ?? '', /generation mismatch on renew: presented 1, expected 2/)
    const mismatch = await lastAudit(w, 'generation.mismatch')
    assert.deepEqual([mismatch?.bot, mismatch?.instance, mismatch?.remoteAddr, mismatch?.success, mismatch?.code], [b.name, id.res.instanceId, '10.0.0.7', false, 'ERR_STALE_GENERATION'])
    assert.deepEqual(mismatch?.fields, { presented: 1, expected: '2, or 1 with the key of the renewal in flight' })
    const created = await lastAudit(w, 'lock.created')
    assert.deepEqual([created?.bot, created?.instance, created?.success, created?.fields], [b.name, id.res.instanceId, true, { by: 'auth-service', lock: lock?.id }])
    const warn = w.logLines.map((l) => JSON.parse(l)).find((l) => l.msg === 'stale generation: instance locked')
    assert.deepEqual([warn?.bot, warn?.instance, warn?.presented, warn?.expected], [b.name, id.res.instanceId, 1, '2, or 1 with the key of the renewal in flight'])
    // The failure audit of the locked request that follows names the operation.
    await refused(w.auth.issueSsh({ publicKey: newKey().publicKey }, id.peer), 'ERR_LOCKED', new RegExp(`bot instance ${id.res.instanceId} is locked`))
    const failed = await lastAudit(w, 'cert.ssh.failed')
    assert.deepEqual([failed?.code, failed?.bot, failed?.instance, failed?.fields.generation, failed?.success], ['ERR_LOCKED', b.name, id.res.instanceId, 1, false])
  })

  it('an instance whose row moved after the renewal was signed is signed again for the generation the transaction decides', async () => {
    const w = await world()
    const b = await addBot(w)
    const id = await join(w, b.token)
    const k = newKey()
    // Between signing (planned on generation 1 → 2) and the transaction, the row moves to
    // a pending generation 3 bound to the same key: the answer must be a certificate for 3.
    w.beforeUpdate = async () => {
      await w.store.updateInstance(id.res.instanceId, (cur) => ({ instance: { ...cur!, pendingGeneration: 3, pendingRetries: 0, pendingKey: keyIdOf(k.publicKey) } }))
    }
    const res = await w.auth.renew({ publicKey: k.publicKey }, id.peer)
    assert.equal(res.generation, 3)
    assert.equal(readBotClaims(Buffer.from(new X509Certificate(res.certificate).raw))?.generation, 3)
  })

  it('a renewal whose instance keeps moving gives up after 3 re-signings (ERR_INTERNAL) and moves nothing', async () => {
    const w = await world()
    const b = await addBot(w)
    const id = await join(w, b.token)
    const k = newKey()
    let moves = 0
    const keyId = keyIdOf(k.publicKey)
    const move = async () => {
      moves++
      await w.store.updateInstance(id.res.instanceId, (cur) => ({ instance: { ...cur!, pendingGeneration: 2 + moves, pendingRetries: 0, pendingKey: keyId } }))
      if (moves < 10) w.beforeUpdate = move
    }
    w.beforeUpdate = move
    await refused(w.auth.renew({ publicKey: k.publicKey }, id.peer), 'ERR_INTERNAL', /kept changing during the renewal/)
    assert.equal(moves, 4, 'the first try and three re-signings')
    w.beforeUpdate = undefined
    assert.equal((await w.store.queryAudit({ type: 'renew' })).length, 0)
  })

  it('a store that decides first on the instance as read, then on the stored row (PostgreSQL), is followed by its last decision', async () => {
    const w = await world()
    const b = await addBot(w)
    const id = await join(w, b.token)
    const real = w.store.updateInstance.bind(w.store)
    // The first decision sees a snapshot the request looks like a copy on (a later
    // generation than it presents); the stored row, decided on next, accepts it.
    const twice: Store['updateInstance'] = async (iid, decide, seen) => {
      if (seen !== undefined) {
        try {
          decide({ ...seen, generation: seen.generation + 5, pendingGeneration: null }, [])
        } catch { /* a refusal on the snapshot: the store decides again on the row */ }
      }
      return real(iid, decide)
    }
    w.store.updateInstance = twice
    const next = await w.auth.renew({ publicKey: newKey().publicKey }, id.peer)
    assert.equal(next.generation, 2)
    assert.deepEqual(await heartbeat(w, id.peer), { generation: 1 })
    assert.equal((await w.store.listLocks()).length, 0)
  })

  it('an instance that vanishes inside the transaction is refused (ERR_INSTANCE_NOT_FOUND) and audited', async () => {
    const w = await world()
    const b = await addBot(w)
    const id = await join(w, b.token)
    const real = w.store.updateInstance.bind(w.store)
    // A store whose transaction finds no row (a PostgreSQL replica that lost it): the service must not invent one.
    w.store.updateInstance = ((iid: string, fn: (cur: BotInstance | undefined, locks: never[]) => unknown) => real(iid, (_cur, locks) => fn(undefined, locks as never[]) as never)) as typeof w.store.updateInstance
    await refused(heartbeat(w, id.peer), 'ERR_INSTANCE_NOT_FOUND', new RegExp(`bot instance ${id.res.instanceId} does not exist`))
    assert.equal((await lastAudit(w, 'heartbeat.failed'))?.code, 'ERR_INSTANCE_NOT_FOUND')
  })
})

describe('auth service: service certificates', () => {
  async function withResources(w: World) {
    for (const kind of ['kube', 'db'] as const) {
      const uri = kind === 'kube' ? 'https://dev.example:6443' : 'postgres://orders.example:5432'
      const name = kind === 'kube' ? 'dev' : 'orders'
      await w.store.putResource({ kind, name, uri, createdAt: '' }, await createResourceCa(kind, name))
    }
  }

  it('a database removed and added again signs its next certificates with its new CA, not the one held before', async () => {
    const w = await world()
    await withResources(w)
    const b = await addBot(w, { databases: ['orders'], dbUsers: ['app'], dbNames: ['*'] })
    const id = await join(w, b.token)
    const issue = async () => new X509Certificate((await w.auth.issueDb({ publicKey: newKey().publicKey, service: 'orders', username: 'app' }, id.peer)).certificate)
    const caOf = async () => new X509Certificate((await w.store.getResourceCa('db', 'orders'))!.publicMaterial)
    const oldCa = await caOf()
    assert.ok((await issue()).checkIssued(oldCa))
    assert.ok((await issue()).verify(oldCa.publicKey), 'the held authority signs the second one')
    await w.store.deleteResource('db', 'orders')
    await w.store.putResource({ kind: 'db', name: 'orders', uri: 'postgres://orders.example:5432', createdAt: '' }, await createResourceCa('db', 'orders'))
    const newCa = await caOf()
    const next = await issue()
    assert.ok(next.checkIssued(newCa) && next.verify(newCa.publicKey), 'signed by the new CA')
    assert.ok(!next.verify(oldCa.publicKey), 'not by the old one')
  })

  it('kube and db certificates are issued for P-256 keys and audited with what they grant', async () => {
    const w = await world()
    await withResources(w)
    const b = await addBot(w, { kubeClusters: ['dev'], kubeUsers: ['dev-user'], kubeGroups: ['devs'], databases: ['orders'], dbUsers: ['app'], dbNames: ['*'] })
    const id = await join(w, b.token)
    const kube = await w.auth.issueKube({ publicKey: newKey().publicKey, cluster: 'dev', ttl: '10m' }, id.peer)
    assert.deepEqual((await lastAudit(w, 'cert.issued'))?.fields, { kind: 'kube', serial: kube.serial, ttlSeconds: 600, user: 'dev-user', groups: ['devs'], cluster: 'dev' })
    const db = await w.auth.issueDb({ publicKey: newKey().publicKey, service: 'orders', username: 'app', ttl: '10m' }, id.peer)
    const issued = await lastAudit(w, 'cert.issued')
    assert.deepEqual(issued?.fields, { kind: 'db', serial: db.serial, ttlSeconds: 600, user: 'app', service: 'orders' })
    assert.deepEqual([issued?.bot, issued?.instance, issued?.remoteAddr, issued?.success], [b.name, id.res.instanceId, '10.0.0.7', true])
    await refused(w.auth.issueKube({ publicKey: pem(KEYS.ed25519), cluster: 'dev' }, id.peer), 'ERR_BAD_REQUEST', /P-256/)
    await refused(w.auth.issueDb({ publicKey: pem(KEYS.ed25519), service: 'orders', username: 'app' }, id.peer), 'ERR_BAD_REQUEST', /P-256/)
  })

  it('ssh certificates take Ed25519, P-256 and RSA of 2048 bits or more; RSA 1024, P-384 and RSA-PSS are refused (ERR_BAD_REQUEST)', async () => {
    const w = await world()
    const b = await addBot(w)
    const id = await join(w, b.token)
    for (const k of [KEYS.ed25519, KEYS.p256, KEYS.rsa2048]) {
      await w.auth.issueSsh({ publicKey: pem(k) }, id.peer)
    }
    for (const k of [KEYS.rsa1024, KEYS.p384, KEYS.rsaPss2048]) {
      await refused(w.auth.issueSsh({ publicKey: pem(k) }, id.peer), 'ERR_BAD_REQUEST', /must be Ed25519, ECDSA P-256 or RSA \(2048 bits or more\)/)
    }
    const denied = await lastAudit(w, 'cert.denied')
    assert.deepEqual([denied?.code, denied?.bot, denied?.instance, denied?.remoteAddr, denied?.success, denied?.fields], ['ERR_BAD_REQUEST', b.name, id.res.instanceId, '10.0.0.7', false, { kind: 'ssh' }])
  })

  it('a role the bot names but that no longer exists grants nothing, and the roles that exist still apply', async () => {
    const w = await world()
    await w.admin.addRole({ name: 'deployer', logins: ['deploy'] })
    // The bot's role list names a role that is gone (a store edited by hand, an older schema).
    await w.store.createBot({ id: randomUUID(), name: 'two', roles: ['gone', 'deployer'], maxTtlMs: 3_600_000, createdAt: new Date(w.clock.now()).toISOString() })
    const { token } = await w.admin.addToken({ bot: 'two' }) as { token: string }
    const id = await join(w, token)
    const ssh = await w.auth.issueSsh({ publicKey: newKey().publicKey }, id.peer)
    assert.deepEqual(ssh.principals, ['deploy'])
  })
})

describe('auth service: platform joins and the public token info', () => {
  async function platformToken(w: World, botName: string) {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256' }
    const t = await w.admin.addToken({ bot: botName, joinMethod: 'oidc', issuer: 'https://issuer.example', audience: 'memid-test', allow: ['sub=deploy'], jwks: JSON.stringify({ keys: [jwk] }) })
    const mint = (sub: string) => new SignJWT({ sub }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer('https://issuer.example').setAudience('memid-test')
      .setIssuedAt(Math.floor(w.clock.now() / 1000)).setExpirationTime(Math.floor(w.clock.now() / 1000) + 300).setJti(randomUUID()).sign(privateKey)
    return { name: t.name, mint }
  }

  it('the token info of a platform token names its join method and audience; a secret token or unknown name is ERR_NOT_FOUND', async () => {
    const w = await world()
    const b = await addBot(w)
    const p = await platformToken(w, b.name)
    assert.deepEqual(await w.auth.joinTokenInfo(p.name), { name: p.name, joinMethod: 'oidc', audience: 'memid-test' })
    await refused(w.auth.joinTokenInfo(b.token.split('.')[0]!), 'ERR_NOT_FOUND', /is not a platform join token/)
    await refused(w.auth.joinTokenInfo('nope'), 'ERR_NOT_FOUND')
  })

  it('a platform join with a good JWT gets generation 1 for its key, with the claims recorded and audited', async () => {
    const w = await world()
    const b = await addBot(w)
    const p = await platformToken(w, b.name)
    const k = newKey()
    const res = await w.auth.join({ joinMethod: 'oidc', tokenName: p.name, idToken: await p.mint('deploy'), publicKey: k.publicKey, ttl: '10m' }, { remoteAddr: '10.0.0.8' })
    assert.equal(res.generation, 1)
    assert.ok(new X509Certificate(res.certificate).publicKey.equals(createPublicKey(k.key)))
    assert.equal(Date.parse(res.notAfter) - w.clock.now(), 600_000)
    const ev = await lastAudit(w, 'join')
    assert.equal(ev?.fields.joinMethod, 'oidc')
    assert.equal(ev?.fields.tokenName, p.name)
    assert.equal((ev?.fields.claims as Record<string, unknown>)?.sub, 'deploy')
    assert.equal(ev?.remoteAddr, '10.0.0.8')
  })

  it('a platform join refused for its TTL does not use up the JWT (no replay record, no instance): the same JWT then joins', async () => {
    const w = await world()
    const b = await addBot(w)
    const p = await platformToken(w, b.name)
    const idToken = await p.mint('deploy')
    await refused(w.auth.join({ joinMethod: 'oidc', tokenName: p.name, idToken, publicKey: newKey().publicKey, ttl: '1s' }, { remoteAddr: '10.0.0.8' }), 'ERR_BAD_REQUEST', /ttl: must be at least 5s/)
    assert.equal((await w.store.listInstances(b.name)).length, 0, 'no instance created')
    const res = await w.auth.join({ joinMethod: 'oidc', tokenName: p.name, idToken, publicKey: newKey().publicKey, ttl: '10m' }, { remoteAddr: '10.0.0.8' })
    assert.equal(res.generation, 1)
  })

  it('a platform join whose claims match no rule is refused and audited with the token and the claim', async () => {
    const w = await world()
    const b = await addBot(w)
    const p = await platformToken(w, b.name)
    await refused(w.auth.join({ joinMethod: 'oidc', tokenName: p.name, idToken: await p.mint('attacker'), publicKey: newKey().publicKey }, { remoteAddr: '10.0.0.8' }), 'ERR_JOIN_RULE_MISMATCH')
    const ev = await lastAudit(w, 'join.failed')
    assert.equal(ev?.code, 'ERR_JOIN_RULE_MISMATCH')
    assert.equal(ev?.fields.tokenName, p.name)
    assert.equal(ev?.fields.joinMethod, 'oidc')
    assert.equal(ev?.fields.claim, 'sub')
  })

  it('a platform join whose issuer cannot be reached for its keys is refused (ERR_JOIN_ISSUER_UNREACHABLE) and audited', async () => {
    const w = await world()
    const b = await addBot(w)
    // No JWKS in the token: the keys come from the issuer's discovery document, over HTTPS (nothing listens on port 1).
    const t = await w.admin.addToken({ bot: b.name, joinMethod: 'oidc', issuer: 'https://127.0.0.1:1', audience: 'memid-test', allow: ['sub=deploy'] })
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const jwt = await new SignJWT({ sub: 'deploy' }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer('https://127.0.0.1:1').setAudience('memid-test')
      .setIssuedAt(Math.floor(w.clock.now() / 1000)).setExpirationTime(Math.floor(w.clock.now() / 1000) + 300).sign(privateKey)
    await refused(w.auth.join({ joinMethod: 'oidc', tokenName: t.name, idToken: jwt, publicKey: newKey().publicKey }, { remoteAddr: '10.0.0.8' }), 'ERR_JOIN_ISSUER_UNREACHABLE')
    assert.equal((await lastAudit(w, 'join.failed'))?.code, 'ERR_JOIN_ISSUER_UNREACHABLE')
  })

  it('a platform join with a bad key or for a locked bot is refused, and creates no identity', async () => {
    const w = await world()
    const b = await addBot(w)
    const p = await platformToken(w, b.name)
    await refused(w.auth.join({ joinMethod: 'oidc', tokenName: p.name, idToken: await p.mint('deploy'), publicKey: pem(KEYS.ed25519) }, { remoteAddr: '10.0.0.8' }), 'ERR_BAD_REQUEST')
    await w.admin.addLock({ bot: b.name, reason: 'compromised runner' })
    await refused(w.auth.join({ joinMethod: 'oidc', tokenName: p.name, idToken: await p.mint('deploy'), publicKey: newKey().publicKey }, { remoteAddr: '10.0.0.8' }), 'ERR_LOCKED', /compromised runner/)
    assert.equal((await w.store.queryAudit({ type: 'join' })).length, 0)
  })

  it('a platform join refused because its bot is locked leaves no instance and does not use up the JWT: without the lock the same JWT joins', async () => {
    const w = await world()
    const b = await addBot(w)
    const p = await platformToken(w, b.name)
    const idToken = await p.mint('deploy')
    const lock = await w.admin.addLock({ bot: b.name, reason: 'incident 42' })
    await refused(w.auth.join({ joinMethod: 'oidc', tokenName: p.name, idToken, publicKey: newKey().publicKey }, { remoteAddr: '10.0.0.8' }), 'ERR_LOCKED', /incident 42/)
    assert.deepEqual(await w.store.listInstances(b.name), [], 'no instance for the refused join')
    await w.admin.removeLock(lock.id)
    const res = await w.auth.join({ joinMethod: 'oidc', tokenName: p.name, idToken, publicKey: newKey().publicKey }, { remoteAddr: '10.0.0.8' })
    assert.equal(res.generation, 1)
  })
})

describe('auth service: the audit trail', () => {
  it('an audit event that cannot be written is logged as an error naming its type, and the request still answers', async () => {
    const w = await world()
    const b = await addBot(w)
    w.failAudit.add('join')
    await join(w, b.token)
    const line = w.logLines.map((l) => JSON.parse(l)).find((l) => l.msg === 'cannot write audit event')
    assert.equal(line?.level, 50)
    assert.equal(line?.type, 'join')
    assert.equal(line?.err, 'disk full')
  })

  it('a failure that is not a MemidError is answered as ERR_INTERNAL, without its message', async () => {
    const w = await world()
    const b = await addBot(w)
    const real = w.store.getToken.bind(w.store)
    w.store.getToken = async () => {
      throw new Error('SQLITE_CORRUPT: secret detail')
    }
    const err = await refused(join(w, b.token), 'ERR_INTERNAL', /^internal error$/)
    assert.equal((err.cause as Error).message, 'SQLITE_CORRUPT: secret detail')
    w.store.getToken = real
  })

  it('cas() hands out the public CA material and the cluster name', async () => {
    const w = await world()
    assert.deepEqual(w.auth.cas(), { clusterName: w.cas.clusterName, tls: w.cas.tls.certPem, sshHost: w.cas.sshHost.publicLine, sshUser: w.cas.sshUser.publicLine })
  })
})

/** The key id the service binds a pending generation to: sha256 of the key's SPKI DER, hex. */
function keyIdOf(publicKeyPem: string): string {
  return createHash('sha256').update(createPublicKey(publicKeyPem).export({ type: 'spki', format: 'der' })).digest('hex')
}
