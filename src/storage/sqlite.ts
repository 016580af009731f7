import { DatabaseSync, type StatementSync } from 'node:sqlite'
import { chmodSync, existsSync, fsync, openSync, closeSync } from 'node:fs'
import { MemidError } from '../core/errors.ts'
import { SCHEMA_MIGRATIONS_DDL, SQLITE, checkSchemaVersion, migrations } from './migrations.ts'
import {
  BOT_AND_INSTANCE_SQL, auditFromRow, auditPageFromRows, auditPageQuery, auditQuery, botAndInstanceFromRow, botFromRow, pageFromRows, pageQuery, caFromRow, instanceData, instanceFromRow, instanceJsonFromRow, instanceRowIs, lockFromRow,
  resourceCaFromRow, resourceFromRow, resourceLabel, roleFromRow, roleSpec, tokenColumns, tokenFromRow, type Row,
} from './rows.ts'
import type {
  AuditEvent, AuditQuery, Bot, BotInstance, CaKind, InstanceChange, JoinToken, Lock, NewAuditEvent, Page, PageRequest, ReplayKey, Resource, ResourceKind,
  Role, Store, StoredCa,
} from './store.ts'

/** Versioned migrations, shared with the PostgreSQL backend (migrations.ts). */
const MIGRATIONS = migrations(SQLITE)

/** BOT_AND_INSTANCE_SQL with `?` for `$n` (node:sqlite binds positional arguments to `?` only; they come in order). */
const BOT_AND_INSTANCE = BOT_AND_INSTANCE_SQL.replace(/\$\d+/g, '?')

/**
 * Prepared statements kept per store. Compiling a statement cost about as much as running
 * it (~9 µs of SQLite's parser per call, a dozen calls per renewal); the SQL texts are a
 * fixed set plus the listings' few filter shapes, so the bound only guards against a
 * query builder that would make them unbounded.
 */
const MAX_STATEMENTS = 256

const INSERT_AUDIT = 'INSERT INTO audit_events (time, type, success, code, message, bot, instance, remote_addr, fields) VALUES'
const AUDIT_ROW = '(?, ?, ?, ?, ?, ?, ?, ?, ?)'

function auditValues(ev: NewAuditEvent, time: string): (string | number | null)[] {
  return [time, ev.type, ev.success ? 1 : 0, ev.code ?? null, ev.message ?? null, ev.bot ?? null, ev.instance ?? null, ev.remoteAddr ?? null, JSON.stringify(ev.fields ?? {})]
}

/** The SQLite backend on node:sqlite (no native build). `:memory:` gives a throwaway store. */
export class SqliteStore implements Store {
  readonly #db: DatabaseSync
  readonly #statements = new Map<string, StatementSync>()
  /** Writes waiting for the next group commit (#grouped). */
  #group: { fn: () => unknown; resolve(v: unknown): void; reject(e: unknown): void }[] = []
  /** The write-ahead log's path (file stores), and a descriptor on it to fsync (#durable). */
  readonly #walPath: string | undefined
  #walFd: number | undefined
  /** Group commits that are committed and wait for the WAL's fsync to be answered. */
  #unsynced: ((err: Error | null) => void)[] = []
  /** The fsync in flight, if any; resolves when it and those queued behind it are done. */
  #syncing: Promise<void> | undefined
  /** The stored `data` text of each instance this store parsed (#current). */
  readonly #dataText = new WeakMap<BotInstance, string>()

  private constructor(db: DatabaseSync, path: string) {
    this.#db = db
    this.#walPath = path === ':memory:' ? undefined : `${path}-wal`
  }

  /**
   * Opens (creating if needed) the database file with mode 0600 — it holds the CA
   * private keys — and applies pending migrations.
   */
  static open(path: string): SqliteStore {
    if (path !== ':memory:' && !existsSync(path)) {
      const old = process.umask(0o077)
      try {
        closeSync(openSync(path, 'a', 0o600))
      } finally {
        process.umask(old)
      }
    }
    if (path !== ':memory:') chmodSync(path, 0o600)
    let db: DatabaseSync
    try {
      db = new DatabaseSync(path)
      db.exec('PRAGMA busy_timeout = 5000')
      if (path !== ':memory:') db.exec('PRAGMA journal_mode = WAL')
      db.exec('PRAGMA foreign_keys = ON')
    } catch (err) {
      throw new MemidError('ERR_STORAGE', `cannot open the store ${path}: ${(err as Error).message}`)
    }
    const store = new SqliteStore(db, path)
    store.#migrate()
    return store
  }

