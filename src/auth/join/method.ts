import type { PlatformJoinMethod } from '../../storage/store.ts'
import { claimAt } from './rules.ts'

/** What differs between platform join methods; the verification itself is shared (jwt.ts). */
export interface JoinMethodSpec {
  method: PlatformJoinMethod
  /** The issuer when `--issuer` is not given; without one, `--issuer` is required. */
  defaultIssuer?: string
  /** Every rule must name one of these (what pins the workload). */
  identifying: readonly string[]
  /** Claims copied onto the bot instance, by dotted path. */
  recorded: readonly string[]
}

/** The identifying claims of a verified JWT as the instance records them, values as in the JWT. */
export function recordedClaims(spec: JoinMethodSpec, claims: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const path of spec.recorded) {
    const v = claimAt(claims, path)
    if (v !== undefined && (typeof v !== 'object' || v === null)) out[path] = typeof v === 'string' ? v.slice(0, 512) : v
  }
  return out
}
