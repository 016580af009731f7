import type { IncomingMessage } from 'node:http'
import { pipeline } from 'node:stream/promises'
import { MemidError, type ErrorCode } from '../core/errors.ts'
import { httpRequest } from '../core/http.ts'

/**
 * JSON over HTTP on a local unix socket: the admin socket of the auth service and the
 * control socket of the agent speak it.
 */
export async function socketRequest<T>(socketPath: string, method: string, path: string, body: unknown, what: string, hint: string): Promise<T> {
  return readAnswer<T>(await send(socketPath, method, path, body, what, hint), what)
}

/**
 * A 2xx JSON answer written to `out` as it arrives, then a newline: never parsed nor held
 * whole (a listing page can be tens of MB). Any other answer rejects as socketRequest's
 * would. If the reader of `out` goes away (`| head`), the rest is dropped without an error.
 */
export async function socketPipe(socketPath: string, method: string, path: string, body: unknown, what: string, hint: string, out: NodeJS.WritableStream): Promise<void> {
  const res = await send(socketPath, method, path, body, what, hint)
  const json = String(res.headers['content-type'] ?? '').startsWith('application/json')
  if ((res.statusCode ?? 500) >= 300 || !json) {
    // An error status rejects here, with the error its body carries.
    await readAnswer(res, what)
    throw new MemidError('ERR_INTERNAL', `${what} answered ${res.statusCode}${json ? '' : ' without JSON'}`)
  }
  try {
    await pipeline(res, out, { end: false })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EPIPE') return
    if (err instanceof MemidError) throw err
    throw new MemidError('ERR_ADMIN_UNREACHABLE', `${what} at ${socketPath} stopped in the middle of its answer: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  out.write('\n')
}

/** Sends the request; resolves with the response once its head has arrived. */
function send(socketPath: string, method: string, path: string, body: unknown, what: string, hint: string): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body)
    const req = httpRequest({
      socketPath, method, path,
      headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
      timeout: 15_000,
    }, resolve)
    req.on('timeout', () => req.destroy(new MemidError('ERR_ADMIN_UNREACHABLE', `${what} at ${socketPath} did not answer in time`)))
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err instanceof MemidError) return reject(err)
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        return reject(new MemidError('ERR_ADMIN_UNREACHABLE', `cannot reach ${what} at ${socketPath}: ${hint}`))
      }
      if (err.code === 'EACCES') return reject(new MemidError('ERR_ADMIN_UNREACHABLE', `permission denied on ${socketPath}: run as the user that owns it`))
      reject(new MemidError('ERR_ADMIN_UNREACHABLE', `cannot reach ${what} at ${socketPath}: ${err.code ?? err.message}`))
    })
    req.end(payload)
  })
}

/** The whole answer: its JSON, or its text when it is not JSON; an error status rejects with the error it carries. */
function readAnswer<T>(res: IncomingMessage, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    res.on('data', (c: Buffer) => chunks.push(c))
    res.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8')
      const ctype = String(res.headers['content-type'] ?? '')
      if (!ctype.startsWith('application/json')) {
        if ((res.statusCode ?? 500) < 300) return resolve(text as T)
        return reject(new MemidError('ERR_INTERNAL', `${what} answered ${res.statusCode}`))
      }
      let parsed: unknown
      try {
        parsed = JSON.parse(text)
      } catch {
        return reject(new MemidError('ERR_INTERNAL', `${what} answered malformed JSON`))
      }
      if ((res.statusCode ?? 500) >= 400) {
        const e = (parsed as { error?: { code?: string; message?: string } }).error
        return reject(new MemidError((e?.code ?? 'ERR_INTERNAL') as ErrorCode, e?.message ?? `${what} answered ${res.statusCode}`))
      }
      resolve(parsed as T)
    })
    res.on('error', reject)
  })
}
