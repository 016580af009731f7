import pg from 'pg'
import type { PoolClient, PoolConfig } from 'pg'
import { MemidError } from '../core/errors.ts'
import { hostPort } from '../core/listener.ts'
import { POSTGRES, SCHEMA_MIGRATIONS_DDL, checkSchemaVersion, migrations } from './migrations.ts'
import {
  BOT_AND_INSTANCE_SQL, auditFromRow, auditPageFromRows, auditPageQuery, auditQuery, botAndInstanceFromRow, botFromRow, pageFromRows, pageQuery, caFromRow, instanceData, instanceFromRow, instanceJsonFromRow, lockFromRow,
  resourceCaFromRow, resourceFromRow, resourceLabel, roleFromRow, roleSpec, tokenColumns, tokenFromRow, type Row,
} from './rows.ts'
import type {
  AuditEvent, AuditQuery, Bot, BotInstance, CaKind, InstanceChange, JoinToken, Lock, NewAuditEvent, Page, PageRequest, ReplayKey, Resource, ResourceKind,
  Role, Store, StoredCa,
} from './store.ts'

const MIGRATIONS = migrations(POSTGRES)

/** pg_advisory_lock key held while migrating, so auth servers starting together migrate once. ('memid' in ASCII.) */
const MIGRATION_LOCK = 0x6d656d6964

/** Node and TLS error codes that mean the server could not be reached or trusted. */
const UNREACHABLE_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOENT', 'EACCES', 'EPIPE',
])

type Arg = string | number | null | Buffer

export interface PostgresStoreOptions {
  /** Most connections the pool opens (default 10). */
  max?: number
  /** How long to wait for a connection before ERR_STORAGE (default 10 s). */
  connectTimeoutMs?: number
}

/**
 * The PostgreSQL backend on node-postgres, for several auth servers sharing one database.
 * Compound writes run as transactions on one pooled connection, locking the rows they
 * read (`SELECT … FOR UPDATE`), so two servers consuming one token cannot both win.
 */
export class PostgresStore implements Store {
  readonly #pool: pg.Pool
  /** `host:port` or the socket path: what error messages name instead of the URL. */
  readonly #target: string
  readonly #secrets: string[]
  #closed = false

  private constructor(pool: pg.Pool, target: string, secrets: string[]) {
    this.#pool = pool
    this.#target = target
    this.#secrets = secrets
  }

  /**
   * Connects to `postgres://user:pass@host:port/db` (or `postgresql://`) and applies
   * pending migrations. node-postgres reads the URL: `?sslmode=…`, `?sslrootcert=FILE`,
   * `?host=/dir` for a unix socket, and PGPASSWORD / ~/.pgpass when the URL has no
   * password. The password never appears in an error message.
   */
  static async open(url: string, opts: PostgresStoreOptions = {}): Promise<PostgresStore> {
    const secrets = urlSecrets(url)
    let probe: pg.Client
    try {
      // The Client resolves the URL, the PG* environment and the defaults exactly as the
      // pool will; nothing connects here.
      probe = new pg.Client({ connectionString: url })
    } catch (err) {
      throw new MemidError('ERR_CONFIG', `storage: ${redact(firstLine(err), secrets)}`)
    }
    if (typeof probe.password === 'string' && probe.password !== '') secrets.push(probe.password)
    const target = probe.host.startsWith('/') ? `${probe.host}/.s.PGSQL.${probe.port}` : hostPort(probe.host, probe.port)
    const config: PoolConfig = {
      connectionString: url,
      application_name: 'memid',
      max: opts.max ?? 10,
      connectionTimeoutMillis: opts.connectTimeoutMs ?? 10_000,
      idleTimeoutMillis: 30_000,
      keepAlive: true,
      // A frozen auth server must not keep rows locked for the others.
      idle_in_transaction_session_timeout: 30_000,
    }
    const pool = new pg.Pool(config)
    // An idle pooled connection that the server closes emits 'error' on the pool; without
    // a listener that would end the process. The next query simply opens a new one.
    pool.on('error', () => undefined)
    const store = new PostgresStore(pool, target, secrets)
    try {
      await store.#migrate()
    } catch (err) {
      await store.close()
      throw err
    }
    return store
  }

