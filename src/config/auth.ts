import { readFileSync, mkdirSync, statSync, chmodSync } from 'node:fs'
import path from 'node:path'
import YAML from 'yaml'
import { z } from 'zod'
import { ConfigError } from '../core/errors.ts'
import { durationSchema, nameSchema, parseWith } from '../core/validate.ts'
import { parseDuration } from '../core/duration.ts'
import { resolveDataDir } from './paths.ts'

const fileSchema = z.strictObject({
  version: z.literal('v1'),
  data_dir: z.string().min(1).optional(),
  listen: z.string().min(1).optional(),
  storage: z.string().min(1).optional(),
  cluster_name: nameSchema.optional(),
  log_format: z.enum(['json', 'text']).optional(),
  instance_ttl: durationSchema.optional(),
  audit_retention: durationSchema.optional(),
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
}

export interface AuthFlags {
  config?: string
  dataDir?: string
  listen?: string
  storage?: string
  clusterName?: string
  logFormat?: string
}

export { resolveDataDir } from './paths.ts'

/** Reads a YAML config file into a plain value; a missing or malformed file is a ConfigError. */
export function readYamlFile(file: string): unknown {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw new ConfigError(`--config: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`)
  }
  try {
    return YAML.parse(text, { maxAliasCount: 10 }) ?? {}
  } catch (err) {
    throw new ConfigError(`${file}: not valid YAML: ${(err as Error).message.split('\n')[0]}`)
  }
}

/** File, then flags on top. */
export function loadAuthConfig(flags: AuthFlags): AuthConfig {
  const file = flags.config !== undefined ? parseWith(fileSchema, readYamlFile(flags.config), 'ERR_CONFIG') : undefined
  const dataDir = resolveDataDir(flags.dataDir ?? file?.data_dir)
  const logFormat = flags.logFormat ?? file?.log_format ?? 'json'
  if (logFormat !== 'json' && logFormat !== 'text') throw new ConfigError('--log-format: must be json or text')
  const clusterName = flags.clusterName ?? file?.cluster_name ?? 'memid'
  parseWith(nameSchema, clusterName, 'ERR_CONFIG', 'cluster_name: ')
  return {
    dataDir,
    listen: flags.listen ?? file?.listen ?? '127.0.0.1:3025',
    storage: flags.storage ?? file?.storage ?? `sqlite:${path.join(dataDir, 'memid.db')}`,
    clusterName,
    logFormat,
    ...(file?.instance_ttl !== undefined ? { instanceTtlMs: parseDuration(file.instance_ttl) as number } : {}),
    ...(file?.audit_retention !== undefined ? { auditRetentionMs: parseDuration(file.audit_retention) as number } : {}),
  }
}

/** Creates the data dir 0700 (and tightens an existing one we own). */
export function ensureDataDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  const st = statSync(dir)
  if ((st.mode & 0o077) !== 0 && st.uid === process.getuid?.()) chmodSync(dir, 0o700)
}
