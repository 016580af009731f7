/**
 * The kube proxy's HTTP/1.1 pass-through on the wire: raw bytes from a client (as kubectl,
 * or as an attacker on the same machine), a real mutual-TLS API server stand-in (Node's
 * https server requiring the client certificate) whose behaviour each test sets.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import type { Duplex } from 'node:stream'
import type { TLSSocket } from 'node:tls'
import { Registry } from 'prom-client'
import type { Clock } from '../../../src/core/clock.ts'
import { createLogger } from '../../../src/core/log.ts'
import { CredentialSource, type TlsClientCredential } from '../../../src/credentials/credentials.ts'
import type { X509Authority } from '../../../src/pki/x509.ts'
import { createKubeProxyService, type KubeProxyTuning } from '../../../src/services/kube-proxy/index.ts'
import type { Service } from '../../../src/services/service.ts'
import { serverCertificate, testCa } from '../../fixtures/db-tunnel.ts'
import { issueKubeCredential } from '../../fixtures/kube-client.ts'

const norm = (serial: string) => serial.toLowerCase().replace(/^0+/, '')
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function until(check: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

interface Seen {
  method: string
  url: string
  headers: http.IncomingHttpHeaders
  body: Buffer
  serial: string
}

/** The API server stand-in: records each request; `handle` answers it (default: 200 "ok"). */
class Upstream {
  readonly seen: Seen[] = []
  /** Serials of the client certificates of the TLS connections open right now. */
  readonly open = new Map<TLSSocket, string>()
  /** Every byte that reached the server, whether or not it parsed as a request. */
  received = ''
  handle: (req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) => void = (_req, res) => res.end('ok')
  server!: https.Server
  port = 0
  caPem = ''

  async start(clientCa: X509Authority): Promise<void> {
    const serverCa = await testCa('kube server CA')
    const cert = await serverCertificate(serverCa)
    this.caPem = serverCa.certPem
    this.server = https.createServer({ key: cert.keyPem, cert: cert.certPem, ca: clientCa.certPem, requestCert: true, rejectUnauthorized: true }, (req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        const body = Buffer.concat(chunks)
        this.seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body, serial: norm((req.socket as TLSSocket).getPeerCertificate().serialNumber) })
        this.handle(req, res, body)
      })
    })
    this.server.on('secureConnection', (s: TLSSocket) => {
      this.open.set(s, norm(s.getPeerCertificate().serialNumber))
      s.on('data', (d: Buffer) => (this.received += d.toString('latin1')))
      s.once('close', () => this.open.delete(s))
    })
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r))
    this.port = (this.server.address() as net.AddressInfo).port
  }

  get ref(): { url: string; host: string; port: number; caPem: string } {
    return { url: `https://127.0.0.1:${this.port}`, host: '127.0.0.1', port: this.port, caPem: this.caPem }
  }

  stop(): void {
    this.server.closeAllConnections()
    this.server.close()
  }
}

let ca: X509Authority
const upstream = new Upstream()
let svc: Service
let source: CredentialSource<TlsClientCredential>
let port = 0
let metrics: Registry

async function startProxy(tuning: KubeProxyTuning = {}): Promise<void> {
  source = new CredentialSource<TlsClientCredential>('kube-proxy:test certificate', { now: () => Date.now() } as Clock)
  source.set(await issueKubeCredential({ ca, server: upstream.ref }))
  metrics = new Registry()
  svc = createKubeProxyService({ listen: '127.0.0.1:0', cluster: 'test', ...tuning }, {
    credentials: source, clock: { now: () => Date.now() } as Clock, metrics, logger: createLogger({ level: 'silent' }),
  })
  await svc.start()
  port = Number(svc.address.split(':').pop())
}

before(async () => {
  ca = await testCa('kube client CA')
  await upstream.start(ca)
  await startProxy()
})

after(async () => {
  await svc.stop(200)
  upstream.stop()
})

/** Writes `parts` (with a pause between them), collects what comes back until the proxy closes (or `ms` pass). */
function raw(parts: (string | Buffer)[], ms = 3000, gapMs = 0): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1')
    let text = ''
    let closed = false
    s.on('data', (d) => (text += d.toString('latin1')))
    s.on('error', () => undefined)
    s.on('end', () => (closed = true))
    s.on('close', () => resolve({ text, closed }))
    void (async () => {
      for (const p of parts) {
        if (s.destroyed) return
        s.write(p)
        if (gapMs > 0) await sleep(gapMs)
      }
    })()
    setTimeout(() => s.destroy(), ms).unref()
  })
}

