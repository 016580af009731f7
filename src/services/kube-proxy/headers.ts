/**
 * Header rewriting from kubectl to the API server. Hop-by-hop headers (RFC 9110 §7.6.1)
 * describe one connection and never cross a proxy; a client's `Authorization` is dropped
 * because the only credential the API server may see is the client certificate the agent
 * holds (a bearer token from some other kubeconfig must not ride along).
 *
 * Responses are not rewritten: each kubectl connection has its own upstream connection,
 * both HTTP/1.1, so the framing headers of a response (`Transfer-Encoding`, `Connection`,
 * `Keep-Alive`) describe a connection that behaves exactly as the proxy's own (see
 * `connection.ts`), and the bytes pass through as they arrive.
 */
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization',
  'te', 'trailer', 'transfer-encoding', 'upgrade',
])

/** Dropped from requests on top of the hop-by-hop set. */
const REQUEST_DROP = new Set([...HOP_BY_HOP, 'authorization', 'host'])

/** Header names the `Connection` header marks as hop-by-hop for this message. */
function connectionTokens(raw: readonly string[]): Set<string> | undefined {
  let tokens: Set<string> | undefined
  for (let i = 0; i < raw.length; i += 2) {
    if ((raw[i] as string).toLowerCase() !== 'connection') continue
    for (const t of (raw[i + 1] as string).split(',')) {
      const name = t.trim().toLowerCase()
      if (name !== '') (tokens ??= new Set()).add(name)
    }
  }
  return tokens
}

/**
 * How a forwarded request is framed: `plain` (no body, or a Content-Length one: that header
 * passes through), `chunked` (`Transfer-Encoding` passes through; the proxy sends the body
 * chunked again) or `upgrade` (`Connection: Upgrade` and the client's `Upgrade` header).
 */
export type HeadKind = 'plain' | 'chunked' | 'upgrade'

/**
 * The head of a request for the API server: the client's method, target and HTTP version,
 * `Host` set to the API server, the client's headers in their order and case, minus
 * hop-by-hop ones, `Authorization`, and whatever its `Connection` header names (except
 * Content-Length). `close`
 * asks the API server to close after answering (the client asked the proxy the same).
 * CR and LF never reach the output (llhttp refuses them anyway).
 */
export function requestHead(method: string, target: string, minor: number, raw: readonly string[], host: string, kind: HeadKind, close: boolean): string {
  const extra = connectionTokens(raw)
  let head = `${method} ${clean(target)} HTTP/1.${minor === 0 ? 0 : 1}\r\nHost: ${host}\r\n`
  if (kind === 'upgrade') head += 'Connection: Upgrade\r\n'
  else if (close) head += 'Connection: close\r\n'
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string
    const lower = name.toLowerCase()
    // Content-Length frames the body the proxy forwards: a Connection header naming it must
    // not strip it, or the body would reach the API server as the next request.
    const keep = !(REQUEST_DROP.has(lower) || extra?.has(lower)) || lower === 'content-length' ||
      (kind === 'upgrade' && lower === 'upgrade') || (kind === 'chunked' && lower === 'transfer-encoding')
    if (keep) head += `${clean(name)}: ${clean(raw[i + 1] as string)}\r\n`
  }
  return head + '\r\n'
}

function clean(text: string): string {
  return text.includes('\r') || text.includes('\n') ? text.replace(/[\r\n]/g, '') : text
}

/** True for requests that stay open and stream events: `?watch=true|1` or the legacy `/watch/` paths. */
export function isWatch(url: string): boolean {
  if (!url.includes('watch')) return false
  const q = url.indexOf('?')
  if (q >= 0) {
    const params = new URLSearchParams(url.slice(q + 1))
    const w = params.get('watch')
    if (w === 'true' || w === '1') return true
  }
  const path = q >= 0 ? url.slice(0, q) : url
  return /^\/(?:api\/[^/]+|apis\/[^/]+\/[^/]+)\/watch\//.test(path)
}

/**
 * True for the discovery endpoints kubectl reads before anything else (and caches). Their
 * errors reach the user only as a generic message, so failures there also carry a Warning.
 */
export function isDiscovery(url: string): boolean {
  const q = url.indexOf('?')
  const path = q >= 0 ? url.slice(0, q) : url
  return /^\/(?:version|api|apis|api\/[^/]+|apis\/[^/]+(?:\/[^/]+)?|openapi\/.*)\/?$/.test(path)
}
