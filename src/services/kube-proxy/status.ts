import type { ServerResponse } from 'node:http'
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

/** Answers an ordinary request with a Status body (and, if asked, the message as a Warning too). */
export function writeStatus(res: ServerResponse, code: number, reason: StatusReason, message: string, warn = false): void {
  if (res.headersSent) {
    res.destroy()
    return
  }
  const body = statusBody(code, reason, message)
  res.writeHead(code, {
    'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'cache-control': 'no-cache, private',
    ...(warn ? { warning: warningHeader(message) } : {}),
  })
  res.end(body)
}

const REASON_PHRASE: Record<number, string> = {
  400: 'Bad Request',
  403: 'Forbidden',
  408: 'Request Timeout',
  431: 'Request Header Fields Too Large',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
}

/** Answers on a raw socket (an upgrade request or a parse error) and closes it. */
export function writeRawStatus(socket: Duplex, code: number, reason: StatusReason, message: string): void {
  if (socket.destroyed || !socket.writable) {
    socket.destroy()
    return
  }
  const body = statusBody(code, reason, message)
  socket.end(
    `HTTP/1.1 ${code} ${REASON_PHRASE[code] ?? 'Error'}\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  )
  // A peer that never reads must not keep the socket (and its buffers) alive.
  setTimeout(() => socket.destroy(), 5_000).unref()
}
