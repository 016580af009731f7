import {
  INSTANCE_HISTORY,
  type AuditEvent, type AuditQuery, type Bot, type BotInstance, type CaKind, type JoinToken, type Lock, type Resource, type ResourceKind, type Role,
  type StoredCa,
} from './store.ts'

/**
 * Rows of the shared schema (migrations.ts) to entities and back, for every backend.
 * Values are read through String()/Number() because drivers differ: PostgreSQL returns
 * BIGINT as a string, SQLite returns numbers.
 */
export type Row = Record<string, unknown>

const str = (v: unknown): string => String(v)
const optStr = (v: unknown): string | undefined => (v === null || v === undefined ? undefined : String(v))

/**
 * Wipes the driver's buffer once copied, so the copy returned is the only one in our
 * hands. That is all it does: it does not make the key vanish from the process.
 * SQLite keeps the page in its cache (and the key is in the database file by design);
 * pg receives bytea as hex text, a JS string that cannot be wiped and stays on the heap
 * until the GC reuses its memory (and sends it as one on insert). The auth service's CA
 * keys are protected by the store's access rights and by the process itself refusing a
 * debugger and core dumps (core/harden.ts), not by this wipe.
 */
export function caFromRow(r: Row): StoredCa {
  const raw = r.private_key as Uint8Array
  const privateKeyDer = Buffer.from(raw)
  raw.fill(0)
  return {
    kind: str(r.kind) as CaKind,
    privateKeyDer,
    publicMaterial: str(r.public_material),
    createdAt: str(r.created_at),
  }
}

/** The `spec` column of a role: every field but the name and creation time, as JSON. */
export function roleSpec(role: Role): string {
  const { name: _name, createdAt: _createdAt, ...spec } = role
  return JSON.stringify(spec)
}

export function roleFromRow(r: Row): Role {
  return { name: str(r.name), ...(JSON.parse(str(r.spec)) as Omit<Role, 'name' | 'createdAt'>), createdAt: str(r.created_at) }
}

export function botFromRow(r: Row): Bot {
  return { name: str(r.name), roles: JSON.parse(str(r.roles)) as string[], maxTtlMs: Number(r.max_ttl_ms), createdAt: str(r.created_at) }
}

export function tokenFromRow(r: Row): JoinToken {
  const t: JoinToken = {
    name: str(r.name), bot: str(r.bot), joinMethod: 'token', secretHash: str(r.secret_hash),
    createdAt: str(r.created_at), expiresAt: str(r.expires_at),
  }
  const usedAt = optStr(r.used_at)
  const usedBy = optStr(r.used_by_instance)
  if (usedAt !== undefined) t.usedAt = usedAt
  if (usedBy !== undefined) t.usedByInstance = usedBy
  return t
}

/** The `data` column of an instance, with its histories capped to INSTANCE_HISTORY. */
export function instanceData(i: BotInstance): string {
  return JSON.stringify({
    joinMethod: i.joinMethod,
    tokenName: i.tokenName,
    initialAuthentication: i.initialAuthentication,
    latestAuthentications: i.latestAuthentications.slice(-INSTANCE_HISTORY),
    heartbeats: i.heartbeats.slice(-INSTANCE_HISTORY),
  })
}

export function instanceFromRow(r: Row): BotInstance {
  const data = JSON.parse(str(r.data)) as Pick<BotInstance, 'joinMethod' | 'tokenName' | 'initialAuthentication' | 'latestAuthentications' | 'heartbeats'>
  return {
    id: str(r.id),
    bot: str(r.bot),
    createdAt: str(r.created_at),
    generation: Number(r.generation),
    pendingGeneration: r.pending_generation === null ? null : Number(r.pending_generation),
    pendingRetries: Number(r.pending_retries),
    ...data,
  }
}

export function lockFromRow(r: Row): Lock {
  const l: Lock = { id: str(r.id), reason: str(r.reason), createdAt: str(r.created_at) }
  const bot = optStr(r.bot)
  const instance = optStr(r.instance)
  if (bot !== undefined) l.bot = bot
  if (instance !== undefined) l.instance = instance
  return l
}

export function resourceFromRow(r: Row): Resource {
  const res: Resource = { kind: str(r.kind) as ResourceKind, name: str(r.name), uri: str(r.uri), createdAt: str(r.created_at) }
  const ca = optStr(r.ca_pem)
  if (ca !== undefined) res.caPem = ca
  return res
}

/** How duplicate-name errors read, the same for every backend. */
export function resourceLabel(res: Resource): string {
  return `${res.kind === 'kube' ? 'kube cluster' : 'database'} "${res.name}"`
}

export function auditFromRow(r: Row): AuditEvent {
  const ev: AuditEvent = {
    id: Number(r.id), time: str(r.time), type: str(r.type), success: Number(r.success) === 1,
    fields: JSON.parse(str(r.fields)) as Record<string, unknown>,
  }
  for (const [k, col] of [['code', 'code'], ['message', 'message'], ['bot', 'bot'], ['instance', 'instance'], ['remoteAddr', 'remote_addr']] as const) {
    const v = optStr(r[col])
    if (v !== undefined) ev[k] = v
  }
  return ev
}

/**
 * The audit query for every backend, newest first (callers reverse it): `placeholder(n)`
 * spells the n-th parameter (`?` or `$n`). The limit is clamped to 1..10000 (default
 * 1000) and inlined: it is a number we computed, never caller text.
 */
export function auditQuery(q: AuditQuery, placeholder: (n: number) => string): { sql: string; args: string[] } {
  const where: string[] = []
  const args: string[] = []
  const add = (cond: string, v: string) => {
    args.push(v)
    where.push(`${cond} ${placeholder(args.length)}`)
  }
  if (q.since !== undefined) add('time >=', q.since)
  if (q.type !== undefined) add('type =', q.type)
  if (q.bot !== undefined) add('bot =', q.bot)
  const limit = Math.min(Math.max(Math.trunc(q.limit ?? 1000) || 1, 1), 10_000)
  return { sql: `SELECT * FROM audit_events ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ${limit}`, args }
}
