/**
 * Stable error codes. Callers switch on `err.code`; the CLI maps codes to exit
 * codes in one place (src/cli/exit.ts) and the auth API maps them to HTTP statuses.
 */
export const ERROR_STATUS = {
  ERR_BAD_REQUEST: 400,
  ERR_INVALID_JSON: 400,
  ERR_INVALID_NAME: 400,
  ERR_BODY_TOO_LARGE: 413,
  ERR_UNSUPPORTED_MEDIA_TYPE: 415,
  ERR_NOT_FOUND: 404,
  ERR_METHOD_NOT_ALLOWED: 405,
  ERR_ALREADY_EXISTS: 409,
  ERR_TOKEN_INVALID: 401,
  ERR_TOKEN_EXPIRED: 401,
  ERR_TOKEN_USED: 401,
  ERR_UNAUTHENTICATED: 401,
  ERR_LOCKED: 403,
  ERR_BOT_NOT_FOUND: 403,
  ERR_INSTANCE_NOT_FOUND: 403,
  ERR_STALE_GENERATION: 403,
  ERR_ACCESS_DENIED: 403,
  ERR_RATE_LIMITED: 429,
  ERR_INTERNAL: 500,
  ERR_STORAGE: 500,
  ERR_CA_PIN_MISMATCH: 502,
  ERR_AUTH_UNREACHABLE: 502,
  ERR_AUTH_TIMEOUT: 504,
  ERR_AUTH_BAD_RESPONSE: 502,
  ERR_IDENTITY_EXPIRED: 503,
  ERR_NOT_READY: 503,
  ERR_UPSTREAM: 502,
  ERR_CONFIG: 400,
  ERR_USAGE: 400,
  ERR_LISTEN: 500,
  ERR_HARDENING: 500,
  ERR_ADMIN_UNREACHABLE: 502,
} as const

export type ErrorCode = keyof typeof ERROR_STATUS

/** Answers that mean this bot identity can never be renewed again. */
export const FATAL_IDENTITY_CODES: ReadonlySet<string> = new Set<ErrorCode>([
  'ERR_LOCKED',
  'ERR_BOT_NOT_FOUND',
  'ERR_INSTANCE_NOT_FOUND',
  'ERR_STALE_GENERATION',
])

/** The base class of every error memid raises on purpose. Its message is safe to show and log. */
export class MemidError extends Error {
  readonly code: ErrorCode
  readonly status: number

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'MemidError'
    this.code = code
    this.status = ERROR_STATUS[code]
  }

  toJSON(): { code: ErrorCode; message: string } {
    return { code: this.code, message: this.message }
  }
}

/** Bad configuration or flags: exit code 2, with the offending key path in the message. */
export class ConfigError extends MemidError {
  constructor(message: string) {
    super('ERR_CONFIG', message)
    this.name = 'ConfigError'
  }
}

/** True when the value is a MemidError carrying one of the given codes. */
export function hasCode(err: unknown, ...codes: ErrorCode[]): err is MemidError {
  return err instanceof MemidError && codes.includes(err.code)
}

/**
 * A message safe to print for any thrown value. Unknown errors are reduced to their
 * message's first line so a stack or a dumped buffer never reaches a terminal or a log.
 */
export function describeError(err: unknown): string {
  // A MemidError can quote a config value or the auth server's answer: keep it, on one line.
  if (err instanceof MemidError) return err.message.replace(/\s*[\r\n]+\s*/g, ' ')
  if (err instanceof Error) {
    const sys = err as NodeJS.ErrnoException
    const first = (err.message.split(/[\r\n]/)[0] ?? '').slice(0, 300)
    return sys.code && !first.includes(sys.code) ? `${first} (${sys.code})` : first
  }
  return String(err).split(/[\r\n]/)[0]?.slice(0, 300) ?? 'unknown error'
}