  #migrate(): void {
    this.#db.exec(SCHEMA_MIGRATIONS_DDL)
    const row = this.#db.prepare('SELECT MAX(version) AS v FROM schema_migrations').get() as Row | undefined
    const current = Number(row?.v ?? 0)
    checkSchemaVersion(current, MIGRATIONS.length)
    for (let v = current + 1; v <= MIGRATIONS.length; v++) {
      this.#tx(() => {
        this.#db.exec(MIGRATIONS[v - 1] as string)
        this.#db.prepare('INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)').run(v, new Date().toISOString())
      })
    }
  }

  #tx<T>(fn: () => T): T {
    this.#prepare('BEGIN IMMEDIATE').run()
    try {
      const out = fn()
      this.#prepare('COMMIT').run()
      return out
    } catch (err) {
      this.#prepare('ROLLBACK').run()
      throw err
    }
  }

  /**
   * Group commit: the hot writes (a renewal's or heartbeat's generation move with its audit
   * rows, a join, an audit event) that arrive in one event-loop turn share one transaction.
   * Each runs in its own savepoint, so one that throws is undone alone, exactly as its own
   * transaction would be. A failed COMMIT fails them all.
   *
   * Durability without blocking the event loop: every other write commits with
   * synchronous=FULL, where SQLite fsyncs the WAL inside COMMIT and the thread waits (1.6 ms
   * on an idle disk here, 5–7 ms on a busy one: a fifth of the auth server's wall time in a
   * renewal profile). A group instead commits with synchronous=NORMAL (no fsync), then the
   * WAL file is fsynced on libuv's thread pool (#durable) and only then are the writes'
   * promises settled, so no answer goes out for a write a power loss could undo, while the
   * event loop goes on serving (and committing the next group, whose fsync follows).
   */
  #grouped<T>(fn: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.#group.push({ fn, resolve: resolve as (v: unknown) => void, reject }) === 1) setImmediate(() => this.#commitGroup())
    })
  }

  #commitGroup(): void {
    const group = this.#group
    this.#group = []
    if (group.length === 0) return
    const results: ({ ok: true; value: unknown } | { ok: false; err: unknown })[] = []
    const deferSync = this.#walDescriptor() !== undefined
    if (deferSync) this.#prepare('PRAGMA synchronous = NORMAL').run()
    try {
      this.#prepare('BEGIN IMMEDIATE').run()
      for (const w of group) {
        this.#prepare('SAVEPOINT w').run()
        try {
          results.push({ ok: true, value: w.fn() })
          this.#prepare('RELEASE w').run()
        } catch (err) {
          // An error SQLite itself rolled back the transaction for fails the whole group below.
          if (!this.#db.isTransaction) throw err
          this.#prepare('ROLLBACK TO w').run()
          this.#prepare('RELEASE w').run()
          results.push({ ok: false, err })
        }
      }
      this.#prepare('COMMIT').run()
    } catch (err) {
      if (this.#db.isTransaction) this.#prepare('ROLLBACK').run()
      for (const w of group) w.reject(err)
      return
    } finally {
      if (deferSync) this.#prepare('PRAGMA synchronous = FULL').run()
    }
    const settle = (syncErr: Error | null) => group.forEach((w, i) => {
      const r = results[i] as (typeof results)[number]
      if (syncErr !== null) w.reject(new MemidError('ERR_STORAGE', `cannot make the store's write-ahead log durable: ${syncErr.message}`))
      else if (r.ok) w.resolve(r.value)
      else w.reject(r.err)
    })
    if (!deferSync) return settle(null)
    this.#unsynced.push(settle)
    this.#syncing ??= this.#durable()
  }

  /** The WAL's descriptor, opened on first use (the file exists once the store has written); undefined for `:memory:`. */
  #walDescriptor(): number | undefined {
    if (this.#walFd === undefined && this.#walPath !== undefined && existsSync(this.#walPath)) {
      try {
        this.#walFd = openSync(this.#walPath, 'r')
      } catch {
        // Not openable (yet): this group commits with synchronous=FULL, as every other write.
      }
    }
    return this.#walFd
  }

  /**
   * Fsyncs the WAL for every group committed so far, then for those committed meanwhile,
   * until none waits. One fsync covers every group before it: they share the file.
   */
  async #durable(): Promise<void> {
    while (this.#unsynced.length > 0) {
      const waiting = this.#unsynced
      this.#unsynced = []
      const err = await new Promise<Error | null>((resolve) => fsync(this.#walFd as number, resolve))
      for (const settle of waiting) settle(err)
    }
    this.#syncing = undefined
  }

  /** The statement for `sql`, compiled once. */
  #prepare(sql: string): StatementSync {
    let st = this.#statements.get(sql)
    if (st === undefined) {
      if (this.#statements.size >= MAX_STATEMENTS) this.#statements.clear()
      st = this.#db.prepare(sql)
      this.#statements.set(sql, st)
    }
    return st
  }

  #get(sql: string, ...args: (string | number | null | Buffer)[]): Row | undefined {
    return this.#prepare(sql).get(...args) as Row | undefined
  }

  #all(sql: string, ...args: (string | number | null | Buffer)[]): Row[] {
    return this.#prepare(sql).all(...args) as Row[]
  }

  #run(sql: string, ...args: (string | number | null | Buffer)[]): number {
    return Number(this.#prepare(sql).run(...args).changes)
  }

  #insert(what: string, fn: () => void): void {
    try {
      fn()
    } catch (err) {
      if (String((err as Error).message).includes('UNIQUE')) throw new MemidError('ERR_ALREADY_EXISTS', `${what} already exists`)
      throw err
    }
  }

  async close(): Promise<void> {
    // Writes still waiting for their group commit are committed (or refused) and made durable first.
    if (this.#db.isOpen) this.#commitGroup()
    await this.#syncing
    this.#statements.clear()
    if (this.#db.isOpen) this.#db.close()
    if (this.#walFd !== undefined) closeSync(this.#walFd)
    this.#walFd = undefined
  }

  async getCa(kind: CaKind): Promise<StoredCa | undefined> {
    const r = this.#get('SELECT * FROM cas WHERE kind = ?', kind)
    return r && caFromRow(r)
  }

  async putCaIfAbsent(ca: StoredCa): Promise<StoredCa> {
    return this.#tx(() => {
      const r = this.#get('SELECT * FROM cas WHERE kind = ?', ca.kind)
      if (r) return caFromRow(r)
      this.#run('INSERT INTO cas (kind, private_key, public_material, created_at) VALUES (?, ?, ?, ?)',
        ca.kind, ca.privateKeyDer, ca.publicMaterial, ca.createdAt)
      return ca
    })
  }

  async createRole(role: Role): Promise<void> {
    this.#insert(`role "${role.name}"`, () =>
      this.#run('INSERT INTO roles (name, spec, created_at) VALUES (?, ?, ?)', role.name, roleSpec(role), role.createdAt))
  }

  async getRole(name: string): Promise<Role | undefined> {
    const r = this.#get('SELECT * FROM roles WHERE name = ?', name)
    return r && roleFromRow(r)
  }

  async listRoles(): Promise<Role[]> {
    return this.#all('SELECT * FROM roles ORDER BY name').map(roleFromRow)
  }

  async deleteRole(name: string): Promise<boolean> {
    return this.#run('DELETE FROM roles WHERE name = ?', name) > 0
  }

  async createBot(bot: Bot): Promise<void> {
    this.#insert(`bot "${bot.name}"`, () =>
      this.#run('INSERT INTO bots (id, name, roles, max_ttl_ms, created_at) VALUES (?, ?, ?, ?, ?)',
        bot.id, bot.name, JSON.stringify(bot.roles), bot.maxTtlMs, bot.createdAt))
  }

  async getBot(name: string): Promise<Bot | undefined> {
    const r = this.#get('SELECT * FROM bots WHERE name = ?', name)
    return r && botFromRow(r)
  }

  async listBots(): Promise<Bot[]> {
    return this.#all('SELECT * FROM bots ORDER BY name').map(botFromRow)
  }

  async deleteBot(name: string, endedAt: string): Promise<{ endedInstances: number } | undefined> {
    return this.#tx(() => {
      if (this.#run('DELETE FROM bots WHERE name = ?', name) === 0) return undefined
      this.#run('DELETE FROM join_tokens WHERE bot = ? AND used_at IS NULL', name)
      return { endedInstances: this.#run('UPDATE bot_instances SET ended_at = ? WHERE bot = ? AND ended_at IS NULL', endedAt, name) }
    })
  }

  async createToken(t: JoinToken): Promise<void> {
    this.#insert(`token "${t.name}"`, () =>
      this.#run('INSERT INTO join_tokens (name, bot, join_method, secret_hash, created_at, expires_at, platform) VALUES (?, ?, ?, ?, ?, ?, ?)',
        ...tokenColumns(t)))
  }

  async getToken(name: string): Promise<JoinToken | undefined> {
    const r = this.#get('SELECT * FROM join_tokens WHERE name = ?', name)
    return r && tokenFromRow(r)
  }

  async listTokens(): Promise<JoinToken[]> {
    return this.#all('SELECT * FROM join_tokens ORDER BY created_at, name').map(tokenFromRow)
  }

  async deleteToken(name: string): Promise<boolean> {
    return this.#run('DELETE FROM join_tokens WHERE name = ?', name) > 0
  }

  // `seen` is not used: reading inside the transaction costs no round trip here.
  async consumeToken(name: string, decide: (token: JoinToken | undefined) => BotInstance): Promise<BotInstance> {
    return this.#grouped(() => {
      const r = this.#get('SELECT * FROM join_tokens WHERE name = ?', name)
      const instance = decide(r && tokenFromRow(r))
      this.#run('UPDATE join_tokens SET used_at = ?, used_by_instance = ? WHERE name = ? AND used_at IS NULL',
        instance.createdAt, instance.id, name)
      this.#writeInstance(instance, true)
      return instance
    })
  }

  async joinWithPlatformToken(name: string, replay: ReplayKey, decide: (token: JoinToken | undefined) => BotInstance): Promise<BotInstance> {
    return this.#tx(() => {
      this.#run('DELETE FROM join_replays WHERE expires_at < ?', replay.now)
      const r = this.#get('SELECT * FROM join_tokens WHERE name = ?', name)
      const instance = decide(r && tokenFromRow(r))
      if (this.#run('INSERT INTO join_replays (key, token, expires_at) VALUES (?, ?, ?) ON CONFLICT (key) DO NOTHING', replay.key, name, replay.expiresAt) === 0) {
        throw new MemidError('ERR_JOIN_JWT_REPLAYED', `join token ${name}: this JWT was already used to join`)
      }
      this.#run('UPDATE join_tokens SET join_count = join_count + 1 WHERE name = ?', name)
      this.#writeInstance(instance, true)
      return instance
    })
  }

  #writeInstance(i: BotInstance, create: boolean): void {
    const data = instanceData(i)
    if (create) {
      this.#run('INSERT INTO bot_instances (id, bot, bot_id, generation, pending_generation, pending_retries, pending_key, ended_at, created_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
        i.id, i.bot, i.botId, i.generation, i.pendingGeneration, i.pendingRetries, i.pendingKey ?? null, i.endedAt ?? null, i.createdAt, data)
    } else {
      this.#run('UPDATE bot_instances SET generation = ?, pending_generation = ?, pending_retries = ?, pending_key = ?, ended_at = ?, data = ? WHERE id = ?',
        i.generation, i.pendingGeneration, i.pendingRetries, i.pendingKey ?? null, i.endedAt ?? null, data, i.id)
    }
  }

  async getInstance(id: string): Promise<BotInstance | undefined> {
    const r = this.#get('SELECT * FROM bot_instances WHERE id = ?', id)
    return r && this.#instance(r)
  }

  /** An instance from its row, remembering the `data` text it was parsed from (#current). */
  #instance(r: Row): BotInstance {
    const i = instanceFromRow(r)
    this.#dataText.set(i, String(r.data))
    return i
  }

  /**
   * The instance a row holds: `seen` itself when the row is still the one `seen` was read
   * from (the same columns and the same `data` text), so a request that authenticated on
   * the instance does not parse its history again inside the transaction (a heartbeat read
   * and parsed every instance twice). Instances are never changed in place: a decision
   * returns a new object.
   */
  #current(r: Row, seen: BotInstance | undefined): BotInstance {
    if (seen !== undefined && this.#dataText.get(seen) === r.data && instanceRowIs(seen, r)) return seen
    return this.#instance(r)
  }

  async getBotAndInstance(bot: string, instanceId: string): Promise<{ bot?: Bot; instance?: BotInstance }> {
    // One statement for both: two were a tenth of a keep-alive heartbeat's CPU.
    return botAndInstanceFromRow(this.#get(BOT_AND_INSTANCE, bot, instanceId) as Row, (r) => this.#instance(r))
  }

  async listInstances(bot?: string): Promise<BotInstance[]> {
    const rows = bot === undefined
      ? this.#all('SELECT * FROM bot_instances ORDER BY created_at, id')
      : this.#all('SELECT * FROM bot_instances WHERE bot = ? ORDER BY created_at, id', bot)
    return rows.map(instanceFromRow)
  }

  // The row is read again inside the transaction (no round trip here); `seen` spares parsing it when unchanged.
  async updateInstance(id: string, decide: (instance: BotInstance | undefined, locks: Lock[]) => InstanceChange, seen?: BotInstance): Promise<InstanceChange> {
    return this.#grouped(() => {
      // Whether any lock names the bot or the instance comes with the row; the locks themselves are read only then.
      const r = this.#get(`SELECT *, EXISTS (SELECT 1 FROM locks WHERE bot = i.bot OR instance = i.id) AS locked FROM bot_instances i WHERE id = ?`, id)
      const cur = r && this.#current(r, seen)
      const change = decide(cur, r === undefined || r.locked !== 0 ? this.#locksFor(cur?.bot ?? null, id) : [])
      if (change.instance) this.#writeInstance(change.instance, false)
      this.#insertAudits(change.audit ?? [])
      for (const lock of change.locks ?? []) this.#insertLock(lock)
      return change
    })
  }

  /** With a cause, the unique (target, cause) index turns a second copy into a no-op; true when a row was written. */
  #insertLock(lock: Lock): boolean {
    const sql = `INSERT INTO locks (id, bot, instance, reason, created_at, cause) VALUES (?, ?, ?, ?, ?, ?)${lock.cause !== undefined ? ' ON CONFLICT DO NOTHING' : ''}`
    return this.#run(sql, lock.id, lock.bot ?? null, lock.instance ?? null, lock.reason, lock.createdAt, lock.cause ?? null) > 0
  }

  async createLock(lock: Lock): Promise<boolean> {
    let created = false
    this.#insert(`lock "${lock.id}"`, () => {
      created = this.#insertLock(lock)
    })
    return created
  }

  async listLocks(): Promise<Lock[]> {
    return this.#all('SELECT * FROM locks ORDER BY created_at, id').map(lockFromRow)
  }

  async deleteLock(id: string): Promise<boolean> {
    return this.#run('DELETE FROM locks WHERE id = ?', id) > 0
  }

  async locksFor(bot: string, instance: string): Promise<Lock[]> {
    return this.#locksFor(bot, instance)
  }

  #locksFor(bot: string | null, instance: string): Lock[] {
    return this.#all('SELECT * FROM locks WHERE bot = ? OR instance = ? ORDER BY created_at', bot, instance).map(lockFromRow)
  }

  async putResource(res: Resource, ca: StoredCa): Promise<{ keptCa: boolean }> {
    return this.#tx(() => {
      this.#insert(resourceLabel(res), () =>
        this.#run('INSERT INTO resources (kind, name, uri, ca_pem, created_at) VALUES (?, ?, ?, ?, ?)',
          res.kind, res.name, res.uri, res.caPem ?? null, res.createdAt))
      // A CA kept by `rm --keep-ca` is the conflict: it stays, the new one is dropped.
      return { keptCa: !this.#insertResourceCa(res.kind, res.name, ca) }
    })
  }

  /** False when the resource has a CA already. */
  #insertResourceCa(kind: ResourceKind, name: string, ca: StoredCa): boolean {
    return this.#run('INSERT INTO resource_cas (kind, name, private_key, public_material, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, name) DO NOTHING',
      kind, name, ca.privateKeyDer, ca.publicMaterial, ca.createdAt) > 0
  }

  async getResource(kind: ResourceKind, name: string): Promise<Resource | undefined> {
    const r = this.#get('SELECT * FROM resources WHERE kind = ? AND name = ?', kind, name)
    return r && resourceFromRow(r)
  }

  async listResources(kind: ResourceKind): Promise<Resource[]> {
    return this.#all('SELECT * FROM resources WHERE kind = ? ORDER BY name', kind).map(resourceFromRow)
  }

  async deleteResource(kind: ResourceKind, name: string, opts: { keepCa?: boolean } = {}): Promise<boolean> {
    return this.#tx(() => {
      const existed = this.#run('DELETE FROM resources WHERE kind = ? AND name = ?', kind, name) > 0
      const dropped = opts.keepCa !== true && this.#run('DELETE FROM resource_cas WHERE kind = ? AND name = ?', kind, name) > 0
      return existed || dropped
    })
  }

  async getResourceCa(kind: ResourceKind, name: string): Promise<StoredCa | undefined> {
    const r = this.#get('SELECT * FROM resource_cas WHERE kind = ? AND name = ?', kind, name)
    return r && resourceCaFromRow(r)
  }

  async putResourceCaIfAbsent(kind: ResourceKind, name: string, ca: StoredCa): Promise<StoredCa> {
    return this.#tx(() => {
      if (this.#insertResourceCa(kind, name, ca)) return ca
      return resourceCaFromRow(this.#get('SELECT * FROM resource_cas WHERE kind = ? AND name = ?', kind, name) as Row)
    })
  }

  async pageBots(req: PageRequest): Promise<Page<Bot>> {
    const { sql, args } = pageQuery('bots', req, () => '?')
    return pageFromRows('bots', this.#all(sql, ...args), req.limit, botFromRow)
  }

  async pageTokens(req: PageRequest): Promise<Page<JoinToken>> {
    const { sql, args } = pageQuery('join_tokens', req, () => '?')
    return pageFromRows('join_tokens', this.#all(sql, ...args), req.limit, tokenFromRow)
  }

  async pageInstances(req: PageRequest & { bot?: string }): Promise<Page<BotInstance>> {
    const { sql, args } = pageQuery('bot_instances', req, () => '?')
    return pageFromRows('bot_instances', this.#all(sql, ...args), req.limit, instanceFromRow)
  }
  async pageInstancesJson(req: PageRequest & { bot?: string }): Promise<Page<string>> {
    const { sql, args } = pageQuery('bot_instances', req, () => '?')
    return pageFromRows('bot_instances', this.#all(sql, ...args), req.limit, instanceJsonFromRow)
  }

  async pageAudit(req: PageRequest & Omit<AuditQuery, 'limit'>): Promise<Page<AuditEvent>> {
    const { sql, args } = auditPageQuery(req, () => '?')
    return auditPageFromRows(this.#all(sql, ...args), req.limit)
  }

  async deleteInstanceIfUnchanged(i: BotInstance): Promise<boolean> {
    return this.#run('DELETE FROM bot_instances WHERE id = ? AND generation = ? AND pending_generation IS ? AND data = ?',
      i.id, i.generation, i.pendingGeneration, instanceData(i)) > 0
  }

  async pruneAudit(before: string, limit: number): Promise<number> {
    return this.#run('DELETE FROM audit_events WHERE id IN (SELECT id FROM audit_events WHERE time < ? ORDER BY time LIMIT ?)', before, Math.max(1, Math.trunc(limit)))
  }

  async appendAudit(ev: NewAuditEvent): Promise<AuditEvent> {
    return this.#grouped(() => this.#insertAudit(ev))
  }

  async appendAudits(evs: NewAuditEvent[]): Promise<void> {
    if (evs.length > 0) await this.#grouped(() => this.#insertAudits(evs))
  }

  #insertAudit(ev: NewAuditEvent): AuditEvent {
    const time = ev.time ?? new Date().toISOString()
    const res = this.#prepare(`${INSERT_AUDIT} ${AUDIT_ROW}`).run(...auditValues(ev, time))
    return { ...ev, id: Number(res.lastInsertRowid), time }
  }

  /** The audit rows of one change in one statement (a renewal writes two). */
  #insertAudits(evs: NewAuditEvent[]): void {
    if (evs.length === 0) return
    if (evs.length === 1) return void this.#insertAudit(evs[0] as NewAuditEvent)
    this.#prepare(`${INSERT_AUDIT} ${Array(evs.length).fill(AUDIT_ROW).join(', ')}`).run(...evs.flatMap((ev) => auditValues(ev, ev.time ?? new Date().toISOString())))
  }

  async queryAudit(q: AuditQuery): Promise<AuditEvent[]> {
    const { sql, args } = auditQuery(q, () => '?')
    return this.#all(sql, ...args).map(auditFromRow).reverse()
  }
}
