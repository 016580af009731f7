import { MemidError, type ErrorCode } from '../../core/errors.ts'

/**
 * A refused platform join. `claim` names the first claim that did not match and `got`
 * its value (truncated) for the audit event; the JWT itself is never kept.
 */
export class JoinRefused extends MemidError {
  readonly claim: string | undefined
  readonly got: string | undefined

  constructor(code: ErrorCode, message: string, detail: { claim?: string; got?: string } = {}) {
    super(code, message)
    this.name = 'JoinRefused'
    this.claim = detail.claim
    this.got = detail.got
  }

  /** The audit event's fields for this refusal. */
  auditFields(): Record<string, string> {
    return { ...(this.claim !== undefined ? { claim: this.claim } : {}), ...(this.got !== undefined ? { got: this.got } : {}) }
  }
}
