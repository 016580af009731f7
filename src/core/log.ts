import { KeyObject } from 'node:crypto'
import { pino, type Logger } from 'pino'

export type { Logger }
export type LogFormat = 'json' | 'text'

/**
 * The one redaction list. Any field with these names, at the top level or nested up to
 * three levels, is replaced before the line is written.
 */
export const REDACTED_FIELDS = [
  'key', 'privateKey', 'private_key', 'keyPem', 'token', 'joinToken', 'secret', 'password',
  'certificate', 'cert', 'certPem', 'certificates', 'authorization', 'Authorization', 'cookie',
  'signature', 'pem', 'der', 'idToken', 'id_token', 'jwt',
]

const REDACT_PATHS = REDACTED_FIELDS.flatMap((f) => [f, `*.${f}`, `*.*.${f}`, `*.*.*.${f}`])
const CENSOR = '[redacted]'
const PEM_BLOCK = /-----BEGIN [A-Z0-9 ]+-----[\s\S]*?(-----END [A-Z0-9 ]+-----|$)/g
const OPENSSH_CERT = /\b[a-z0-9-]+-cert-v01@openssh\.com [A-Za-z0-9+/=]{16,}/g
/** A JWS compact serialization: its header always starts `{"` (base64url `eyJ`). */
const JWT = /\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*/g

/**
 * Second line of defence behind the path list: PEM blocks, OpenSSH certificate lines,
 * buffers and KeyObjects are censored wherever they appear in a log record.
 */
function scrub(value: unknown, depth: number): unknown {
  if (typeof value === 'string') {
    return value.includes('-----BEGIN') || value.includes('-cert-v01@openssh.com') || value.includes('eyJ')
      ? value.replace(PEM_BLOCK, CENSOR).replace(OPENSSH_CERT, CENSOR).replace(JWT, CENSOR)
      : value
  }
  if (value === null || typeof value !== 'object') return value
  if (value instanceof KeyObject || Buffer.isBuffer(value) || ArrayBuffer.isView(value)) return CENSOR
  if (value instanceof Error || depth > 4) return value
  if (Array.isArray(value)) return value.map((v) => scrub(v, depth + 1))
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(value)) out[k] = scrub(v, depth + 1)
  return out
}

// Matched on the serialized JSON line, where a PEM's line breaks are the two characters
// `\n`: the body may hold base64, escaped whitespace and PEM header text but never a quote,
// so a match cannot run past the end of the JSON string it sits in.
const PEM_IN_JSON = /-----BEGIN [A-Z0-9 ]+-----(?:[A-Za-z0-9+/=:,. \t]|-(?!----)|\\[nrt])*(?:-----END [A-Z0-9 ]+-----)?/g
const JOIN_TOKEN = /\b(tok-[0-9a-f]{12})\.[A-Za-z0-9_-]{16,}/g
const BUFFER_JSON = /\{"type":"Buffer","data":\[[0-9,]*\]\}/g

/**
 * Last line of defence on the finished line: the field scrub above does not see the
 * message, error messages and stacks, child bindings, or values nested deeper than it walks.
 * Join tokens keep their public name; their secret half is censored.
 */
function scrubLine(line: string): string {
  if (!line.includes('-----BEGIN') && !line.includes('tok-') && !line.includes('-cert-v01@') && !line.includes('"Buffer"') && !line.includes('eyJ')) return line
  return line
    .replace(PEM_IN_JSON, CENSOR)
    .replace(JWT, CENSOR)
    .replace(OPENSSH_CERT, CENSOR)
    .replace(JOIN_TOKEN, `$1.${CENSOR}`)
    .replace(BUFFER_JSON, `"${CENSOR}"`)
}

/** A line-oriented sink; the default writes synchronously to stderr. */
export interface LogSink {
  write(line: string): void
}

const stderrSink: LogSink = { write: (line) => void process.stderr.write(line) }

/** Renders pino's JSON lines as `time LEVEL msg key=value …` for humans. */
function textSink(next: LogSink): LogSink {
  const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' }
  return {
    write(line: string) {
      let rec: Record<string, unknown>
      try {
        rec = JSON.parse(line) as Record<string, unknown>
      } catch {
        next.write(line)
        return
      }
      const { time, level, msg, pid: _pid, hostname: _host, ...rest } = rec
      const fields = Object.entries(rest)
        .map(([k, v]) => `${k}=${typeof v === 'string' && !/\s/.test(v) ? v : JSON.stringify(v)}`)
        .join(' ')
      const when = typeof time === 'number' ? new Date(time).toISOString() : ''
      next.write(`${when} ${(LEVELS[level as number] ?? String(level)).padEnd(5)} ${String(msg ?? '')}${fields ? ` ${fields}` : ''}\n`)
    },
  }
}

export interface LoggerOptions {
  format?: LogFormat
  level?: string
  /** Where lines go; stderr when omitted. Tests pass a collecting sink. */
  sink?: LogSink
  /** Fields bound to every line, e.g. `{ component: 'agent' }`. */
  base?: Record<string, unknown>
}

/** Creates the process logger: JSON lines on stderr, secrets redacted. */
export function createLogger(opts: LoggerOptions = {}): Logger {
  const sink = opts.sink ?? stderrSink
  const stream = opts.format === 'text' ? textSink(sink) : sink
  const logger = pino(
    {
      level: opts.level ?? process.env.MEMID_LOG_LEVEL ?? 'info',
      base: opts.base ?? null,
      redact: { paths: REDACT_PATHS, censor: CENSOR },
      formatters: { log: (obj) => scrub(obj, 0) as Record<string, unknown> },
      timestamp: pino.stdTimeFunctions.epochTime,
      hooks: { streamWrite: scrubLine },
    },
    stream,
  )
  // Child bindings skip the log formatter and go straight to the path redactor, which
  // throws on a Buffer (and would walk a KeyObject): scrub them first. Children are made
  // with Object.create(parent), so every descendant finds this method.
  const child = Object.getPrototypeOf(logger).child as Logger['child']
  logger.child = function (this: Logger, bindings, options) {
    return child.call(this, scrub(bindings, 0) as typeof bindings, options)
  } as Logger['child']
  return logger
}

/** A logger that drops everything, for library users who pass none. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' })
}
