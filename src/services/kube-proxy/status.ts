import type { Duplex } from 'node:stream'

/**
 * Reasons a Kubernetes client understands (metav1.StatusReason). kubectl prints
 * `Error from server (REASON): MESSAGE`, so the message is what the user reads.
 */
export type StatusReason = 'Forbidden' | 'ServiceUnavailable' | 'BadRequest' | 'InternalError' | 'Timeout'

/** A Kubernetes `Status` object, the body every API error carries. */
export function statusBody(code: number, reason: StatusReason, message: string): string {
  return JSON.stringify({ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code })
}

/**
 * A `Warning` header (RFC 7234 §5.5, as kube-apiserver sends them) carrying the message.
 * kubectl prints warnings from every response, while it reports a failed discovery request
 * only as "the server is currently unable to handle the request": the warning is how the
 * cause reaches the user when kubectl's discovery cache is cold.
 */
export function warningHeader(message: string): string {
  return `299 - "${message.replace(/[^\x20-\x7e]/g, '?').replace(/["\\]/g, '\\$&')}"`
}

const REASON_PHRASE: Record<number, string> = {
  400: 'Bad Request',
  403: 'Forbidden',
  408: 'Request Timeout',
  431: 'Request Header Fields Too Large',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
}

/**
 * A whole HTTP/1.1 response carrying a Status body (and, if asked, the message as a Warning
 * too); `close` adds `Connection: close`, after which the proxy closes the connection.
 */
export function statusResponse(code: number, reason: StatusReason, message: string, warn: boolean, close: boolean): string {
  const body = statusBody(code, reason, message)
  return `HTTP/1.1 ${code} ${REASON_PHRASE[code] ?? 'Error'}\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\n${warn ? `Warning: ${warningHeader(message)}\r\n` : ''}${close ? 'Connection: close\r\n' : ''}\r\n${body}`
}

/** Answers on a raw socket (a request that cannot be parsed) and closes it. */
export function writeRawStatus(socket: Duplex, code: number, reason: StatusReason, message: string): void {
  if (socket.destroyed || !socket.writable) {
    socket.destroy()
    return
  }
  socket.end(statusResponse(code, reason, message, false, true))
  // A peer that never reads must not keep the socket (and its buffers) alive.
  setTimeout(() => socket.destroy(), 5_000).unref()
}
