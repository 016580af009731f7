import { MemidError } from '../core/errors.ts'
import {
  INSTANCE_HISTORY, MAX_PAGE, RESOURCE_CA_KIND, type Page, type PageRequest,
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

/** A row of `resource_cas`, whose `kind` is the resource's (`kube`, `db`). */
export function resourceCaFromRow(r: Row): StoredCa {
  return { ...caFromRow(r), kind: RESOURCE_CA_KIND[str(r.kind) as ResourceKind] }
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
  return { id: str(r.id), name: str(r.name), roles: JSON.parse(str(r.roles)) as string[], maxTtlMs: Number(r.max_ttl_ms), createdAt: str(r.created_at) }
}

/**
 * `expires_at` is NOT NULL in the first schema; a token that never expires stores this
 * instead, which sorts after every real time so a sweep of expired rows never takes it.
 */
export const NO_EXPIRY = '9999-12-31T23:59:59.999Z'

/** The token's columns in insertion order: name, bot, join_method, secret_hash, created_at, expires_at, platform. */
export function tokenColumns(t: JoinToken): (string | null)[] {
  return [t.name, t.bot, t.joinMethod, t.secretHash, t.createdAt, t.expiresAt ?? NO_EXPIRY, t.platform ? JSON.stringify(t.platform) : null]
}

export function tokenFromRow(r: Row): JoinToken {
  const t: JoinToken = {
    name: str(r.name), bot: str(r.bot), joinMethod: str(r.join_method) as JoinToken['joinMethod'], secretHash: str(r.secret_hash),
    createdAt: str(r.created_at),
  }
  if (str(r.expires_at) !== NO_EXPIRY) t.expiresAt = str(r.expires_at)
  const platform = optStr(r.platform)
  if (platform !== undefined) {
    t.platform = JSON.parse(platform) as NonNullable<JoinToken['platform']>
    t.joinCount = Number(r.join_count ?? 0)
  }
  const usedAt = optStr(r.used_at)
  const usedBy = optStr(r.used_by_instance)
  if (usedAt !== undefined) t.usedAt = usedAt
  if (usedBy !== undefined) t.usedByInstance = usedBy
  return t
}

/**
 * A bot and an instance in one statement (a request's authentication reads both): the
 * bot's columns prefixed `b_`, then the instance's. Each side is NULL when it does not
 * exist. `$1` is the bot's name, `$2` the instance's id, in that order.
 */
export const BOT_AND_INSTANCE_SQL = 'SELECT b.id AS b_id, b.name AS b_name, b.roles AS b_roles, b.max_ttl_ms AS b_max_ttl_ms, b.created_at AS b_created_at, i.*'
  + ' FROM (SELECT 1) AS one LEFT JOIN bots b ON b.name = $1 LEFT JOIN bot_instances i ON i.id = $2'

/** The bot and the instance of a BOT_AND_INSTANCE_SQL row, each when it exists; `instanceOf` reads the instance's columns. */
export function botAndInstanceFromRow(r: Row, instanceOf: (r: Row) => BotInstance = instanceFromRow): { bot?: Bot; instance?: BotInstance } {
  const out: { bot?: Bot; instance?: BotInstance } = {}
  if (r.b_name !== null) out.bot = botFromRow({ id: r.b_id, name: r.b_name, roles: r.b_roles, max_ttl_ms: r.b_max_ttl_ms, created_at: r.b_created_at })
  if (r.id !== null) out.instance = instanceOf(r)
  return out
}

/** The `data` column of an instance, with its histories capped to INSTANCE_HISTORY. */
export function instanceData(i: BotInstance): string {
  return JSON.stringify({
    joinMethod: i.joinMethod,
    tokenName: i.tokenName,
    initialAuthentication: i.initialAuthentication,
    latestAuthentications: i.latestAuthentications.slice(-INSTANCE_HISTORY),
    heartbeats: i.heartbeats.slice(-INSTANCE_HISTORY),
    ...(i.claims !== undefined ? { claims: i.claims } : {}),
  })
}

export function instanceFromRow(r: Row): BotInstance {
  const data = JSON.parse(str(r.data)) as Pick<BotInstance, 'joinMethod' | 'tokenName' | 'initialAuthentication' | 'latestAuthentications' | 'heartbeats' | 'claims'>
  const i: BotInstance = {
    id: str(r.id),
    bot: str(r.bot),
    botId: optStr(r.bot_id) ?? '',
    createdAt: str(r.created_at),
    generation: Number(r.generation),
    pendingGeneration: r.pending_generation === null ? null : Number(r.pending_generation),
    pendingRetries: Number(r.pending_retries),
    ...data,
  }
  const pendingKey = optStr(r.pending_key)
  const endedAt = optStr(r.ended_at)
  if (pendingKey !== undefined) i.pendingKey = pendingKey
  if (endedAt !== undefined) i.endedAt = endedAt
  return i
}

/** Whether the columns of row `r` (all but `data`) are what `i` holds, read as instanceFromRow reads them. */
export function instanceRowIs(i: BotInstance, r: Row): boolean {
  return i.id === str(r.id) && i.bot === str(r.bot) && i.botId === (optStr(r.bot_id) ?? '') && i.createdAt === str(r.created_at) &&
    i.generation === Number(r.generation) && i.pendingGeneration === (r.pending_generation === null ? null : Number(r.pending_generation)) &&
    i.pendingRetries === Number(r.pending_retries) && i.pendingKey === optStr(r.pending_key) && i.endedAt === optStr(r.ended_at)
}

/**
 * `JSON.stringify(instanceFromRow(r))` without parsing the stored record: the columns as
 * JSON, then the `data` object's members copied as text. An admin listing streams 100,000
 * instances; parsing and re-serializing each record is most of its CPU and garbage (and
 * the garbage collector's pauses stop the API's event loop too). A member of `data` that
 * repeats a column's name wins, as in instanceFromRow's spread.
 */
export function instanceJsonFromRow(r: Row): string {
  const data = str(r.data).trim()
  if (!data.startsWith('{') || !data.endsWith('}')) return JSON.stringify(instanceFromRow(r))
  const head = JSON.stringify({
    id: str(r.id), bot: str(r.bot), botId: optStr(r.bot_id) ?? '', createdAt: str(r.created_at), generation: Number(r.generation),
    pendingGeneration: r.pending_generation === null ? null : Number(r.pending_generation), pendingRetries: Number(r.pending_retries),
  })
  const members = data.slice(1, -1).trim()
  const pendingKey = optStr(r.pending_key)
  const endedAt = optStr(r.ended_at)
  const tail = (pendingKey !== undefined ? `,"pendingKey":${JSON.stringify(pendingKey)}` : '') + (endedAt !== undefined ? `,"endedAt":${JSON.stringify(endedAt)}` : '')
  return `${head.slice(0, -1)}${members === '' ? '' : `,${members}`}${tail}}`
}

export function lockFromRow(r: Row): Lock {
  const l: Lock = { id: str(r.id), reason: str(r.reason), createdAt: str(r.created_at) }
  const bot = optStr(r.bot)
  const instance = optStr(r.instance)
  const cause = optStr(r.cause)
  if (bot !== undefined) l.bot = bot
  if (instance !== undefined) l.instance = instance
  if (cause !== undefined) l.cause = cause
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
export function auditQuery(q: AuditQuery & { beforeId?: number }, placeholder: (n: number) => string): { sql: string; args: (string | number)[] } {
  const where: string[] = []
  const args: (string | number)[] = []
  const add = (cond: string, v: string | number) => {
    args.push(v)
    where.push(`${cond} ${placeholder(args.length)}`)
  }
  if (q.since !== undefined) add('time >=', q.since)
  if (q.type !== undefined) add('type =', q.type)
  if (q.bot !== undefined) add('bot =', q.bot)
  if (q.beforeId !== undefined) add('id <', q.beforeId)
  const limit = Math.min(Math.max(Math.trunc(q.limit ?? 1000) || 1, 1), MAX_PAGE + 1)
  return { sql: `SELECT * FROM audit_events ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ${limit}`, args }
}

/** The tables that page by (created_at, key), newest first. */
export type PagedTable = 'bots' | 'join_tokens' | 'bot_instances'
const PAGE_KEY: Record<PagedTable, string> = { bots: 'name', join_tokens: 'name', bot_instances: 'id' }

function badCursor(): MemidError {
  return new MemidError('ERR_BAD_REQUEST', 'after: not a cursor from this listing (use the "next" value a listing printed)')
}

/** The cursor after `row`: opaque to callers, (created_at, key) or the audit id inside. */
function cursorOf(position: (string | number)[]): string {
  return Buffer.from(JSON.stringify(position)).toString('base64url')
}

function readCursor(after: string, shape: 'keyset' | 'id'): (string | number)[] {
  let v: unknown
  try {
    v = JSON.parse(Buffer.from(after, 'base64url').toString('utf8'))
  } catch {
    throw badCursor()
  }
  if (!Array.isArray(v)) throw badCursor()
  if (shape === 'id' && !(v.length === 1 && Number.isSafeInteger(v[0]))) throw badCursor()
  if (shape === 'keyset' && !(v.length === 2 && v.every((x) => typeof x === 'string' && x.length <= 512))) throw badCursor()
  return v as (string | number)[]
}

function pageLimit(limit: number): number {
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_PAGE) throw new MemidError('ERR_BAD_REQUEST', `limit: must be an integer from 1 to ${MAX_PAGE}`)
  return limit
}

/**
 * One newest-first page of a table as keyset SQL for every backend: it asks for one row
 * more than the limit, which tells `pageFromRows` whether a next page exists.
 */
export function pageQuery(table: PagedTable, req: PageRequest & { bot?: string }, placeholder: (n: number) => string): { sql: string; args: string[] } {
  const key = PAGE_KEY[table]
  const limit = pageLimit(req.limit)
  const where: string[] = []
  const args: string[] = []
  if (req.bot !== undefined) {
    args.push(req.bot)
    where.push(`bot = ${placeholder(args.length)}`)
  }
  if (req.after !== undefined) {
    const [at, k] = readCursor(req.after, 'keyset') as [string, string]
    args.push(at, k)
    where.push(`(created_at, ${key}) < (${placeholder(args.length - 1)}, ${placeholder(args.length)})`)
  }
  return {
    sql: `SELECT * FROM ${table} ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at DESC, ${key} DESC LIMIT ${limit + 1}`,
    args,
  }
}

/** Trims the extra row `pageQuery` asked for into `next`. */
export function pageFromRows<T>(table: PagedTable, rows: Row[], limit: number, map: (r: Row) => T): Page<T> {
  const more = rows.length > limit
  const kept = more ? rows.slice(0, limit) : rows
  const last = kept.at(-1)
  const page: Page<T> = { items: kept.map(map) }
  if (more && last !== undefined) page.next = cursorOf([str(last.created_at), str(last[PAGE_KEY[table]])])
  return page
}

/** `pageQuery` for the audit log: keyset on the id, with `queryAudit`'s filters. */
export function auditPageQuery(req: PageRequest & Omit<AuditQuery, 'limit'>, placeholder: (n: number) => string): { sql: string; args: (string | number)[] } {
  const limit = pageLimit(req.limit)
  const q: AuditQuery & { beforeId?: number } = { limit: limit + 1 }
  if (req.since !== undefined) q.since = req.since
  if (req.type !== undefined) q.type = req.type
  if (req.bot !== undefined) q.bot = req.bot
  if (req.after !== undefined) q.beforeId = readCursor(req.after, 'id')[0] as number
  return auditQuery(q, placeholder)
}

export function auditPageFromRows(rows: Row[], limit: number): Page<AuditEvent> {
  const more = rows.length > limit
  const items = (more ? rows.slice(0, limit) : rows).map(auditFromRow)
  const last = items.at(-1)
  return more && last !== undefined ? { items, next: cursorOf([last.id]) } : { items }
}