const statuses = (text: string) => [...text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]))
const get = (path: string, extra = '') => `GET ${path} HTTP/1.1\r\nHost: localhost\r\n${extra}\r\n`

describe('kube proxy HTTP/1.1 pass-through', () => {
  it('answers pipelined requests in order, a locally refused one in the middle held until the one before it is answered', async () => {
    upstream.seen.length = 0
    upstream.handle = (req, res, body) => {
      if (req.url === '/slow-first') setTimeout(() => res.end('first'), 200)
      else if (req.url === '/echo') res.end(`echo:${body.toString()}`)
      else res.end(`answer:${req.url}`)
    }
    const { text, closed } = await raw([
      get('/slow-first') +
      'GET /refused HTTP/1.1\r\nHost: evil.example\r\n\r\n' +
      'POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello' +
      get('/last', 'Connection: close\r\n'),
    ])
    assert.ok(closed)
    assert.deepEqual(statuses(text), [200, 403, 200, 200])
    const order = ['first', '"reason":"Forbidden"', 'echo:hello', 'answer:/last'].map((m) => text.indexOf(m))
    assert.ok(order.every((at, i) => at > 0 && (i === 0 || at > (order[i - 1] as number))), `order ${order.join(',')} in ${text}`)
    assert.deepEqual(upstream.seen.map((s) => s.url), ['/slow-first', '/echo', '/last'])
  })

  it('forwards request bodies byte-exact, with Content-Length and chunked, split anywhere', async () => {
    upstream.seen.length = 0
    upstream.handle = (req, res, body) => res.end(`${req.headers['transfer-encoding'] ?? `cl=${req.headers['content-length']}`} ${body.length} ${createHash('sha256').update(body).digest('hex')}`)
    const body = Buffer.from(Array.from({ length: 70_000 }, (_, i) => (i * 7 + 3) % 256))
    const digest = createHash('sha256').update(body).digest('hex')
    const chunked = Buffer.concat([
      Buffer.from('1\r\n'), body.subarray(0, 1), Buffer.from('\r\n64;ext=1\r\n'), body.subarray(1, 101), Buffer.from('\r\n'),
      Buffer.from(`${(body.length - 101).toString(16)}\r\n`), body.subarray(101), Buffer.from('\r\n0\r\nX-Trailer: t\r\n\r\n'),
    ])
    const wire = Buffer.concat([
      Buffer.from(`POST /cl HTTP/1.1\r\nHost: localhost\r\nContent-Length: ${body.length}\r\n\r\n`), body,
      Buffer.from('POST /chunked HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n'), chunked,
    ])
    const parts: Buffer[] = []
    for (let at = 0; at < wire.length; at += 7777) parts.push(wire.subarray(at, at + 7777))
    const { text } = await raw(parts, 5000, 2)
    assert.deepEqual(statuses(text), [200, 200])
    assert.ok(text.includes(`cl=${body.length} ${body.length} ${digest}`), text)
    assert.ok(text.includes(`chunked ${body.length} ${digest}`), text)
    assert.deepEqual(upstream.seen.map((s) => s.body.equals(body)), [true, true])
  })

  it('refuses request smuggling with 400 before anything reaches the API server', async () => {
    upstream.seen.length = 0
    const smuggled = 'GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n'
    const attacks = [
      `POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`,
      `POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n${smuggled}`,
      `POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`,
      `POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello${smuggled}`,
      `POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${smuggled}`,
      `POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n${smuggled}`,
      `POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n${smuggled}`,
      `POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length : 5\r\n\r\nhello${smuggled}`,
      `POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: +5\r\n\r\nhello${smuggled}`,
      `GET /a HTTP/1.1\nHost: localhost\n\n${smuggled}`,
      `GET /a HTTP/1.1\r\nHost: localhost\nX: y\r\n\r\n${smuggled}`,
      `GET /a HTTP/1.1\r\nHost: localhost\r\nX: a\r\n folded\r\n\r\n${smuggled}`,
      `GET /a HTTP/1.1\r\nHost: localhost\r\nX: a\rb\r\n\r\n${smuggled}`,
      `GET /a HTTP/1.1\r\nHost: local\x00host\r\n\r\n${smuggled}`,
      `GET /a b HTTP/1.1\r\nHost: localhost\r\n\r\n${smuggled}`,
    ]
    upstream.handle = (_req, res) => res.end('warm')
    upstream.received = ''
    for (const attack of attacks) {
      // After a first request, so the connection to the API server is open and anything
      // forwarded would reach it at once.
      const { text, closed } = await raw([get('/warm'), attack], 3000, 150)
      assert.deepEqual(statuses(text), [200, 400], JSON.stringify(attack))
      assert.match(text, /warmHTTP\/1\.1 400 Bad Request\r\n/, JSON.stringify(attack))
      assert.ok(closed, JSON.stringify(attack))
    }
    assert.deepEqual(upstream.seen.map((r) => r.url), attacks.map(() => '/warm'))
    assert.deepEqual(upstream.received.match(/^[A-Z]+ \S+/gm), attacks.map(() => 'GET /warm'), 'not a byte of an attack reached the API server')
  })

  it('closes kubectl\'s connection after an answer the API server marks Connection: close', async () => {
    upstream.seen.length = 0
    upstream.handle = (req, res) => {
      if (req.url === '/bye') res.setHeader('Connection', 'close')
      res.end(`answer:${req.url}`)
    }
    const { text, closed } = await raw([get('/bye') + get('/after')])
    assert.ok(closed)
    assert.deepEqual(statuses(text), [200])
    assert.match(text, /\r\nConnection: close\r\n[\s\S]*answer:\/bye$/)
    assert.deepEqual(upstream.seen.map((s) => s.url), ['/bye'])
  })

  it('closes kubectl\'s connection when the API server dies in the middle of a body, and answers 502 when it dies before any byte', async () => {
    upstream.handle = (req, res) => {
      if (req.url === '/cut') {
        res.writeHead(200, { 'content-length': 1000 })
        res.write('x'.repeat(10))
        setTimeout(() => req.socket.destroy(), 50)
      } else {
        req.socket.destroy()
      }
    }
    const t0 = Date.now()
    const cut = await raw([get('/cut')])
    assert.ok(cut.closed || Date.now() - t0 < 2500, 'closed by the proxy, not by the test\'s timer')
    assert.match(cut.text, /^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nxxxxxxxxxx$/)
    const died = await raw([get('/die')])
    assert.match(died.text, /^HTTP\/1\.1 502 Bad Gateway\r\n/)
    assert.match(died.text, /"kind":"Status".*cannot reach the Kubernetes API server/)
  })

  it('ends the upstream request when kubectl leaves in the middle of a watch, and the watch gauge drops', async () => {
    let ended = 0
    upstream.handle = (req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' })
      const t = setInterval(() => res.write('{"type":"MODIFIED"}\n'), 20)
      res.on('close', () => {
        clearInterval(t)
        ended++
      })
    }
    const got = await new Promise<http.ClientRequest>((resolve) => {
      const req = http.get({ host: '127.0.0.1', port, path: '/api/v1/pods?watch=true', agent: false }, (res) => res.once('data', () => resolve(req)))
      req.on('error', () => undefined)
    })
    assert.equal(svc.describe?.().activeWatches, 1)
    got.destroy()
    await until(() => ended === 1, 'the API server to see the watch end')
    await until(() => svc.describe?.().activeWatches === 0, 'the watch gauge to drop')
  })

  it('stops reading from the API server while kubectl does not read, and from kubectl while the API server does not', async () => {
    let written = 0
    let bodyRead = 0
    let release: (() => void) | undefined
    upstream.handle = () => undefined
    const server = upstream.server
    // This test answers from the request event itself, before the body is read.
    const early = (req: http.IncomingMessage, res: http.ServerResponse) => {
      if (req.url === '/big-answer') {
        const chunk = Buffer.alloc(64 * 1024, 0x61)
        const pump = () => {
          while (written < 64 * 1024 * 1024) {
            written += chunk.length
            if (!res.write(chunk)) return void res.once('drain', pump)
          }
          res.end()
        }
        res.writeHead(200, { 'content-type': 'application/octet-stream' })
        pump()
      } else if (req.url === '/big-body') {
        req.pause()
        release = () => {
          req.on('data', (c: Buffer) => (bodyRead += c.length))
          req.resume()
        }
        req.on('end', () => res.end(`read ${bodyRead}`))
      }
    }
    server.prependListener('request', early)
    try {
      const reader = net.connect(port, '127.0.0.1')
      reader.on('error', () => undefined)
      reader.write(get('/big-answer'))
      reader.pause()
      await sleep(700)
      const stalled = written
      await sleep(300)
      assert.equal(written, stalled, 'the API server is held back')
      assert.ok(written < 16 * 1024 * 1024, `${written} bytes went out while kubectl read nothing`)
      let got = 0
      reader.on('data', (d: Buffer) => (got += d.length))
      reader.resume()
      await until(() => got > 64 * 1024 * 1024, 'the whole answer', 20_000)
      reader.destroy()

      const size = 32 * 1024 * 1024
      const writer = net.connect(port, '127.0.0.1')
      writer.on('error', () => undefined)
      let answer = ''
      writer.on('data', (d) => (answer += d.toString()))
      writer.write(`POST /big-body HTTP/1.1\r\nHost: localhost\r\nContent-Length: ${size}\r\n\r\n`)
      writer.write(Buffer.alloc(size, 0x62))
      await sleep(700)
      const queued = writer.writableLength
      assert.ok(queued > size / 4, `only ${queued} bytes left unread by the proxy while the API server read nothing`)
      release?.()
      await until(() => answer.includes(`read ${size}`), 'the API server to read the whole body', 20_000)
      writer.destroy()
    } finally {
      server.removeListener('request', early)
    }
  })

  it('holds what follows an upgrade request until the API server answers 101; after a refusal it never reaches the API server', async () => {
    const upgradeHead = (path: string) => `GET ${path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n`
    // Without an 'upgrade' listener Node's server answers an upgrade request as an ordinary
    // one and reads what follows as the next request: what an API server refusing it may do.
    upstream.handle = (req, res) => {
      res.statusCode = 404
      res.end(`refused:${req.url}`)
    }
    upstream.received = ''
    const refused = await raw([`${upgradeHead('/exec-missing')}GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n`])
    assert.deepEqual(statuses(refused.text), [404])
    assert.ok(refused.closed)
    assert.ok(!upstream.received.includes('/smuggled'), 'the bytes after a refused upgrade never reach the API server')

    const tunnel = (req: http.IncomingMessage, socket: Duplex) => {
      socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n')
      socket.on('data', (d: Buffer) => socket.write(`echo:${d.toString()}`))
      socket.on('error', () => undefined)
      void req
    }
    upstream.server.on('upgrade', tunnel)
    try {
      const s = net.connect(port, '127.0.0.1')
      let text = ''
      s.on('data', (d) => (text += d.toString('latin1')))
      s.write(`${upgradeHead('/exec')}early-bytes`)
      await until(() => text.includes('echo:early-bytes'), 'the held bytes to reach the API server after its 101')
      assert.match(text, /^HTTP\/1\.1 101 Switching Protocols\r\n/)
      assert.equal(svc.describe?.().activeUpgrades, 1)
      s.write('later')
      await until(() => text.includes('echo:later'), 'the tunnel to carry bytes both ways')
      s.destroy()
      await until(() => svc.describe?.().activeUpgrades === 0, 'the upgrade gauge to drop')
    } finally {
      upstream.server.removeListener('upgrade', tunnel)
    }
  })

  it('passes 100 Continue through, then the answer', async () => {
    upstream.handle = (_req, res, body) => res.end(`got:${body.toString()}`)
    const s = net.connect(port, '127.0.0.1')
    let text = ''
    s.on('data', (d) => (text += d.toString('latin1')))
    s.write('POST /expect HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n')
    await until(() => text.includes('\r\n\r\n'), 'the interim answer')
    assert.match(text, /^HTTP\/1\.1 100 Continue\r\n\r\n$/)
    s.write('hello')
    await until(() => text.endsWith('got:hello'), 'the final answer')
    s.destroy()
  })

  it('passes an answer delimited by the end of the connection (an HTTP/1.0 request) through whole, then closes', async () => {
    upstream.handle = (_req, res) => {
      res.write('part1-')
      setTimeout(() => res.end('part2'), 50)
    }
    const { text, closed } = await raw(['GET /old HTTP/1.0\r\nHost: localhost\r\n\r\n'])
    assert.ok(closed)
    assert.match(text, /^HTTP\/1\.1 200 OK\r\n/)
    assert.doesNotMatch(text, /content-length|transfer-encoding/i)
    assert.ok(text.endsWith('\r\n\r\npart1-part2'), text)
    assert.equal(upstream.seen.at(-1)?.url, '/old')
  })

  it('answers HEAD without a body and serves the next request on the same connection', async () => {
    upstream.handle = (req, res) => {
      res.setHeader('content-length', 5)
      res.end(req.method === 'HEAD' ? undefined : 'after')
    }
    const { text } = await raw([`HEAD /h HTTP/1.1\r\nHost: localhost\r\n\r\n${get('/after', 'Connection: close\r\n')}`])
    assert.deepEqual(statuses(text), [200, 200])
    assert.ok(text.endsWith('\r\n\r\nafter'), text)
  })

  it('a renewal moves a keep-alive connection to the new certificate at its next request (new serial seen), the old connection closed', async () => {
    upstream.handle = (_req, res) => res.end('ok')
    upstream.seen.length = 0
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
    const once = () => new Promise<{ reused: boolean }>((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port, path: '/version', agent }, (res) => {
        res.resume()
        res.on('end', () => resolve({ reused: req.reusedSocket }))
      })
      req.on('error', reject)
    })
    try {
      await once()
      const first = norm(source.peek()?.serial ?? '')
      assert.equal(upstream.seen.at(-1)?.serial, first)
      source.set(await issueKubeCredential({ ca, server: upstream.ref }))
      const second = norm(source.peek()?.serial ?? '')
      assert.notEqual(first, second)
      assert.deepEqual(await once(), { reused: true })
      assert.equal(upstream.seen.at(-1)?.serial, second)
      await until(() => ![...upstream.open.values()].includes(first), 'the old certificate\'s connection to close')
    } finally {
      agent.destroy()
    }
  })

  it('never crashes on oversized, truncated or garbage input, and keeps serving', async () => {
    upstream.handle = (_req, res) => res.end('ok')
    // A fixed seed: a failure reproduces.
    let seed = 0x13572468
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) >>> 0
      return seed % n
    }
    const valid = Buffer.from('POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nX-A: b\r\n\r\nbody' + get('/y'))
    const inputs: Buffer[] = [
      Buffer.from(`GET / HTTP/1.1\r\nHost: localhost\r\nX: ${'a'.repeat(40_000)}\r\n\r\n`),
      Buffer.alloc(100_000, 0x41),
      Buffer.from(`GET /${'p'.repeat(20_000)} HTTP/1.1\r\n\r\n`),
    ]
    for (let i = 0; i < 240; i++) {
      const b = Buffer.from(valid)
      const kind = i % 4
      if (kind === 0) for (let k = 0; k < 1 + rand(4); k++) b[rand(b.length)] = rand(256)
      if (kind === 1) inputs.push(b.subarray(0, rand(b.length)))
      else if (kind === 2) inputs.push(Buffer.from(Array.from({ length: 1 + rand(3000) }, () => rand(256))))
      else if (kind === 3) {
        const at = rand(b.length)
        inputs.push(Buffer.concat([b.subarray(0, at), Buffer.from(['\r', '\n', '\0', ':', ' ', '\r\n\r\n'][rand(6)] as string), b.subarray(at)]))
      } else inputs.push(b)
    }
    for (let i = 0; i < inputs.length; i += 24) await Promise.all(inputs.slice(i, i + 24).map((input) => raw([input], 400)))
    const { text } = await raw([get('/still', 'Connection: close\r\n')])
    assert.deepEqual(statuses(text), [200])
    assert.equal(svc.health().status, 'ok')
  })
})

describe('kube proxy headers timeout', () => {
  it('answers 408 when a request head does not arrive in time, and closes', async () => {
    await svc.stop(200)
    await startProxy({ headersTimeoutMs: 300 })
    const t0 = Date.now()
    const { text, closed } = await raw(['GET /version HTTP/1.1\r\nHost: loc'])
    assert.match(text, /^HTTP\/1\.1 408 Request Timeout\r\n/)
    assert.ok(closed)
    assert.ok(Date.now() - t0 < 2500)
  })
})
