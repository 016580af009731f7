/**
 * The kube proxy service against the Kubernetes-API test server (real mutual TLS; it offers
 * HTTP/2 and HTTP/1.1, the proxy speaks HTTP/1.1), driven by a plain HTTP client and raw sockets. kubectl itself is in
 * test/integration/kube-proxy.test.ts.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, statSync, existsSync } from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import path from 'node:path'
import { Registry } from 'prom-client'
import { CredentialSource, type TlsClientCredential } from '../../../src/credentials/credentials.ts'
import type { Clock } from '../../../src/core/clock.ts'
import { createLogger } from '../../../src/core/log.ts'
import type { X509Authority } from '../../../src/pki/x509.ts'
import { createKubeProxyService, MAX_HEADER_BYTES } from '../../../src/services/kube-proxy/index.ts'
import type { Service } from '../../../src/services/service.ts'
import { startKubeApiServer, type KubeApiServer } from '../../fixtures/kube-apiserver.ts'
import { createKubeClientCa, issueKubeCredential } from '../../fixtures/kube-client.ts'

let ca: X509Authority
const servers: KubeApiServer[] = []

before(async () => {
  ca = await createKubeClientCa()
})

after(async () => {
  await Promise.all(servers.map((s) => s.stop()))
})

async function apiServer(opts: { http2?: boolean } = {}): Promise<KubeApiServer> {
  const srv = await startKubeApiServer({ clientCaPem: ca.certPem, ...opts })
  servers.push(srv)
  srv.addPod('p1')
  return srv
}

interface Harness {
  srv: KubeApiServer
  svc: Service
  source: CredentialSource<TlsClientCredential>
  clock: { offset: number; now(): number }
  metrics: Registry
  logs: string[]
  port: number
  stop(): Promise<void>
}

async function harness(opts: {
  srv?: KubeApiServer; listen?: string; allowedHosts?: string[]; noCredential?: boolean; connectTimeoutMs?: number
} = {}): Promise<Harness> {
  const srv = opts.srv ?? (await apiServer())
  const clock = { offset: 0, now() { return Date.now() + this.offset } }
  const source = new CredentialSource<TlsClientCredential>('kube-proxy:test certificate', clock as Clock)
  if (!opts.noCredential) source.set(await issueKubeCredential({ ca, server: srv, user: 'bot-ci', groups: ['devs', 'ops'] }))
  const logs: string[] = []
  const metrics = new Registry()
  const svc = createKubeProxyService(
    {
      listen: opts.listen ?? '127.0.0.1:0', cluster: 'test',
      ...(opts.allowedHosts ? { allowedHosts: opts.allowedHosts } : {}),
      ...(opts.connectTimeoutMs ? { connectTimeoutMs: opts.connectTimeoutMs } : {}),
    },
    { credentials: source, clock, metrics, logger: createLogger({ level: 'debug', sink: { write: (l) => void logs.push(l) } }) },
  )
  await svc.start()
  const port = opts.listen?.startsWith('/') ? 0 : Number(svc.address.split(':').pop())
  return { srv, svc, source, clock, metrics, logs, port, stop: () => svc.stop(500) }
}

interface Reply {
  status: number
  headers: http.IncomingHttpHeaders
  body: string
  json(): any
}

function request(h: { port: number }, p: string, opts: { method?: string; headers?: Record<string, string>; body?: string; socketPath?: string; agent?: http.Agent } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request({
      ...(opts.socketPath ? { socketPath: opts.socketPath } : { host: '127.0.0.1', port: h.port }),
      path: p, method: opts.method ?? 'GET', headers: opts.headers ?? {}, agent: opts.agent ?? false,
    }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d: string) => (body += d))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body, json: () => JSON.parse(body) }))
    })
    req.on('error', reject)
    req.end(opts.body)
  })
}

/** Writes raw bytes and collects whatever comes back until the server closes (or 3 s pass). */
function raw(port: number, bytes: Buffer | string): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1')
    let out = ''
    s.on('data', (d) => (out += d.toString('latin1')))
    s.on('error', () => undefined)
    s.on('close', () => resolve(out))
    s.write(bytes)
    setTimeout(() => s.destroy(), 3000).unref()
  })
}

/** A streaming GET (a watch) whose chunks the test reads as they arrive. */
class Stream {
  readonly req: http.ClientRequest
  data = ''
  status = 0
  closed = false
  readonly response: Promise<void>

