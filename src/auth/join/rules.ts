import { MemidError } from '../../core/errors.ts'

/** One `--allow` rule: every pair must match the JWT's claim. */
export type Rule = Record<string, string>

const KEY_RE = /^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}$/
const VALUE_RE = /^[^\x00-\x1f\x7f,]{1,512}$/

/** Parses `k=v,k=v` into a rule; `at` names the flag or key in the message. */
export function parseRule(text: string, at: string): Rule {
  const rule: Rule = {}
  for (const pair of text.split(',')) {
    const eq = pair.indexOf('=')
    const key = eq < 0 ? pair.trim() : pair.slice(0, eq).trim()
    const value = eq < 0 ? '' : pair.slice(eq + 1).trim()
    if (eq < 0 || !KEY_RE.test(key)) throw new MemidError('ERR_BAD_REQUEST', `${at}: "${pair.slice(0, 64)}" is not KEY=VALUE (a claim name, then "=")`)
    if (!VALUE_RE.test(value)) throw new MemidError('ERR_BAD_REQUEST', `${at}: the value of ${key} must be 1-512 printable characters without commas`)
    if (Object.hasOwn(rule, key)) throw new MemidError('ERR_BAD_REQUEST', `${at}: ${key} is given twice`)
    rule[key] = value
  }
  return rule
}

/**
 * A rule must pin who may join: at least one identifying key whose value is more than
 * globs. `repository=*` would admit every repository on GitHub.
 */
export function checkIdentifying(rule: Rule, identifying: readonly string[], at: string): void {
  const named = identifying.filter((k) => Object.hasOwn(rule, k))
  if (named.length === 0) throw new MemidError('ERR_BAD_REQUEST', `${at}: a rule must name at least one of ${identifying.join(', ')}`)
  if (named.every((k) => /^[*?]*$/.test(rule[k] as string))) {
    throw new MemidError('ERR_BAD_REQUEST', `${at}: ${named.join(', ')} must not be only "*" or "?" globs`)
  }
}

/**
 * The claim at a dotted path: nested objects are walked first (shortest key first), a
 * literal key containing dots is the fallback, so `kubernetes.io.namespace` finds
 * `{"kubernetes.io": {"namespace": …}}`.
 */
export function claimAt(claims: unknown, path: string): unknown {
  return walk(claims, path.split('.'))
}

function walk(value: unknown, parts: string[]): unknown {
  if (parts.length === 0) return value
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return undefined
  for (let i = 1; i <= parts.length; i++) {
    const key = parts.slice(0, i).join('.')
    if (!Object.hasOwn(value, key)) continue
    const found = walk((value as Record<string, unknown>)[key], parts.slice(i))
    if (found !== undefined) return found
  }
  return undefined
}

/** `*` is any run of characters, `?` one character; everything else is literal. */
export function globMatches(pattern: string, value: string): boolean {
  const re = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')
  return new RegExp(`^${re}$`, 's').test(value)
}

function scalar(v: unknown): string | undefined {
  if (typeof v === 'string') return v
  if (typeof v === 'number' || typeof v === 'boolean') return String(v)
  return undefined
}

export type RuleOutcome = { ok: true } | { ok: false; claim: string; got?: string }

/**
 * Accepted when every pair of at least one rule matches. On refusal, the first pair of
 * the first rule that did not match is named (for the audit event).
 */
export function matchRules(rules: readonly Rule[], claims: Record<string, unknown>): RuleOutcome {
  let first: RuleOutcome | undefined
  for (const rule of rules) {
    const miss = Object.entries(rule).find(([k, pattern]) => {
      const v = scalar(claimAt(claims, k))
      return v === undefined || !globMatches(pattern, v)
    })
    if (miss === undefined) return { ok: true }
    if (first === undefined) {
      const got = scalar(claimAt(claims, miss[0]))
      first = { ok: false, claim: miss[0], ...(got !== undefined ? { got: got.slice(0, 256) } : {}) }
    }
  }
  return first ?? { ok: false, claim: '(no rules)' }
}
