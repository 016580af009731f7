import { MemidError } from '../core/errors.ts'
import { SqliteStore } from './sqlite.ts'
import type { Store } from './store.ts'

/**
 * Opens the store named by a `--storage` value: `sqlite:PATH` (`sqlite::memory:` for a
 * throwaway one), or `postgres://user:pass@host:port/db` / `postgresql://…` for a
 * PostgreSQL database several auth servers can share (node-postgres is loaded only then).
 */
export async function openStore(spec: string): Promise<Store> {
  if (spec.startsWith('sqlite:')) return SqliteStore.open(spec.slice('sqlite:'.length))
  if (spec.startsWith('postgres://') || spec.startsWith('postgresql://')) {
    const { PostgresStore } = await import('./postgres.ts')
    return PostgresStore.open(spec)
  }
  const { redact } = await import('./postgres.ts')
  throw new MemidError('ERR_CONFIG', `storage: must be sqlite:PATH or postgres://…, got "${redact(spec).slice(0, 60)}"`)
}
