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
}

export const SQLITE: Dialect = { bytes: 'BLOB', int64: 'INTEGER', autoId: 'INTEGER PRIMARY KEY' }
export const POSTGRES: Dialect = { bytes: 'BYTEA', int64: 'BIGINT', autoId: 'BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY' }

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
