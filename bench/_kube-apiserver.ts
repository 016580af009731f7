/**
 * The upstream of the kube-proxy benchmark: an HTTP/2 (and HTTP/1.1) server with mutual TLS
 * that answers pod GETs and lists the way kube-apiserver shapes them. Only what `wrk`
 * asks for through a proxy; the full Kubernetes-API stand-in the tests use lives in
 * `test/fixtures/` and benchmarks do not depend on test code.
 */
import { randomUUID } from 'node:crypto'
import http2 from 'node:http2'
import { benchCa, benchLeaf } from './_common.ts'

export interface BenchApiServer {
  url: string
  host: string
  port: number
  /** The CA that signed the server certificate. */
  caPem: string
  stop(): Promise<void>
}

/** Starts on 127.0.0.1 and a free port with `pods` pods named p1…pN in `default`. */
export async function startBenchApiServer(clientCaPem: string, pods: number): Promise<BenchApiServer> {
  const ca = await benchCa('bench kube-apiserver CA')
  const leaf = await benchLeaf(ca, 'kube-apiserver', 'server', { ipAddresses: ['127.0.0.1'] })
  const created = new Date().toISOString().replace(/\.\d+Z$/, 'Z')
  const items = Array.from({ length: pods }, (_, i) => pod(`p${i + 1}`, String(101 + i), created))
  const byName = new Map(items.map((p) => [p.metadata.name, JSON.stringify(p)]))
  const list = JSON.stringify({ kind: 'PodList', apiVersion: 'v1', metadata: { resourceVersion: String(100 + pods) }, items })

  const server = http2.createSecureServer({
    key: leaf.keyPem,
    cert: leaf.certPem,
    ca: clientCaPem,
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.2',
    allowHTTP1: true,
    // Node refuses new streams once a session holds 10 MB unsent; big lists to several clients exceed it.
    maxSessionMemory: 256,
  })
  server.on('request', (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => {
    const reply = (code: number, body: string) => {
      res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
      res.end(body)
    }
    const path = req.url.split('?')[0] ?? ''
    if (req.method === 'GET' && path === '/api/v1/namespaces/default/pods') return reply(200, list)
    const name = /^\/api\/v1\/namespaces\/default\/pods\/([^/]+)$/.exec(path)?.[1]
    const one = name === undefined ? undefined : byName.get(name)
    if (req.method === 'GET' && one !== undefined) return reply(200, one)
    reply(404, JSON.stringify({ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', reason: 'NotFound', code: 404 }))
  })
  const sockets = new Set<{ destroy(): void }>()
  server.on('connection', (s: { destroy(): void; on(e: 'close', cb: () => void): void }) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  return {
    url: `https://127.0.0.1:${port}`,
    host: '127.0.0.1',
    port,
    caPem: ca.certPem,
    stop: () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()))
      for (const s of sockets) s.destroy()
      return closed
    },
  }
}

/** A running pod as kube-apiserver returns it (about 500 bytes of JSON, as the tests' fixture). */
function pod(name: string, resourceVersion: string, created: string) {
  return {
    kind: 'Pod',
    apiVersion: 'v1',
    metadata: { name, namespace: 'default', uid: randomUUID(), resourceVersion, creationTimestamp: created },
    spec: { containers: [{ name: 'main', image: 'busybox:1.36' }] },
    status: {
      phase: 'Running',
      containerStatuses: [{ name: 'main', ready: true, restartCount: 0, image: 'busybox:1.36', imageID: '', started: true, state: { running: { startedAt: created } } }],
    },
  }
}
