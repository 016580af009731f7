import type { IncomingMessage, ServerResponse } from 'node:http'
import { MemidError, describeError } from './errors.ts'

/**
 * `node:http`'s functions, taken from Node's own module object rather than through an ESM
 * `import`: building the ESM namespace reads every export, and three of them (`WebSocket`,
 * `CloseEvent`, `MessageEvent`) are getters that load undici, Node's fetch, which memid
 * never uses. That costs ~70 ms of CPU and ~13 MB in every thread that imports `node:http`
 * (the agent and each data-plane worker). Types still come from `import type`.
 */
export const { createServer: createHttpServer, request: httpRequest } = process.getBuiltinModule('node:http')

/** The cap on JSON request bodies everywhere (auth API, admin and control sockets). */
export const MAX_BODY_BYTES = 64 * 1024

/**
 * Reads a JSON body up to the cap. Oversized, truncated, non-JSON bodies are refused
 * with their own codes; the connection is left intact for the error response.
 */
export function readJsonBody(req: IncomingMessage, limit = MAX_BODY_BYTES): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? 0)
    if (declared > limit) {
      req.resume()
      reject(new MemidError('ERR_BODY_TOO_LARGE', `request body is larger than ${limit} bytes`))
      return
    }
    const ctype = req.headers['content-type']
    if (ctype !== undefined && !/^application\/json\b/i.test(ctype)) {
      req.resume()
      reject(new MemidError('ERR_UNSUPPORTED_MEDIA_TYPE', 'request body must be application/json'))
      return
    }
    const chunks: Buffer[] = []
    let size = 0
    let failed = false
    req.on('data', (c: Buffer) => {
      if (failed) return
      size += c.length
      if (size > limit) {
        failed = true
        reject(new MemidError('ERR_BODY_TOO_LARGE', `request body is larger than ${limit} bytes`))
        return
      }
      chunks.push(c)
    })
    req.on('error', (err) => {
      if (!failed) reject(new MemidError('ERR_BAD_REQUEST', `request body could not be read: ${describeError(err)}`))
      failed = true
    })
    req.on('aborted', () => {
      if (!failed) reject(new MemidError('ERR_BAD_REQUEST', 'request body was truncated'))
      failed = true
    })
    req.on('end', () => {
      if (failed) return
      const text = Buffer.concat(chunks).toString('utf8')
      if (text.length === 0) return resolve({})
      try {
        resolve(JSON.parse(text))
      } catch {
        reject(new MemidError('ERR_INVALID_JSON', 'request body is not valid JSON'))
      }
    })
  })
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent || res.destroyed) return
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' })
  res.end(text)
}

/** Writes `{ error: { code, message } }`; unknown errors become a bare ERR_INTERNAL. */
export function sendError(res: ServerResponse, err: unknown): void {
  const e = err instanceof MemidError ? err : new MemidError('ERR_INTERNAL', 'internal error')
  sendJson(res, e.status, { error: { code: e.code, message: e.message } })
}

/** A request target that is its own pathname: letters, digits, `-`, `_` and slashes. */
const PLAIN_PATH = /^\/[A-Za-z0-9_/-]*$/

/** A tiny router: exact method + path pattern with `:params`. */
export type Handler = (req: IncomingMessage, res: ServerResponse, params: Record<string, string>, query: URLSearchParams) => Promise<void> | void

export class Router {
  readonly #routes: { method: string; re: RegExp; keys: string[]; handler: Handler }[] = []

  on(method: string, pattern: string, handler: Handler): this {
    const keys: string[] = []
    const re = new RegExp(`^${pattern.replace(/:([a-zA-Z]+)/g, (_m, k: string) => {
      keys.push(k)
      return '([^/]+)'
    })}$`)
    this.#routes.push({ method, re, keys, handler })
    return this
  }

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let url: { pathname: string; searchParams: URLSearchParams }
    const raw = req.url ?? '/'
    if (PLAIN_PATH.test(raw)) {
      // What the URL parser would give back unchanged (no query, dot segment or escape): an agent's every request.
      url = { pathname: raw, searchParams: new URLSearchParams() }
    } else {
      try {
        url = new URL(raw, 'http://local')
      } catch {
        return sendError(res, new MemidError('ERR_BAD_REQUEST', 'malformed request URL'))
      }
    }
    let pathMatched = false
    for (const r of this.#routes) {
      const m = r.re.exec(url.pathname)
      if (!m) continue
      pathMatched = true
      if (r.method !== req.method) continue
      const params: Record<string, string> = {}
      try {
        r.keys.forEach((k, i) => (params[k] = decodeURIComponent(m[i + 1] as string)))
      } catch {
        return sendError(res, new MemidError('ERR_BAD_REQUEST', 'malformed path parameter'))
      }
      try {
        await r.handler(req, res, params, url.searchParams)
      } catch (err) {
        sendError(res, err)
      }
      return
    }
    if (pathMatched) return sendError(res, new MemidError('ERR_METHOD_NOT_ALLOWED', `${req.method} is not allowed on ${url.pathname}`))
    sendError(res, new MemidError('ERR_NOT_FOUND', `no such endpoint: ${url.pathname}`))
  }
}