  async #migrate(): Promise<void> {
    // The session-level lock is released by closing the session (discard), whatever happens.
    await this.#withClient(async (c) => {
      await c.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK])
      await c.query(SCHEMA_MIGRATIONS_DDL)
      const { rows } = await c.query<Row>('SELECT MAX(version) AS v FROM schema_migrations')
      const current = Number(rows[0]?.v ?? 0)
      checkSchemaVersion(current, MIGRATIONS.length)
      for (let v = current + 1; v <= MIGRATIONS.length; v++) {
        await inTransaction(c, async () => {
          await c.query(MIGRATIONS[v - 1] as string)
          await c.query('INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)', [v, new Date().toISOString()])
        })
      }
    }, true)
  }

  /**
   * Lends one pooled connection to `fn`; a connection that failed mid-use, or that the
   * caller asks to `discard`, is closed rather than reused.
   */
  async #withClient<T>(fn: (c: PoolClient) => Promise<T>, discard = false): Promise<T> {
    let c: PoolClient
    try {
      c = await this.#pool.connect()
    } catch (err) {
      throw this.#unreachable(err)
    }
    let broken: Error | undefined
    // While lent out the pool does not listen for this connection's errors.
    const onError = (err: Error) => { broken = err }
    c.on('error', onError)
    try {
      return await fn(c)
    } catch (err) {
      if (isConnectionLoss(err)) {
        broken = err as Error
        throw this.#unreachable(err)
      }
      throw err
    } finally {
      c.removeListener('error', onError)
      c.release(discard || broken)
    }
  }

  #unreachable(err: unknown): MemidError {
    return new MemidError('ERR_STORAGE', `cannot reach the store at ${this.#target}: ${redact(firstLine(err), this.#secrets)}`)
  }

  #tx<T>(fn: (c: PoolClient) => Promise<T>): Promise<T> {
    return this.#withClient((c) => inTransaction(c, () => fn(c)))
  }

  async #all(sql: string, ...args: Arg[]): Promise<Row[]> {
    return this.#withClient(async (c) => (await c.query<Row>(sql, args)).rows)
  }

  async #get(sql: string, ...args: Arg[]): Promise<Row | undefined> {
    return (await this.#all(sql, ...args))[0]
  }

  async #run(sql: string, ...args: Arg[]): Promise<number> {
    return this.#withClient(async (c) => (await c.query(sql, args)).rowCount ?? 0)
  }

  async #insert(what: string, sql: string, ...args: Arg[]): Promise<void> {
    await this.#withClient((c) => insertOnce(c, what, sql, args))
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#pool.end()
  }

  async getCa(kind: CaKind): Promise<StoredCa | undefined> {
    const r = await this.#get('SELECT * FROM cas WHERE kind = $1', kind)
    return r && caFromRow(r)
  }

  async putCaIfAbsent(ca: StoredCa): Promise<StoredCa> {
    return this.#tx(async (c) => {
      // ON CONFLICT waits for a concurrent insert of the same kind to commit, then does nothing.
      const ins = await c.query('INSERT INTO cas (kind, private_key, public_material, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (kind) DO NOTHING',
        [ca.kind, ca.privateKeyDer, ca.publicMaterial, ca.createdAt])
      if (ins.rowCount === 1) return ca
      const { rows } = await c.query<Row>('SELECT * FROM cas WHERE kind = $1 FOR UPDATE', [ca.kind])
      return caFromRow(rows[0] as Row)
    })
  }

  async createRole(role: Role): Promise<void> {
    await this.#insert(`role "${role.name}"`, 'INSERT INTO roles (name, spec, created_at) VALUES ($1, $2, $3)', role.name, roleSpec(role), role.createdAt)
  }

  async getRole(name: string): Promise<Role | undefined> {
    const r = await this.#get('SELECT * FROM roles WHERE name = $1', name)
    return r && roleFromRow(r)
  }

  // COLLATE "C": byte order, as SQLite sorts, whatever the database's locale.
  async listRoles(): Promise<Role[]> {
    return (await this.#all('SELECT * FROM roles ORDER BY name COLLATE "C"')).map(roleFromRow)
  }

  async deleteRole(name: string): Promise<boolean> {
    return (await this.#run('DELETE FROM roles WHERE name = $1', name)) > 0
  }

  async createBot(bot: Bot): Promise<void> {
    await this.#insert(`bot "${bot.name}"`, 'INSERT INTO bots (id, name, roles, max_ttl_ms, created_at) VALUES ($1, $2, $3, $4, $5)',
      bot.id, bot.name, JSON.stringify(bot.roles), bot.maxTtlMs, bot.createdAt)
  }

  async getBot(name: string): Promise<Bot | undefined> {
    const r = await this.#get('SELECT * FROM bots WHERE name = $1', name)
    return r && botFromRow(r)
  }

  async listBots(): Promise<Bot[]> {
    return (await this.#all('SELECT * FROM bots ORDER BY name COLLATE "C"')).map(botFromRow)
  }

  async deleteBot(name: string, endedAt: string): Promise<{ endedInstances: number } | undefined> {
    return this.#tx(async (c) => {
      if (((await c.query('DELETE FROM bots WHERE name = $1', [name])).rowCount ?? 0) === 0) return undefined
      // A token being consumed right now is row-locked: this waits, then skips it as used.
      await c.query('DELETE FROM join_tokens WHERE bot = $1 AND used_at IS NULL', [name])
      // A statement of its own, after that wait: it sees the instance such a join created.
      // Instances in a renewal's transaction are row-locked: this waits for it to commit.
      const ended = await c.query('UPDATE bot_instances SET ended_at = $1 WHERE bot = $2 AND ended_at IS NULL', [endedAt, name])
      return { endedInstances: ended.rowCount ?? 0 }
    })
  }

  async createToken(t: JoinToken): Promise<void> {
    await this.#insert(`token "${t.name}"`,
      'INSERT INTO join_tokens (name, bot, join_method, secret_hash, created_at, expires_at, platform) VALUES ($1, $2, $3, $4, $5, $6, $7)',
      ...tokenColumns(t))
  }

  async getToken(name: string): Promise<JoinToken | undefined> {
    const r = await this.#get('SELECT * FROM join_tokens WHERE name = $1', name)
    return r && tokenFromRow(r)
  }

  async listTokens(): Promise<JoinToken[]> {
    return (await this.#all('SELECT * FROM join_tokens ORDER BY created_at, name COLLATE "C"')).map(tokenFromRow)
  }

  async deleteToken(name: string): Promise<boolean> {
    return (await this.#run('DELETE FROM join_tokens WHERE name = $1', name)) > 0
  }

  async consumeToken(name: string, decide: (token: JoinToken | undefined) => BotInstance, seen?: JoinToken): Promise<BotInstance> {
    if (seen !== undefined && seen.name === name && seen.usedAt === undefined && seen.platform === undefined) {
      const done = await this.#consumeIfUnchanged(seen, decide)
      if (done !== undefined) return done
    }
    return this.#tx(async (c) => {
      // The row lock makes a concurrent consumer wait and then read the token as used.
      const { rows } = await c.query<Row>('SELECT * FROM join_tokens WHERE name = $1 FOR UPDATE', [name])
      const instance = decide(rows[0] && tokenFromRow(rows[0]))
      await c.query('UPDATE join_tokens SET used_at = $1, used_by_instance = $2 WHERE name = $3 AND used_at IS NULL',
        [instance.createdAt, instance.id, name])
      await writeInstance(c, instance, true)
      return instance
    })
  }

  /**
   * The one-round-trip join: `decide` on the token the caller read, then one statement that
   * marks it used and creates the instance only if the token row is still exactly `seen`
   * and unused. A concurrent consumer's UPDATE waits for the first to commit, then finds
   * the token used and changes nothing (and the caller runs the transaction, which refuses).
   */
  async #consumeIfUnchanged(seen: JoinToken, decide: (token: JoinToken | undefined) => BotInstance): Promise<BotInstance | undefined> {
    let i: BotInstance
    try {
      i = decide(seen)
    } catch {
      // Refused on what may be a stale read: the transaction decides on the stored row.
      return undefined
    }
    const [name, bot, joinMethod, secretHash, , expiresAt] = tokenColumns(seen)
    const { rows } = await this.#withClient((c) => c.query<Row>(
      'WITH t AS (UPDATE join_tokens SET used_at = $1, used_by_instance = $2 WHERE name = $3 AND used_at IS NULL AND platform IS NULL'
      + ' AND bot = $4 AND join_method = $5 AND secret_hash = $6 AND expires_at = $7 RETURNING 1),'
      + ' i AS (INSERT INTO bot_instances (id, bot, bot_id, generation, pending_generation, pending_retries, pending_key, ended_at, created_at, data)'
      + ' SELECT $2, $8::text, $9::text, $10::int, $11::int, $12::int, $13::text, $14::text, $15::text, $16::text WHERE EXISTS (SELECT 1 FROM t))'
      + ' SELECT count(*)::int AS n FROM t',
      [i.createdAt, i.id, name ?? null, bot ?? null, joinMethod ?? null, secretHash ?? null, expiresAt ?? null,
        i.bot, i.botId, i.generation, i.pendingGeneration, i.pendingRetries, i.pendingKey ?? null, i.endedAt ?? null, i.createdAt, instanceData(i)]))
    return Number(rows[0]?.n) > 0 ? i : undefined
  }

  async joinWithPlatformToken(name: string, replay: ReplayKey, decide: (token: JoinToken | undefined) => BotInstance): Promise<BotInstance> {
    return this.#tx(async (c) => {
      await c.query('DELETE FROM join_replays WHERE expires_at < $1', [replay.now])
      // FOR SHARE: a concurrent tokens rm waits for this join, then the join has happened before it.
      const { rows } = await c.query<Row>('SELECT * FROM join_tokens WHERE name = $1 FOR SHARE', [name])
      const instance = decide(rows[0] && tokenFromRow(rows[0]))
      // The primary key decides between replicas: a second insert of the key waits for the first
      // transaction and then finds the conflict.
      const ins = await c.query('INSERT INTO join_replays (key, token, expires_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING', [replay.key, name, replay.expiresAt])
      if ((ins.rowCount ?? 0) === 0) throw new MemidError('ERR_JOIN_JWT_REPLAYED', `join token ${name}: this JWT was already used to join`)
      await c.query('UPDATE join_tokens SET join_count = join_count + 1 WHERE name = $1', [name])
      await writeInstance(c, instance, true)
      return instance
    })
  }

  async getInstance(id: string): Promise<BotInstance | undefined> {
    const r = await this.#get('SELECT * FROM bot_instances WHERE id = $1', id)
    return r && instanceFromRow(r)
  }

  async getBotAndInstance(bot: string, instanceId: string): Promise<{ bot?: Bot; instance?: BotInstance }> {
    const r = await this.#get(BOT_AND_INSTANCE_SQL, bot, instanceId)
    return r === undefined ? {} : botAndInstanceFromRow(r)
  }

  async listInstances(bot?: string): Promise<BotInstance[]> {
    const rows = bot === undefined
      ? await this.#all('SELECT * FROM bot_instances ORDER BY created_at, id COLLATE "C"')
      : await this.#all('SELECT * FROM bot_instances WHERE bot = $1 ORDER BY created_at, id COLLATE "C"', bot)
    return rows.map(instanceFromRow)
  }

  async updateInstance(id: string, decide: (instance: BotInstance | undefined, locks: Lock[]) => InstanceChange, seen?: BotInstance): Promise<InstanceChange> {
    if (seen !== undefined && seen.id === id) {
      const done = await this.#updateIfUnchanged(seen, decide)
      if (done !== undefined) return done
    }
    return this.#tx(async (c) => {
      const { rows } = await c.query<Row>('SELECT * FROM bot_instances WHERE id = $1 FOR UPDATE', [id])
      const cur = rows[0] && instanceFromRow(rows[0])
      // Read after the row lock: a lock committed before it is seen here.
      const locks = await c.query<Row>(LOCKS_FOR, [cur?.bot ?? null, id])
      const change = decide(cur, locks.rows.map(lockFromRow))
      if (change.instance) await writeInstance(c, change.instance, false)
      for (const ev of change.audit ?? []) await insertAudit(c, ev)
      for (const lock of change.locks ?? []) await c.query(insertLock(lock), lockArgs(lock))
      return change
    })
  }

  /**
   * The one-round-trip renewal: `decide` on the instance the caller read, then one
   * statement (its own transaction, durable when it returns) that writes the decision and
   * its audit rows only if the row is still exactly `seen` and no lock applies to it. The
   * UPDATE re-checks its condition on the newest row version when another transaction
   * changed the row meanwhile, so two replicas cannot both move from `seen`. Undefined when
   * that did not hold or the decision needs more (a lock, a refusal): the caller then runs
   * the transaction, which reads and decides again.
   */
  async #updateIfUnchanged(seen: BotInstance, decide: (instance: BotInstance | undefined, locks: Lock[]) => InstanceChange): Promise<InstanceChange | undefined> {
    let change: InstanceChange
    try {
      change = decide(seen, [])
    } catch {
      // Refused on what may be a stale read: the transaction decides on the stored row.
      return undefined
    }
    if ((change.locks?.length ?? 0) > 0) return undefined
    const args: Arg[] = [seen.id, seen.bot, seen.generation, seen.pendingGeneration, seen.pendingRetries, seen.pendingKey ?? null, seen.endedAt ?? null, instanceData(seen)]
    const unchanged = 'id = $1 AND generation = $3 AND pending_generation IS NOT DISTINCT FROM $4 AND pending_retries = $5 AND pending_key IS NOT DISTINCT FROM $6'
      + ' AND ended_at IS NOT DISTINCT FROM $7 AND data = $8 AND NOT EXISTS (SELECT 1 FROM locks WHERE bot = $2 OR instance = $1)'
    let ok = `SELECT 1 FROM bot_instances WHERE ${unchanged}`
    const i = change.instance
    if (i !== undefined) {
      args.push(i.generation, i.pendingGeneration, i.pendingRetries, i.pendingKey ?? null, i.endedAt ?? null, instanceData(i))
      ok = `UPDATE bot_instances SET generation = $9, pending_generation = $10, pending_retries = $11, pending_key = $12, ended_at = $13, data = $14 WHERE ${unchanged} RETURNING 1`
    }
    const rows = auditRows(change.audit ?? [], args)
    const audit = rows === '' ? '' : `, audit AS (INSERT INTO audit_events (${AUDIT_COLUMNS}) SELECT * FROM (VALUES ${rows}) AS v WHERE EXISTS (SELECT 1 FROM ok))`
    const { rows: out } = await this.#withClient((c) => c.query<Row>(`WITH ok AS (${ok})${audit} SELECT count(*)::int AS n FROM ok`, args))
    return Number(out[0]?.n) > 0 ? change : undefined
  }

  async createLock(lock: Lock): Promise<boolean> {
    // With a cause, the unique (target, cause) index turns a second copy into a no-op,
    // also when two servers insert at once (the later one waits, then does nothing).
    try {
      return (await this.#run(insertLock(lock), ...lockArgs(lock))) > 0
    } catch (err) {
      if ((err as { code?: string }).code === '23505') throw new MemidError('ERR_ALREADY_EXISTS', `lock "${lock.id}" already exists`)
      throw err
    }
  }

  async listLocks(): Promise<Lock[]> {
    return (await this.#all('SELECT * FROM locks ORDER BY created_at, id COLLATE "C"')).map(lockFromRow)
  }

  async deleteLock(id: string): Promise<boolean> {
    return (await this.#run('DELETE FROM locks WHERE id = $1', id)) > 0
  }

  async locksFor(bot: string, instance: string): Promise<Lock[]> {
    return (await this.#all(LOCKS_FOR, bot, instance)).map(lockFromRow)
  }

  async putResource(res: Resource, ca: StoredCa): Promise<{ keptCa: boolean }> {
    return this.#tx(async (c) => {
      await insertOnce(c, resourceLabel(res), 'INSERT INTO resources (kind, name, uri, ca_pem, created_at) VALUES ($1, $2, $3, $4, $5)',
        [res.kind, res.name, res.uri, res.caPem ?? null, res.createdAt])
      // A CA kept by `rm --keep-ca` is the conflict: it stays, the new one is dropped.
      const ins = await c.query(`${INSERT_RESOURCE_CA} ON CONFLICT (kind, name) DO NOTHING`, [res.kind, res.name, ca.privateKeyDer, ca.publicMaterial, ca.createdAt])
      return { keptCa: ins.rowCount === 0 }
    })
  }

  async getResource(kind: ResourceKind, name: string): Promise<Resource | undefined> {
    const r = await this.#get('SELECT * FROM resources WHERE kind = $1 AND name = $2', kind, name)
    return r && resourceFromRow(r)
  }

  async listResources(kind: ResourceKind): Promise<Resource[]> {
    return (await this.#all('SELECT * FROM resources WHERE kind = $1 ORDER BY name COLLATE "C"', kind)).map(resourceFromRow)
  }

  async deleteResource(kind: ResourceKind, name: string, opts: { keepCa?: boolean } = {}): Promise<boolean> {
    return this.#tx(async (c) => {
      const existed = ((await c.query('DELETE FROM resources WHERE kind = $1 AND name = $2', [kind, name])).rowCount ?? 0) > 0
      const dropped = opts.keepCa !== true && ((await c.query('DELETE FROM resource_cas WHERE kind = $1 AND name = $2', [kind, name])).rowCount ?? 0) > 0
      return existed || dropped
    })
  }

  async getResourceCa(kind: ResourceKind, name: string): Promise<StoredCa | undefined> {
    const r = await this.#get('SELECT * FROM resource_cas WHERE kind = $1 AND name = $2', kind, name)
    return r && resourceCaFromRow(r)
  }

  async putResourceCaIfAbsent(kind: ResourceKind, name: string, ca: StoredCa): Promise<StoredCa> {
    return this.#tx(async (c) => {
      const ins = await c.query(`${INSERT_RESOURCE_CA} ON CONFLICT (kind, name) DO NOTHING`, [kind, name, ca.privateKeyDer, ca.publicMaterial, ca.createdAt])
      if (ins.rowCount === 1) return ca
      const { rows } = await c.query<Row>('SELECT * FROM resource_cas WHERE kind = $1 AND name = $2 FOR UPDATE', [kind, name])
      return resourceCaFromRow(rows[0] as Row)
    })
  }

  async pageBots(req: PageRequest): Promise<Page<Bot>> {
    const { sql, args } = pageQuery('bots', req, (n) => `$${n}`)
    return pageFromRows('bots', await this.#all(sql, ...args), req.limit, botFromRow)
  }

  async pageTokens(req: PageRequest): Promise<Page<JoinToken>> {
    const { sql, args } = pageQuery('join_tokens', req, (n) => `$${n}`)
    return pageFromRows('join_tokens', await this.#all(sql, ...args), req.limit, tokenFromRow)
  }

  async pageInstances(req: PageRequest & { bot?: string }): Promise<Page<BotInstance>> {
    const { sql, args } = pageQuery('bot_instances', req, (n) => `$${n}`)
    return pageFromRows('bot_instances', await this.#all(sql, ...args), req.limit, instanceFromRow)
  }
  async pageInstancesJson(req: PageRequest & { bot?: string }): Promise<Page<string>> {
    const { sql, args } = pageQuery('bot_instances', req, (n) => `$${n}`)
    return pageFromRows('bot_instances', await this.#all(sql, ...args), req.limit, instanceJsonFromRow)
  }

  async pageAudit(req: PageRequest & Omit<AuditQuery, 'limit'>): Promise<Page<AuditEvent>> {
    const { sql, args } = auditPageQuery(req, (n) => `$${n}`)
    return auditPageFromRows(await this.#all(sql, ...args), req.limit)
  }

  async deleteInstanceIfUnchanged(i: BotInstance): Promise<boolean> {
    return (await this.#run('DELETE FROM bot_instances WHERE id = $1 AND generation = $2 AND pending_generation IS NOT DISTINCT FROM $3 AND data = $4',
      i.id, i.generation, i.pendingGeneration, instanceData(i))) > 0
  }

  async pruneAudit(before: string, limit: number): Promise<number> {
    return this.#run('DELETE FROM audit_events WHERE id IN (SELECT id FROM audit_events WHERE time < $1 ORDER BY time LIMIT $2)', before, Math.max(1, Math.trunc(limit)))
  }

  async appendAudit(ev: NewAuditEvent): Promise<AuditEvent> {
    return this.#withClient((c) => insertAudit(c, ev))
  }

  async appendAudits(evs: NewAuditEvent[]): Promise<void> {
    if (evs.length === 0) return
    const args: Arg[] = []
    const rows = auditRows(evs, args)
    await this.#withClient((c) => c.query(`INSERT INTO audit_events (${AUDIT_COLUMNS}) VALUES ${rows}`, args))
  }

  async queryAudit(q: AuditQuery): Promise<AuditEvent[]> {
    const { sql, args } = auditQuery(q, (n) => `$${n}`)
    return (await this.#all(sql, ...args)).map(auditFromRow).reverse()
  }
}

const LOCKS_FOR = 'SELECT * FROM locks WHERE bot = $1 OR instance = $2 ORDER BY created_at'
/** With a cause, a second lock for the same (target, cause) is a no-op (the unique index). */
function insertLock(lock: Lock): string {
  return `INSERT INTO locks (id, bot, instance, reason, created_at, cause) VALUES ($1, $2, $3, $4, $5, $6)${lock.cause !== undefined ? ' ON CONFLICT DO NOTHING' : ''}`
}

function lockArgs(lock: Lock): Arg[] {
  return [lock.id, lock.bot ?? null, lock.instance ?? null, lock.reason, lock.createdAt, lock.cause ?? null]
}

const AUDIT_COLUMNS = 'time, type, success, code, message, bot, instance, remote_addr, fields'
/** The column types of AUDIT_COLUMNS, for parameters in a VALUES list (which has no column to infer them from). */
const AUDIT_CASTS = ['text', 'text', 'int', 'text', 'text', 'text', 'text', 'text', 'text'] as const

/** An audit event's values in AUDIT_COLUMNS order; `time` defaults to now. */
function auditArgs(ev: NewAuditEvent): Arg[] {
  return [ev.time ?? new Date().toISOString(), ev.type, ev.success ? 1 : 0, ev.code ?? null, ev.message ?? null, ev.bot ?? null, ev.instance ?? null,
    ev.remoteAddr ?? null, JSON.stringify(ev.fields ?? {})]
}

/** `(…), (…)`: a VALUES row of typed parameters per event, their values appended to `args`. */
function auditRows(evs: readonly NewAuditEvent[], args: Arg[]): string {
  return evs.map((ev) => {
    const at = args.length
    args.push(...auditArgs(ev))
    return `(${AUDIT_CASTS.map((cast, k) => `$${at + k + 1}::${cast}`).join(', ')})`
  }).join(', ')
}

async function insertAudit(c: PoolClient, ev: NewAuditEvent): Promise<AuditEvent> {
  const args = auditArgs(ev)
  const { rows } = await c.query<Row>(`INSERT INTO audit_events (${AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id`, args)
  return { ...ev, id: Number(rows[0]?.id), time: args[0] as string }
}

async function writeInstance(c: PoolClient, i: BotInstance, create: boolean): Promise<void> {
  const data = instanceData(i)
  if (create) {
    await c.query('INSERT INTO bot_instances (id, bot, bot_id, generation, pending_generation, pending_retries, pending_key, ended_at, created_at, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)',
      [i.id, i.bot, i.botId, i.generation, i.pendingGeneration, i.pendingRetries, i.pendingKey ?? null, i.endedAt ?? null, i.createdAt, data])
  } else {
    await c.query('UPDATE bot_instances SET generation = $1, pending_generation = $2, pending_retries = $3, pending_key = $4, ended_at = $5, data = $6 WHERE id = $7',
      [i.generation, i.pendingGeneration, i.pendingRetries, i.pendingKey ?? null, i.endedAt ?? null, data, i.id])
  }
}

const INSERT_RESOURCE_CA = 'INSERT INTO resource_cas (kind, name, private_key, public_material, created_at) VALUES ($1, $2, $3, $4, $5)'

/** An INSERT whose unique violation means the named thing exists already. */
async function insertOnce(c: PoolClient, what: string, sql: string, args: Arg[]): Promise<void> {
  try {
    await c.query(sql, args)
  } catch (err) {
    if ((err as { code?: string }).code === '23505') throw new MemidError('ERR_ALREADY_EXISTS', `${what} already exists`)
    throw err
  }
}

async function inTransaction<T>(c: PoolClient, fn: () => Promise<T>): Promise<T> {
  await c.query('BEGIN')
  try {
    const out = await fn()
    await c.query('COMMIT')
    return out
  } catch (err) {
    // A lost connection fails the ROLLBACK too; the server rolls back on its own then.
    await c.query('ROLLBACK').catch(() => undefined)
    throw err
  }
}

/** Errors that mean the connection is gone (or never came), as opposed to a refused statement. */
function isConnectionLoss(err: unknown): boolean {
  if (err instanceof MemidError) return false
  const code = (err as { code?: unknown }).code
  if (typeof code === 'string') {
    // SQLSTATE class 08 is "connection exception"; 57P01-57P03 are server shutdown/restart.
    if (code.startsWith('08') || /^57P0[1-3]$/.test(code)) return true
    if (UNREACHABLE_CODES.has(code)) return true
  }
  return /^Connection terminated|^timeout expired/.test((err as Error).message ?? '')
}

function firstLine(err: unknown): string {
  const msg = err instanceof Error ? err.message || (err as NodeJS.ErrnoException).code || err.name : String(err)
  return (msg.split(/[\r\n]/)[0] ?? '').slice(0, 300)
}

/** The password as written in the URL and decoded; error messages never carry either. */
function urlSecrets(url: string): string[] {
  const m = /^[a-z]+:\/\/[^/?#@:]*:([^/?#]*)@/i.exec(url)
  const out: string[] = []
  if (m?.[1]) out.push(m[1], safeDecode(m[1]))
  const q = /[?&]password=([^&#]*)/.exec(url)
  if (q?.[1]) out.push(q[1], safeDecode(q[1]))
  return out
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s)
  } catch {
    // not valid percent-encoding: the raw form is all there is
    return s
  }
}

/** Replaces every secret, and any `user:password@` in a URL, with `***`. */
export function redact(text: string, secrets: readonly string[] = []): string {
  let out = text.replace(/(\/\/[^/?#@\s:]*):[^/?#\s]*@/g, '$1:***@')
  for (const s of [...secrets].sort((a, b) => b.length - a.length)) if (s) out = out.split(s).join('***')
  return out
}
