import { mkdirSync, statSync, chmodSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import path from 'node:path'
import { z } from 'zod'
import { ConfigError } from '../core/errors.ts'
import { durationSchema, nameSchema, parseWith } from '../core/validate.ts'
import { parseDuration } from '../core/duration.ts'
import { resolveDataDir } from './paths.ts'
import { readYamlFile } from '../core/yaml.ts'

const fileSchema = z.strictObject({
  version: z.literal('v1'),
  data_dir: z.string().min(1).optional(),
  listen: z.string().min(1).optional(),
  storage: z.string().min(1).optional(),
  cluster_name: nameSchema.optional(),
  log_format: z.enum(['json', 'text']).optional(),
  instance_ttl: durationSchema.optional(),
  audit_retention: durationSchema.optional(),
  workers: z.number().int().min(1).max(256).optional(),
})

export interface AuthConfig {
  dataDir: string
  listen: string
  storage: string
  clusterName: string
  logFormat: 'json' | 'text'
  /** Kept after an instance's identity expired and it was last seen (`instance_ttl`). */
  instanceTtlMs?: number
  /** Audit events older than this are pruned (`audit_retention`). */
  auditRetentionMs?: number
  /** API worker threads sharing the port (`--workers`, `workers:`); default the CPUs, 1 for an in-memory store. */
  workers: number
}

export interface AuthFlags {
  config?: string
  dataDir?: string
  listen?: string
  storage?: string
  clusterName?: string
  logFormat?: string
  workers?: string
}

export { resolveDataDir } from './paths.ts'

/** File, then flags on top. */
export function loadAuthConfig(flags: AuthFlags): AuthConfig {
  const file = flags.config !== undefined ? parseWith(fileSchema, readYamlFile(flags.config), 'ERR_CONFIG') : undefined
  const dataDir = resolveDataDir(flags.dataDir ?? file?.data_dir)
  const logFormat = flags.logFormat ?? file?.log_format ?? 'json'
  if (logFormat !== 'json' && logFormat !== 'text') throw new ConfigError('--log-format: must be json or text')
  const clusterName = flags.clusterName ?? file?.cluster_name ?? 'memid'
  parseWith(nameSchema, clusterName, 'ERR_CONFIG', 'cluster_name: ')
  const storage = flags.storage ?? file?.storage ?? `sqlite:${path.join(dataDir, 'memid.db')}`
  return {
    dataDir,
    listen: flags.listen ?? file?.listen ?? '127.0.0.1:3025',
    storage,
    workers: resolveWorkers(flags.workers, file?.workers, storage),
    clusterName,
    logFormat,
    ...(file?.instance_ttl !== undefined ? { instanceTtlMs: parseDuration(file.instance_ttl) as number } : {}),
    ...(file?.audit_retention !== undefined ? { auditRetentionMs: parseDuration(file.audit_retention) as number } : {}),
  }
}

/**
 * `--workers N` over `workers:`; the default is one per CPU. An in-memory SQLite store
 * exists in one connection only, so it cannot be shared by several workers.
 */
function resolveWorkers(flag: string | undefined, file: number | undefined, storage: string): number {
  let n = file
  if (flag !== undefined) {
    if (!/^[1-9][0-9]{0,2}$/.test(flag) || Number(flag) > 256) throw new ConfigError(`--workers: must be a whole number from 1 to 256, got "${flag.slice(0, 20)}"`)
    n = Number(flag)
  }
  const inMemory = storage === 'sqlite::memory:'
  if (n === undefined) return inMemory ? 1 : Math.max(1, availableParallelism())
  if (n > 1 && inMemory) throw new ConfigError('--workers: an in-memory store (sqlite::memory:) serves from one worker only')
  return n
}

/** Creates the data dir 0700 (and tightens an existing one we own). */
export function ensureDataDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  const st = statSync(dir)
  if ((st.mode & 0o077) !== 0 && st.uid === process.getuid?.()) chmodSync(dir, 0o700)
}
