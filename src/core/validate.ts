import { z } from 'zod'
import { MemidError, type ErrorCode } from './errors.ts'
import { parseDuration } from './duration.ts'

/**
 * Parses a value with a schema at the edge and turns the first problem into one line
 * naming its path: `services[1].listen: must be host:port or a socket path`.
 */
export function parseWith<T>(schema: z.ZodType<T>, value: unknown, code: ErrorCode = 'ERR_BAD_REQUEST', prefix = ''): T {
  const r = schema.safeParse(value)
  if (r.success) return r.data
  throw new MemidError(code, `${prefix}${issueText(r.error)}`)
}

/**
 * The first problem of a failed parse as one line, `path: message`, its path appended to
 * `base` (`services[1]` + `listen` gives `services[1].listen`). Unknown keys are named.
 */
export function issueText(error: z.ZodError, base = ''): string {
  const issue = error.issues[0]
  if (issue === undefined) return base ? `${base}: invalid value` : 'invalid value'
  let message = issue.message
  if (issue.code === 'unrecognized_keys') message = `unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')}`
  const at = formatPath(issue.path, base)
  return at ? `${at}: ${message}` : message
}

/** `['services', 1, 'listen']` as `services[1].listen`, appended to `base` when given. */
export function formatPath(path: readonly PropertyKey[], base = ''): string {
  let out = base
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`
    else out += out ? `.${String(p)}` : String(p)
  }
  return out
}

/** Names of roles, bots, clusters, databases: no path, space or control characters. */
export const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9._@-]{0,62}$/
export const nameSchema = z.string().regex(NAME_RE, 'must be 1-63 letters, digits, ".", "_", "@" or "-", starting with a letter or digit')

/** Principals, kube users and groups, db users: printable, no separators that could smuggle values. */
export const principalSchema = z.string().min(1).max(128).regex(/^[^\s,\x00-\x1f\x7f"'\\/]+$/, 'must be printable with no spaces, commas, quotes or slashes')

export const durationSchema = z.string().refine((s) => parseDuration(s) !== undefined, 'must be a duration like 90s, 20m, 1h')
