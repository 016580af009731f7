import { MemidError } from '../core/errors.ts'

/**
 * Column types that SQLite and PostgreSQL spell differently. Everything else in the
 * schema is written once, in SQL both accept.
 */
export interface Dialect {
  /** Raw bytes (the CA private keys). */
  bytes: string
  /** A 64-bit integer: PostgreSQL's INTEGER is 32-bit and a 720h max TTL in ms does not fit. */
  int64: string
  /** The auto-numbered audit id; SQLite's must stay `INTEGER PRIMARY KEY` (the rowid alias). */
  autoId: string
  /** An expression giving 32 random hex digits, evaluated per row. */
  randomHex: string
  /** An expression giving the current time as an ISO-8601 UTC string with milliseconds, as JS writes it. */
  nowIso: string
}

export const SQLITE: Dialect = {
  bytes: 'BLOB', int64: 'INTEGER', autoId: 'INTEGER PRIMARY KEY',
  randomHex: 'lower(hex(randomblob(16)))',
  nowIso: "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
}
export const POSTGRES: Dialect = {
  bytes: 'BYTEA', int64: 'BIGINT', autoId: 'BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY',
  randomHex: 'md5(random()::text || clock_timestamp()::text)',
  nowIso: `to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`,
}

/** Records which migrations a database has had; created before the first one runs. */
export const SCHEMA_MIGRATIONS_DDL = 'CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)'

/**
 * The versioned migrations, shared by every backend: version N is `migrations(d)[N - 1]`.
 * Append only; a released migration never changes, or stores that already ran it diverge.
 */
export function migrations(d: Dialect): string[] {
  return [
    `CREATE TABLE cas (kind TEXT PRIMARY KEY, private_key ${d.bytes} NOT NULL, public_material TEXT NOT NULL, created_at TEXT NOT NULL);
   CREATE TABLE roles (name TEXT PRIMARY KEY, spec TEXT NOT NULL, created_at TEXT NOT NULL);
   CREATE TABLE bots (name TEXT PRIMARY KEY, roles TEXT NOT NULL, max_ttl_ms ${d.int64} NOT NULL, created_at TEXT NOT NULL);
   CREATE TABLE join_tokens (name TEXT PRIMARY KEY, bot TEXT NOT NULL, join_method TEXT NOT NULL, secret_hash TEXT NOT NULL,
     created_at TEXT NOT NULL, expires_at TEXT NOT NULL, used_at TEXT, used_by_instance TEXT);
   CREATE TABLE bot_instances (id TEXT PRIMARY KEY, bot TEXT NOT NULL, generation INTEGER NOT NULL, pending_generation INTEGER,
     pending_retries INTEGER NOT NULL, created_at TEXT NOT NULL, data TEXT NOT NULL);
   CREATE INDEX bot_instances_bot ON bot_instances (bot);
   CREATE TABLE locks (id TEXT PRIMARY KEY, bot TEXT, instance TEXT, reason TEXT NOT NULL, created_at TEXT NOT NULL);
   CREATE TABLE resources (kind TEXT NOT NULL, name TEXT NOT NULL, uri TEXT NOT NULL, ca_pem TEXT, created_at TEXT NOT NULL,
     PRIMARY KEY (kind, name));
   CREATE TABLE audit_events (id ${d.autoId}, time TEXT NOT NULL, type TEXT NOT NULL, success INTEGER NOT NULL,
     code TEXT, message TEXT, bot TEXT, instance TEXT, remote_addr TEXT, fields TEXT NOT NULL);
   CREATE INDEX audit_events_time ON audit_events (time);`,
    // A client CA per kube cluster and database: one shared CA let a certificate for one
    // resource work on every other. The old shared keys sign nothing any more, so they go;
    // existing registrations get their own CA at the next start (cas.ts: a key cannot be made in SQL).
    `CREATE TABLE resource_cas (kind TEXT NOT NULL, name TEXT NOT NULL, private_key ${d.bytes} NOT NULL, public_material TEXT NOT NULL,
     created_at TEXT NOT NULL, PRIMARY KEY (kind, name));
   DELETE FROM cas WHERE kind IN ('kube-client', 'db-client');`,
    // Bot deletion is final: bots get an immutable id (carried in their certificates) and
    // instances the id of the bot they were created for, when they were ended, and the key
    // their pending generation is bound to. An instance older than the bot of its name
    // belonged to a deleted bot: it gets no bot id and is ended.
    `ALTER TABLE bots ADD COLUMN id TEXT;
   UPDATE bots SET id = ${d.randomHex};
   CREATE UNIQUE INDEX bots_id ON bots (id);
   ALTER TABLE bot_instances ADD COLUMN bot_id TEXT;
   ALTER TABLE bot_instances ADD COLUMN ended_at TEXT;
   ALTER TABLE bot_instances ADD COLUMN pending_key TEXT;
   UPDATE bot_instances SET bot_id = (SELECT b.id FROM bots b WHERE b.name = bot_instances.bot AND b.created_at <= bot_instances.created_at);
   UPDATE bot_instances SET ended_at = ${d.nowIso} WHERE bot_id IS NULL;`,
    // Platform joins (issue 12): the token's rules as JSON, its join count, and the replay cache.
    `ALTER TABLE join_tokens ADD COLUMN platform TEXT;
   ALTER TABLE join_tokens ADD COLUMN join_count ${d.int64} NOT NULL DEFAULT 0;
   CREATE TABLE join_replays (key TEXT PRIMARY KEY, token TEXT NOT NULL, expires_at TEXT NOT NULL);
   CREATE INDEX join_replays_expires ON join_replays (expires_at);`,
    // fleet: one lock per (target, cause); indexes for the per-request lock check and for
    // newest-first keyset paging of the admin listings.
    `ALTER TABLE locks ADD COLUMN cause TEXT;
   CREATE UNIQUE INDEX locks_target_cause ON locks ((COALESCE(bot, '')), (COALESCE(instance, '')), cause) WHERE cause IS NOT NULL;
   CREATE INDEX locks_bot ON locks (bot);
   CREATE INDEX locks_instance ON locks (instance);
   CREATE INDEX bot_instances_created ON bot_instances (created_at, id);
   CREATE INDEX bot_instances_bot_created ON bot_instances (bot, created_at, id);
   CREATE INDEX bots_created ON bots (created_at, name);
   CREATE INDEX join_tokens_created ON join_tokens (created_at, name);`,
  ]
}

/** Refuses a store that a newer memid has migrated past what this one knows. */
export function checkSchemaVersion(current: number, known: number): void {
  if (current > known) {
    throw new MemidError('ERR_STORAGE', `the store has schema version ${current}, newer than this memid (${known}); upgrade memid`)
  }
}