  constructor(port: number, p: string) {
    this.req = http.get({ host: '127.0.0.1', port, path: p, agent: false })
    this.req.on('error', () => undefined)
    this.response = new Promise((resolve) => {
      this.req.on('response', (res) => {
        this.status = res.statusCode ?? 0
        res.setEncoding('utf8')
        res.on('data', (d: string) => (this.data += d))
        res.on('close', () => (this.closed = true))
        resolve()
      })
    })
  }

  async waitFor(re: RegExp, ms = 5000): Promise<void> {
    const until = Date.now() + ms
    while (!re.test(this.data)) {
      if (Date.now() > until) throw new Error(`stream never showed ${String(re)}; got ${this.data.slice(-500)}`)
      await sleep(20)
    }
  }

  close(): void {
    this.req.destroy()
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function until(check: () => boolean | Promise<boolean>, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

describe('kube proxy service', () => {
  it('forwards with the in-memory client certificate, over HTTP/1.1', async () => {
    const h = await harness()
    try {
      const r = await request(h, '/api/v1/namespaces/default/pods')
      assert.equal(r.status, 200)
      assert.deepEqual(r.json().items.map((p: any) => p.metadata.name), ['p1'])
      const seen = h.srv.requests.at(-1)
      assert.equal(seen?.serial, h.source.peek()?.serial)
      assert.equal(seen?.user, 'bot-ci')
      assert.deepEqual(seen?.groups, ['devs', 'ops'])
      assert.equal(seen?.httpVersion, '1.1')
    } finally {
      await h.stop()
    }
  })

  it('strips Authorization and hop-by-hop headers, keeps the rest and the body', async () => {
    const h = await harness()
    try {
      const r = await request(h, '/echo?x=1', {
        method: 'POST',
        body: '{"kind":"Thing"}',
        headers: {
          host: `127.0.0.1:${h.port}`, authorization: 'Bearer someone-elses-token', 'proxy-authorization': 'Basic eA==',
          connection: 'keep-alive, X-Hop', 'x-hop': 'must go', te: 'trailers', 'impersonate-user': 'alice',
          'content-type': 'application/json', accept: 'application/json',
        },
      })
      assert.equal(r.status, 200)
      const echoed = r.json()
      assert.equal(echoed.method, 'POST')
      assert.equal(echoed.body, '{"kind":"Thing"}')
      for (const gone of ['authorization', 'proxy-authorization', 'x-hop', 'te', 'keep-alive']) assert.equal(echoed.headers[gone], undefined, gone)
      // kubectl's Connection header never crosses (its keep-alive is the default of HTTP/1.1).
      assert.equal(echoed.headers.connection, undefined)
      assert.equal(echoed.headers['impersonate-user'], 'alice')
      assert.equal(echoed.headers['content-type'], 'application/json')
      const hostSeen = echoed.headers[':authority'] ?? echoed.headers.host
      assert.equal(hostSeen, `127.0.0.1:${h.srv.port}`)
      assert.equal(h.srv.requests.some((x) => x.authorization !== undefined), false)
    } finally {
      await h.stop()
    }
  })

  it('ends the upstream request as soon as the client goes away', async () => {
    const h = await harness()
    try {
      const s = new Stream(h.port, '/slow')
      await s.waitFor(/tick/)
      s.close()
      await until(() => h.srv.slowClosed === 1, 'the API server to see the upstream request end', 3000)
    } finally {
      await h.stop()
    }
  })

  it('relays big lists intact to concurrent clients, and back to back on one keep-alive connection', async () => {
    const srv = await apiServer()
    for (let i = 2; i <= 3000; i++) srv.addPod(`p${i}`)
    const h = await harness({ srv })
    try {
      const replies = await Promise.all(Array.from({ length: 4 }, () => request(h, '/api/v1/namespaces/default/pods')))
      for (const r of replies) {
        assert.equal(r.status, 200)
        assert.ok(r.body.length > 1_000_000, `a list of ${r.body.length} bytes`)
        const names = r.json().items.map((p: any) => p.metadata.name)
        assert.equal(names.length, 3000)
        assert.equal(names.at(-1), 'p3000')
      }
      // Back to back on one keep-alive connection: each answer ends where its framing says.
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
      try {
        for (const p of ['/api/v1/namespaces/default/pods', '/api/v1/namespaces/default/pods/p1', '/api/v1/namespaces/default/pods']) {
          const r = await new Promise<{ status: number; length: number; socket: unknown }>((resolve, reject) => {
            http.get({ host: '127.0.0.1', port: h.port, path: p, agent }, (res) => {
              let length = 0
              res.on('data', (d: Buffer) => (length += d.length))
              res.on('end', () => resolve({ status: res.statusCode ?? 0, length, socket: res.socket }))
            }).on('error', reject)
          })
          assert.equal(r.status, 200, p)
          assert.ok(r.length > 0, p)
        }
      } finally {
        agent.destroy()
      }
    } finally {
      await h.stop()
    }
  })

  it('speaks HTTP/1.1 to an API server that offers no h2', async () => {
    const h = await harness({ srv: await apiServer({ http2: false }) })
    try {
      assert.equal((await request(h, '/version')).status, 200)
      assert.equal((await request(h, '/version')).status, 200)
      assert.deepEqual(h.srv.requests.map((r) => r.httpVersion), ['1.1', '1.1'])
    } finally {
      await h.stop()
    }
  })

  it('refuses foreign Host headers (DNS rebinding) on requests and upgrades, before reaching the cluster', async () => {
    const h = await harness()
    try {
      const r = await request(h, '/api/v1/namespaces/default/pods', { headers: { host: `evil.example:${h.port}` } })
      assert.equal(r.status, 403)
      assert.equal(r.json().kind, 'Status')
      assert.equal(r.json().reason, 'Forbidden')
      const up = await raw(h.port, 'GET /api/v1/namespaces/default/pods/p1/exec?command=id HTTP/1.1\r\nHost: attacker.test\r\n' +
        'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n')
      assert.match(up, /^HTTP\/1\.1 403 /)
      assert.match(up, /"kind":"Status"/)
      assert.equal(h.srv.requests.length, 0)
      for (const host of [`localhost:${h.port}`, `127.0.0.1:${h.port}`, `[::1]:${h.port}`, 'localhost']) {
        assert.equal((await request(h, '/version', { headers: { host } })).status, 200, host)
      }
    } finally {
      await h.stop()
    }
  })

  it('logs refused Host headers at most once per 10 s with the count since the last line, the host cut to 100 characters', async () => {
    const h = await harness()
    // A frozen clock, so the 10 s boundary is exact.
    let now = Date.now()
    h.clock.now = () => now
    const warned = () => h.logs.map((l) => JSON.parse(l)).filter((l) => l.msg === 'kube proxy refused requests with a foreign Host header')
      .map((l) => ({ level: l.level, host: l.host, refused: l.refused }))
    const foreign = async (host: string) => assert.equal((await request(h, '/version', { headers: { host } })).status, 403, host)
    try {
      await foreign('evil.example')
      assert.deepEqual(warned(), [{ level: 40, host: 'evil.example', refused: 1 }])
      now += 9_999
      await foreign('evil.example')
      const up = await raw(h.port, 'GET /api/v1/namespaces/default/pods/p1/exec HTTP/1.1\r\nHost: attacker.test\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n')
      assert.match(up, /^HTTP\/1\.1 403 /)
      assert.equal((await request(h, '/version', { headers: { host: 'localhost' } })).status, 200, 'an allowed host is not counted')
      assert.equal(warned().length, 1, 'a flood within 10 s is one line')
      now += 1
      await foreign('x'.repeat(300))
      assert.deepEqual(warned()[1], { level: 40, host: 'x'.repeat(100), refused: 3 })
      now += 10_000
      // HTTP/1.0 may omit Host; no Host is not an allowed one.
      assert.match(await raw(h.port, 'GET /version HTTP/1.0\r\n\r\n'), /^HTTP\/1\.1 403 /)
      assert.deepEqual(warned()[2], { level: 40, host: '', refused: 1 })
      assert.equal(h.srv.requests.some((r) => r.path !== '/version'), false)
      assert.equal(h.srv.requests.length, 1, 'only the allowed request reached the cluster')
    } finally {
      await h.stop()
    }
  })

  it('accepts the hosts a deployment lists in allowedHosts', async () => {
    const h = await harness({ allowedHosts: ['kube-proxy.internal'] })
    try {
      assert.equal((await request(h, '/version', { headers: { host: 'kube-proxy.internal:8001' } })).status, 200)
      assert.equal((await request(h, '/version', { headers: { host: 'localhost' } })).status, 403)
    } finally {
      await h.stop()
    }
  })

  it('fails closed with a 503 Status naming the cause once the certificate expired, and serves again after renewal', async () => {
    const h = await harness()
    try {
      h.source.fail(new Error('auth service 127.0.0.1:3025 unreachable'))
      h.clock.offset = 2 * 3600_000
      const r = await request(h, '/api/v1/namespaces/default/pods')
      assert.equal(r.status, 503)
      const st = r.json()
      assert.deepEqual({ kind: st.kind, apiVersion: st.apiVersion, status: st.status, reason: st.reason, code: st.code },
        { kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'ServiceUnavailable', code: 503 })
      assert.match(st.message, /expired at .* and could not be renewed: auth service 127\.0\.0\.1:3025 unreachable/)
      assert.equal(r.headers.warning, undefined)
      const discovery = await request(h, '/api?timeout=32s')
      assert.equal(discovery.status, 503)
      assert.equal(discovery.headers.warning, `299 - "${discovery.json().message}"`)
      const up = await raw(h.port, `GET /api/v1/namespaces/default/pods/p1/exec?command=id HTTP/1.1\r\nHost: localhost:${h.port}\r\n` +
        'Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n')
      assert.match(up, /^HTTP\/1\.1 503 /)
      assert.match(up, /could not be renewed/)
      assert.equal(h.svc.health().status, 'failed')
      assert.equal(h.srv.requests.length, 0)
      h.clock.offset = 0
      assert.equal((await request(h, '/version')).status, 200)
      assert.equal(h.svc.health().status, 'ok')
    } finally {
      await h.stop()
    }
  })

  it('answers 503 before the first certificate arrives', async () => {
    const h = await harness({ noCredential: true })
    try {
      const r = await request(h, '/version')
      assert.equal(r.status, 503)
      assert.match(r.json().message, /no kube-proxy:test certificate certificate yet|no .* yet/)
      // Before the first certificate renewal is still trying: degraded; failed is for expired.
      assert.equal(h.svc.health().status, 'degraded')
    } finally {
      await h.stop()
    }
  })

  it('fails closed with a 503 Status when the credential lookup throws something unexpected, on requests and upgrades', async () => {
    const h = await harness()
    try {
      h.source.current = () => { throw new TypeError('credential store broke') }
      const r = await request(h, '/api/v1/namespaces/default/pods')
      assert.equal(r.status, 503)
      assert.deepEqual([r.json().kind, r.json().message], ['Status', 'memid: credential store broke'])
      const up = await raw(h.port, 'GET /api/v1/namespaces/default/pods/p1/exec HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n')
      assert.match(up, /^HTTP\/1\.1 503 [\s\S]*memid: credential store broke/)
      assert.equal(h.srv.requests.length, 0)
    } finally {
      await h.stop()
    }
  })

  it('each request uses the certificate current() holds, even when the renewal event was missed', async () => {
    const h = await harness()
    try {
      assert.equal((await request(h, '/version')).status, 200)
      const first = h.source.peek() as TlsClientCredential
      // The proxy rebuilds its connections on 'renewed'; without that event it must still notice.
      h.source.removeAllListeners('renewed')
      h.source.set(await issueKubeCredential({ ca, server: h.srv, user: 'bot-ci', groups: ['devs', 'ops'] }))
      const second = h.source.peek() as TlsClientCredential
      assert.notEqual(first.serial, second.serial)
      assert.equal((await request(h, '/version')).status, 200)
      assert.equal(h.srv.requests.at(-1)?.serial, second.serial)
    } finally {
      await h.stop()
    }
  })

  it('answers 502 with a Status when the API server is unreachable, and recovers', async () => {
    const srv = await apiServer()
    const h = await harness({ srv })
    try {
      const closed = net.createServer()
      await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r))
      const deadPort = (closed.address() as net.AddressInfo).port
      await new Promise((r) => closed.close(r))
      const live = h.source.peek() as TlsClientCredential
      h.source.set({ ...live, upstream: { ...live.upstream, port: deadPort, uri: `https://127.0.0.1:${deadPort}` } })
      const r = await request(h, '/version')
      assert.equal(r.status, 502)
      assert.equal(r.json().kind, 'Status')
      assert.match(r.json().message, new RegExp(`cannot reach the Kubernetes API server https://127\\.0\\.0\\.1:${deadPort}: .*ECONNREFUSED`))
      const up = await raw(h.port, `GET /api/v1/namespaces/default/pods/p1/exec HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n`)
      assert.match(up, /^HTTP\/1\.1 502 /)
      assert.equal(h.svc.health().status, 'degraded')
      h.source.set(live)
      assert.equal((await request(h, '/version')).status, 200)
      assert.equal(h.svc.health().status, 'ok')
    } finally {
      await h.stop()
    }
  })

  it('rides out the API server closing idle connections: requests go on over new connections, open watches keep theirs', async () => {
    const h = await harness()
    try {
      const watch = new Stream(h.port, '/api/v1/namespaces/default/pods?watch=true')
      await watch.waitFor(/"p1"/)
      let goaways = 0
      const churn = setInterval(() => (goaways += h.srv.goAway()), 5)
      const statuses: number[] = []
      await Promise.all(Array.from({ length: 8 }, async () => {
        for (let i = 0; i < 25; i++) statuses.push((await request(h, '/api/v1/namespaces/default/pods/p1')).status)
      }))
      clearInterval(churn)
      assert.ok(goaways >= 3, `the server sent ${goaways} GOAWAYs`)
      assert.deepEqual([...new Set(statuses)], [200])
      h.srv.addPod('after-goaways')
      await watch.waitFor(/after-goaways/)
      watch.close()
    } finally {
      await h.stop()
    }
  })

  it('gives up on an API server that accepts connections but never completes a handshake', async () => {
    const blackhole = net.createServer((s) => s.on('error', () => undefined))
    await new Promise<void>((r) => blackhole.listen(0, '127.0.0.1', r))
    const port = (blackhole.address() as net.AddressInfo).port
    const h = await harness({ connectTimeoutMs: 300 })
    try {
      const live = h.source.peek() as TlsClientCredential
      h.source.set({ ...live, upstream: { ...live.upstream, port, uri: `https://127.0.0.1:${port}` } })
      for (const attempt of ['first', 'second']) {
        const r = await request(h, '/version')
        assert.equal(r.status, 502, attempt)
        assert.match(r.json().message, /connecting took longer than 0\.3s/)
      }
      const up = await raw(h.port, 'GET /api/v1/namespaces/default/pods/p1/exec HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n')
      assert.match(up, /^HTTP\/1\.1 502 [\s\S]*connecting took longer than 0\.3s/)
    } finally {
      await h.stop()
      blackhole.close()
    }
  })

  it('keeps a watch streaming across a renewal while new requests use the new certificate', async () => {
    const h = await harness()
    const keepAlive = new http.Agent({ keepAlive: true })
    try {
      const first = h.source.peek() as TlsClientCredential
      const watch = new Stream(h.port, '/api/v1/namespaces/default/pods?watch=true')
      await watch.waitFor(/"ADDED".*"p1"/)
      h.source.set(await issueKubeCredential({ ca, server: h.srv, user: 'bot-ci', groups: ['devs', 'ops'] }))
      const second = h.source.peek() as TlsClientCredential
      assert.notEqual(first.serial, second.serial)
      h.srv.addPod('after-renewal')
      await watch.waitFor(/"ADDED".*"after-renewal"/)
      // A keep-alive client: its connection (and the API server connection paired with it) stays open.
      assert.equal((await request(h, '/api/v1/namespaces/default/pods/after-renewal', { agent: keepAlive })).status, 200)
      assert.equal(h.srv.requests.at(-1)?.serial, second.serial)
      assert.equal(h.srv.requests.find((r) => r.path.includes('watch=true'))?.serial, first.serial)
      assert.ok(h.srv.connectionSerials.includes(second.serial))
      assert.equal(watch.closed, false)
      watch.close()
      await until(() => h.srv.activeWatches === 0, 'the watch to end upstream')
      // The retired certificate's connections close once the last request on them is done.
      await until(() => !h.srv.openConnectionSerials().includes(first.serial), 'the old certificate\'s connections to close')
      assert.ok(h.srv.openConnectionSerials().includes(second.serial))
    } finally {
      keepAlive.destroy()
      await h.stop()
    }
  })

  it('counts requests, watches and upgrades in its metrics and reports itself without secrets', async () => {
    const h = await harness()
    try {
      await request(h, '/version')
      await request(h, '/nope')
      const watch = new Stream(h.port, '/api/v1/namespaces/default/pods?watch=1')
      await watch.waitFor(/ADDED/)
      const up = await raw(h.port, `GET /api/v1/namespaces/default/pods/missing/exec HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n`)
      assert.match(up, /^HTTP\/1\.1 404 /)
      const text = await h.metrics.metrics()
      assert.match(text, /memid_kube_proxy_requests_total\{cluster="test",code="200"\} 1/)
      assert.match(text, /memid_kube_proxy_requests_total\{cluster="test",code="404"\} 2/)
      assert.match(text, /memid_kube_proxy_active_watches\{cluster="test"\} 1/)
      assert.match(text, /memid_kube_proxy_upstream_latency_seconds_count\{cluster="test"\} [34]/)
      assert.match(text, /memid_kube_proxy_active_upgrades\{cluster="test"\} 0/)
      watch.close()
      await until(async () => /memid_kube_proxy_active_watches\{cluster="test"\} 0/.test(await h.metrics.metrics()), 'the watch gauge to drop')
      const d = h.svc.describe?.() ?? {}
      assert.equal(d.user, 'bot-ci')
      assert.deepEqual(d.groups, ['devs', 'ops'])
      assert.equal(d.serial, h.source.peek()?.serial)
      assert.doesNotMatch(JSON.stringify(d) + h.logs.join(''), /BEGIN|PRIVATE/)
    } finally {
      await h.stop()
    }
  })

  it('answers oversized headers with 431 and garbage with 400 without disturbing open streams', async () => {
    const h = await harness()
    try {
      const watch = new Stream(h.port, '/api/v1/namespaces/default/pods?watch=true')
      await watch.waitFor(/"p1"/)
      const big = await raw(h.port, `GET /version HTTP/1.1\r\nHost: localhost\r\nX-Big: ${'a'.repeat(MAX_HEADER_BYTES + 10)}\r\n\r\n`)
      assert.match(big, /^HTTP\/1\.1 431 /)
      const many = await raw(h.port, `GET /version HTTP/1.1\r\nHost: localhost\r\n${Array.from({ length: 2000 }, (_, i) => `X-${i}: v`).join('\r\n')}\r\n\r\n`)
      assert.match(many, /^HTTP\/1\.1 431 /)
      assert.match(await raw(h.port, Buffer.from([0x16, 0x03, 0x01, 0x00, 0xff, 0x01, 0, 0, 0xfb, 0x03, 0x03])), /^(HTTP\/1\.1 400 |$)/)
      assert.match(await raw(h.port, 'GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n'), /^HTTP\/1\.1 400 /)
      assert.match(await raw(h.port, '\x00\x01\x02\xff\r\n\r\n'), /^HTTP\/1\.1 400 /)
      await Promise.all(Array.from({ length: 20 }, (_, i) => raw(h.port, Buffer.from(Array.from({ length: 64 + i * 50 }, (_, j) => (i * 31 + j * 7) % 256)))))
      // A body that stops halfway, then the client vanishes.
      for (const path of ['/echo', '/slow']) {
        const cut = net.connect(h.port, '127.0.0.1')
        cut.on('error', () => undefined)
        cut.write(`POST ${path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n${'x'.repeat(5000)}`)
        await sleep(50)
        cut.destroy()
      }
      const chunked = net.connect(h.port, '127.0.0.1')
      chunked.on('error', () => undefined)
      chunked.write('POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\nZZZ\r\n')
      await sleep(50)
      chunked.destroy()
      // A truncated request: headers never finish; the proxy must not hold up anyone else.
      const half = net.connect(h.port, '127.0.0.1')
      half.on('error', () => undefined)
      half.write('GET /version HTTP/1.1\r\nHost: loc')
      h.srv.addPod('still-streaming')
      await watch.waitFor(/still-streaming/)
      assert.equal((await request(h, '/version')).status, 200)
      half.destroy()
      watch.close()
    } finally {
      await h.stop()
    }
  })

  it('listens on a unix socket (0600) and removes it on stop', async () => {
    const dir = mkdtempSync(path.join('/tmp', 'memid-kube-unit-'))
    const sock = path.join(dir, 'run', 'kube.sock')
    const h = await harness({ listen: sock })
    try {
      assert.equal(h.svc.address, sock)
      assert.equal(statSync(sock).mode & 0o777, 0o600)
      assert.equal(statSync(path.dirname(sock)).mode & 0o777, 0o700)
      const r = await request(h, '/api/v1/namespaces/default/pods', { socketPath: sock, headers: { host: 'localhost' } })
      assert.equal(r.status, 200)
    } finally {
      await h.stop()
      assert.equal(existsSync(sock), false)
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('stops within its deadline, closing open watches', async () => {
    const h = await harness()
    const watch = new Stream(h.port, '/api/v1/namespaces/default/pods?watch=true')
    await watch.waitFor(/"p1"/)
    const t0 = Date.now()
    await h.svc.stop(300)
    assert.ok(Date.now() - t0 < 2000)
    await until(() => watch.closed, 'the watch to be closed')
    assert.equal(h.svc.health().status, 'stopped')
    await until(() => h.srv.activeWatches === 0, 'the upstream watch to end')
  })
})
