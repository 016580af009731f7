/**
 * Header rewriting between kubectl and the API server. Hop-by-hop headers (RFC 9110 §7.6.1)
 * describe one connection and never cross a proxy; a client's `Authorization` is dropped
 * because the only credential the API server may see is the client certificate the agent
 * holds (a bearer token from some other kubeconfig must not ride along).
 */
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization',
  'te', 'trailer', 'transfer-encoding', 'upgrade',
])

/** Dropped from requests on top of the hop-by-hop set. */
const REQUEST_DROP = new Set([
  ...HOP_BY_HOP,
  'authorization',
  'host',
  // Node's server already answered `100 Continue` locally; the upstream request streams the body at once.
  'expect',
  // HTTP/2 pseudo-headers never arrive over HTTP/1.1, but a crafted name must not reach the h2 encoder.
  ':authority', ':method', ':path', ':scheme',
])

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
 * The request headers to send upstream, as a raw `[name, value, …]` list (order, case and
 * repeated headers preserved), with `Host` set to the API server.
 */
export function upstreamRequestHeaders(raw: readonly string[], host: string): string[] {
  const extra = connectionTokens(raw)
  const out: string[] = ['Host', host]
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string
    const lower = name.toLowerCase()
    if (REQUEST_DROP.has(lower) || extra?.has(lower)) continue
    out.push(name, raw[i + 1] as string)
  }
  return out
}

/**
 * The head of an upgrade request (`exec`, `attach`, `port-forward`) for the API server:
 * same method and path, `Connection: Upgrade` and the client's `Upgrade` kept, every other
 * hop-by-hop header and any `Authorization` removed.
 */
export function upgradeRequestHead(method: string, url: string, raw: readonly string[], host: string): string {
  const extra = connectionTokens(raw)
  let head = `${method} ${url} HTTP/1.1\r\nHost: ${host}\r\nConnection: Upgrade\r\n`
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string
    const lower = name.toLowerCase()
    if (lower === 'upgrade' || !(REQUEST_DROP.has(lower) || extra?.has(lower))) {
      head += `${name}: ${(raw[i + 1] as string).replace(/[\r\n]/g, '')}\r\n`
    }
  }
  return head + '\r\n'
}

/** The same as {@link upstreamRequestHeaders}, as an HTTP/2 header object (`:authority` replaces Host). */
export function upstreamHttp2Headers(method: string, path: string, raw: readonly string[], host: string): Record<string, string | string[]> {
  const extra = connectionTokens(raw)
  const out: Record<string, string | string[]> = { ':method': method, ':path': path, ':authority': host, ':scheme': 'https' }
  for (let i = 0; i < raw.length; i += 2) {
    const lower = (raw[i] as string).toLowerCase()
    if (REQUEST_DROP.has(lower) || extra?.has(lower)) continue
    const value = raw[i + 1] as string
    const prev = out[lower]
    out[lower] = prev === undefined ? value : Array.isArray(prev) ? [...prev, value] : [prev, value]
  }
  return out
}

/** The response headers to pass back to kubectl. */
export function downstreamResponseHeaders(raw: readonly string[]): string[] {
  const extra = connectionTokens(raw)
  const out: string[] = []
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string
    const lower = name.toLowerCase()
    if (HOP_BY_HOP.has(lower) || extra?.has(lower)) continue
    out.push(name, raw[i + 1] as string)
  }
  return out
}

/** The `host:port` authority of the API server, brackets around IPv6. */
export function authority(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`
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
