import { after, describe, it } from 'node:test'
import http from 'node:http'
import net from 'node:net'
import assert from 'node:assert/strict'
import { parse } from 'yaml'
import { ConfigError } from '../../../src/core/errors.ts'
import { HostAllowList, resolveKubeProxyConfig } from '../../../src/services/kube-proxy/config.ts'
import {
  authority, downstreamResponseHeaders, isDiscovery, isWatch, upgradeRequestHead, upstreamHttp2Headers, upstreamRequestHeaders,
} from '../../../src/services/kube-proxy/headers.ts'
import { renderKubeconfig } from '../../../src/services/kube-proxy/kubeconfig.ts'
import { statusBody, warningHeader, writeRawStatus, writeStatus } from '../../../src/services/kube-proxy/status.ts'

describe('kube proxy config', () => {
  it('accepts host:port and socket paths, and names the key of a bad value', () => {
    assert.deepEqual(resolveKubeProxyConfig({ listen: '127.0.0.1:8001', cluster: 'prod' }).listen, { kind: 'tcp', host: '127.0.0.1', port: 8001 })
    assert.deepEqual(resolveKubeProxyConfig({ listen: '/run/memid/kube.sock', cluster: 'prod' }).listen, { kind: 'unix', path: '/run/memid/kube.sock' })
    assert.throws(() => resolveKubeProxyConfig({ listen: 'nope', cluster: 'prod' }), (e: unknown) => e instanceof ConfigError && /^listen: /.test(e.message))
    assert.throws(() => resolveKubeProxyConfig({ listen: '127.0.0.1:1', cluster: '../x' }), (e: unknown) => e instanceof ConfigError && /^cluster: /.test(e.message))
    assert.throws(
      () => resolveKubeProxyConfig({ listen: '127.0.0.1:1', cluster: 'a', allowedHosts: ['ok', 'bad host'] }),
      (e: unknown) => e instanceof ConfigError && /^allowedHosts\[1\]: /.test(e.message),
    )
  })

  it('allows the loopback names on any port by default and nothing else', () => {
    const { allowedHosts } = resolveKubeProxyConfig({ listen: '127.0.0.1:0', cluster: 'c' })
    for (const h of ['localhost', 'localhost:8001', '127.0.0.1', '127.0.0.1:8001', '[::1]', '[::1]:8001', 'LOCALHOST:1']) {
      assert.equal(allowedHosts.allows(h), true, h)
    }
    for (const h of [undefined, '', 'evil.example', 'evil.example:8001', 'localhost.evil.example', '127.0.0.2', '127.0.0.1.nip.io:8001',
      'localhost:8001:1', '[::1', 'localhost ', 'localhost\u0000', '[::2]:8001', '0.0.0.0']) {
      assert.equal(allowedHosts.allows(h), false, String(h))
    }
  })

  it('honours custom entries, with or without a port', () => {
    const list = new HostAllowList(['kube.internal', 'proxy.local:8443', '::1'])
    assert.equal(list.allows('kube.internal:1234'), true)
    assert.equal(list.allows('proxy.local:8443'), true)
    assert.equal(list.allows('proxy.local:8444'), false)
    assert.equal(list.allows('proxy.local'), false)
    assert.equal(list.allows('[::1]:9'), true)
    assert.equal(list.allows('localhost'), false)
  })

  it('IPv6 entries with and without brackets, ports matched exactly, entries trimmed and case-folded', () => {
    const list = new HostAllowList([' KUBE.Internal ', '[FE80::1]:6443', 'fe80::2', '[fe80::3]'])
    for (const h of ['kube.internal', 'KUBE.INTERNAL:1', '[fe80::1]:6443', '[FE80::1]:6443', 'fe80::2', '[fe80::2]:9', '[fe80::3]', '[fe80::3]:1']) {
      assert.equal(list.allows(h), true, h)
    }
    for (const h of ['[fe80::1]:6444', '[fe80::1]', 'fe80::1', 'fe80::1:6443', '[fe80::2', 'fe80::2]', '[fe80::2]x', 'fe80::2:9:zz', '[zz::1]', 'kube.internal:123456',
      'kube.internal:', ':6443', 'kube_internal', '[fe80::1]:123456', 'x:1:2']) {
      assert.equal(list.allows(h), false, h)
    }
  })

  it('names a long bad entry by its first 80 characters', () => {
    const long = `bad host ${'x'.repeat(100)}`
    assert.throws(() => new HostAllowList([long]), (e: unknown) => e instanceof ConfigError && e.message === `allowedHosts[0]: "${long.slice(0, 80)}" is not a host or host:port`)
  })

  it('refuses entries that are not a host or host:port, naming the entry', () => {
    for (const [i, bad] of ['', 'a b', '[::1', '[zz]', 'x:y:z', 'host:123456', ':80', 'https://h'].entries()) {
      assert.throws(() => new HostAllowList(['ok', bad]), (e: unknown) => e instanceof ConfigError && e.message === `allowedHosts[1]: "${bad}" is not a host or host:port`, `${i}: ${bad}`)
    }
  })

  it('a cached verdict is the same verdict: allowed stays allowed, refused stays refused', () => {
    const list = new HostAllowList(['localhost'])
    for (let i = 0; i < 3; i++) {
      assert.equal(list.allows('localhost:8001'), true)
      assert.equal(list.allows('evil.example'), false)
    }
    for (let i = 0; i < 31; i++) list.allows(`h${i}.example`)
    assert.equal(list.allows('localhost:8001'), true, 'after the cache was cleared')
    assert.equal(list.allows('evil.example'), false, 'after the cache was cleared')
  })

  it('keeps its verdict cache bounded under many distinct Host values', () => {
    const list = new HostAllowList(['localhost'])
    for (let i = 0; i < 1000; i++) {
      assert.equal(list.allows(`h${i}.example`), false)
      assert.ok(list.cachedVerdicts <= 32, String(list.cachedVerdicts))
    }
    assert.equal(list.allows('localhost:1'), true)
  })
})

describe('kube proxy headers', () => {
  const raw = [
    'Host', '127.0.0.1:8001', 'User-Agent', 'kubectl/v1.32', 'Authorization', 'Bearer stolen', 'Connection', 'keep-alive, X-Private',
    'X-Private', 'drop me', 'Keep-Alive', 'timeout=5', 'TE', 'trailers', 'Proxy-Authorization', 'Basic x', 'Accept', 'application/json',
    'Impersonate-User', 'alice', 'Accept', 'text/plain', 'Expect', '100-continue', 'Transfer-Encoding', 'chunked',
  ]

  it('sends the API server no hop-by-hop header, no Authorization, and its own Host', () => {
    assert.deepEqual(upstreamRequestHeaders(raw, '10.0.0.1:6443'), [
      'Host', '10.0.0.1:6443', 'User-Agent', 'kubectl/v1.32', 'Accept', 'application/json', 'Impersonate-User', 'alice', 'Accept', 'text/plain',
    ])
  })

  it('builds the same set as HTTP/2 headers, repeated names as lists', () => {
    assert.deepEqual(upstreamHttp2Headers('GET', '/api', raw, '10.0.0.1:6443'), {
      ':method': 'GET', ':path': '/api', ':authority': '10.0.0.1:6443', ':scheme': 'https',
      'user-agent': 'kubectl/v1.32', accept: ['application/json', 'text/plain'], 'impersonate-user': 'alice',
    })
  })

  it('keeps Upgrade and Connection: Upgrade for upgrades and nothing else hop-by-hop', () => {
    const head = upgradeRequestHead('GET', '/api/v1/namespaces/d/pods/p/exec?command=ls', [
      'Host', 'localhost:8001', 'Connection', 'Upgrade', 'Upgrade', 'websocket', 'Sec-WebSocket-Key', 'abc', 'Authorization', 'Bearer x',
      'Sec-WebSocket-Protocol', 'v5.channel.k8s.io', 'X-Evil', 'a\r\nInjected: yes',
    ], '[::1]:6443')
    assert.equal(head,
      'GET /api/v1/namespaces/d/pods/p/exec?command=ls HTTP/1.1\r\nHost: [::1]:6443\r\nConnection: Upgrade\r\n' +
      'Upgrade: websocket\r\nSec-WebSocket-Key: abc\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\nX-Evil: aInjected: yes\r\n\r\n')
  })

  it('drops hop-by-hop headers from responses', () => {
    assert.deepEqual(downstreamResponseHeaders(['Content-Type', 'application/json', 'Connection', 'close, X-Hop', 'X-Hop', '1',
      'Transfer-Encoding', 'chunked', 'Audit-Id', 'abc']), ['Content-Type', 'application/json', 'Audit-Id', 'abc'])
  })

  it('recognises watches', () => {
    assert.equal(isWatch('/api/v1/namespaces/d/pods?watch=true&resourceVersion=1'), true)
    assert.equal(isWatch('/api/v1/pods?resourceVersion=1&watch=1'), true)
    assert.equal(isWatch('/api/v1/watch/namespaces/d/pods'), true)
    assert.equal(isWatch('/apis/apps/v1/watch/deployments'), true)
    assert.equal(isWatch('/api/v1/pods?watch=false'), false)
    assert.equal(isWatch('/api/v1/namespaces/watch/pods'), false)
    assert.equal(isWatch('/api/v1/pods'), false)
  })
})

describe('kube proxy headers, each rule on its own', () => {
  const HOP = ['Connection', 'close', 'Keep-Alive', 'timeout=5', 'Proxy-Connection', 'keep-alive', 'Proxy-Authenticate', 'Basic', 'Proxy-Authorization', 'Basic x',
    'TE', 'trailers', 'Trailer', 'Expires', 'Transfer-Encoding', 'chunked', 'Upgrade', 'websocket']

  it('every hop-by-hop header is dropped by name alone (Connection naming none of them)', () => {
    const raw = [...HOP, 'Accept', 'a']
    assert.deepEqual(upstreamRequestHeaders(raw, 'h:1'), ['Host', 'h:1', 'Accept', 'a'])
    assert.deepEqual(downstreamResponseHeaders(raw), ['Accept', 'a'])
    assert.deepEqual(upstreamHttp2Headers('GET', '/api', raw, 'h:1'), { ':method': 'GET', ':path': '/api', ':authority': 'h:1', ':scheme': 'https', accept: 'a' })
    assert.equal(upgradeRequestHead('GET', '/x', raw, 'h:1'), 'GET /x HTTP/1.1\r\nHost: h:1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nAccept: a\r\n\r\n')
  })

  it('a crafted pseudo-header never reaches the API server', () => {
    const raw = [':authority', 'evil', ':method', 'DELETE', ':path', '/api/v1/secrets', ':scheme', 'http', 'Accept', 'a']
    assert.deepEqual(upstreamHttp2Headers('GET', '/api', raw, 'h:1'), { ':method': 'GET', ':path': '/api', ':authority': 'h:1', ':scheme': 'https', accept: 'a' })
    assert.deepEqual(upstreamRequestHeaders(raw, 'h:1'), ['Host', 'h:1', 'Accept', 'a'])
  })

  it('without a Connection header nothing else is dropped, in each direction', () => {
    const raw = ['Accept', 'a', 'X-Ref', 'Impersonate-User', 'Impersonate-User', 'alice']
    assert.deepEqual(upstreamRequestHeaders(raw, 'h:1'), ['Host', 'h:1', ...raw])
    assert.deepEqual(downstreamResponseHeaders(raw), raw)
    assert.deepEqual(upstreamHttp2Headers('GET', '/', raw, 'h:1'), { ':method': 'GET', ':path': '/', ':authority': 'h:1', ':scheme': 'https', accept: 'a', 'x-ref': 'Impersonate-User', 'impersonate-user': 'alice' })
    assert.equal(upgradeRequestHead('GET', '/', raw, 'h:1'), 'GET / HTTP/1.1\r\nHost: h:1\r\nConnection: Upgrade\r\nAccept: a\r\nX-Ref: Impersonate-User\r\nImpersonate-User: alice\r\n\r\n')
  })

  it('a header repeated three times becomes a list of three in HTTP/2', () => {
    assert.deepEqual(upstreamHttp2Headers('GET', '/', ['Accept', 'a', 'Accept', 'b', 'Accept', 'c'], 'h:1').accept, ['a', 'b', 'c'])
  })

  it('authority brackets IPv6 hosts', () => {
    assert.equal(authority('::1', 6443), '[::1]:6443')
    assert.equal(authority('10.0.0.1', 443), '10.0.0.1:443')
  })

  it('watch and discovery paths are matched from the start of the path, not in the query or a prefix', () => {
    assert.equal(isWatch('/api/v1/watch/'), true)
    assert.equal(isWatch('/api/v1?x=/watch/'), false)
    assert.equal(isWatch('/x/api/v1/watch/pods'), false)
    assert.equal(isDiscovery('/foo/api'), false)
    assert.equal(isDiscovery('/x/version'), false)
  })
})

describe('kube proxy Status answers on the wire', () => {
  const servers: (http.Server | net.Server)[] = []
  after(() => servers.forEach((s) => s.close()))

  it('writeStatus sends the Status with JSON, no-cache and, when asked, the Warning', async () => {
    const server = http.createServer((req, res) => writeStatus(res, 503, 'ServiceUnavailable', 'no certificate', req.url === '/warn'))
    servers.push(server)
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const base = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`
    for (const warn of [false, true]) {
      const res = await fetch(`${base}/${warn ? 'warn' : 'plain'}`)
      assert.equal(res.status, 503)
      assert.equal(res.headers.get('content-type'), 'application/json')
      assert.equal(res.headers.get('cache-control'), 'no-cache, private')
      assert.equal(res.headers.get('warning'), warn ? '299 - "no certificate"' : null)
      assert.deepEqual(await res.json(), JSON.parse(statusBody(503, 'ServiceUnavailable', 'no certificate')))
    }
  })

  it('writeStatus after the headers went out cuts the response instead', async () => {
    const server = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-length': '100' })
      res.write('partial')
      writeStatus(res, 502, 'InternalError', 'upstream went away')
    })
    servers.push(server)
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/`
    // Cut, not left hanging until the client gives up.
    await assert.rejects(fetch(url, { signal: AbortSignal.timeout(3000) }).then((r) => r.text()),
      (e: unknown) => e instanceof Error && e.name !== 'TimeoutError' && /other side closed|terminated/.test(String((e as { cause?: unknown }).cause ?? e.message)))
  })

  it('writeRawStatus answers a raw socket with the reason phrase of each code, then closes it', async () => {
    for (const [code, phrase] of [[400, 'Bad Request'], [403, 'Forbidden'], [408, 'Request Timeout'], [431, 'Request Header Fields Too Large'],
      [502, 'Bad Gateway'], [503, 'Service Unavailable'], [599, 'Error']] as const) {
      const server = net.createServer((s) => writeRawStatus(s, code, 'BadRequest', 'nope'))
      servers.push(server)
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
      const got = await new Promise<string>((resolve, reject) => {
        let text = ''
        const c = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1')
        c.on('data', (d) => (text += d))
        c.on('end', () => resolve(text))
        c.on('error', reject)
      })
      const body = statusBody(code, 'BadRequest', 'nope')
      assert.equal(got, `HTTP/1.1 ${code} ${phrase}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
    }
  })

  it('writeRawStatus on a socket that is already gone only destroys it', () => {
    let destroyed = 0
    let written = 0
    const gone = { destroyed: true, writable: false, destroy: () => void destroyed++, end: () => void written++ }
    writeRawStatus(gone as unknown as net.Socket, 400, 'BadRequest', 'x')
    const halfGone = { destroyed: false, writable: false, destroy: () => void destroyed++, end: () => void written++ }
    writeRawStatus(halfGone as unknown as net.Socket, 400, 'BadRequest', 'x')
    assert.deepEqual([destroyed, written], [2, 0])
  })
})

describe('kube proxy discovery paths', () => {
  it('are the ones kubectl reads (and caches) before anything else', () => {
    for (const p of ['/version?timeout=5s', '/api', '/apis?timeout=32s', '/api/v1', '/apis/apps/v1', '/apis/apps', '/openapi/v3/apis/apps/v1']) assert.equal(isDiscovery(p), true, p)
    for (const p of ['/api/v1/pods', '/apis/apps/v1/deployments', '/api/v1/namespaces/d/pods/p/exec', '/healthz']) assert.equal(isDiscovery(p), false, p)
  })
})

describe('kube proxy Status bodies', () => {
  it('carry the message as a Warning header kubectl prints, quoted and ASCII only', () => {
    assert.equal(warningHeader('memid: the "x" cert\\ expired\n — now'), '299 - "memid: the \\"x\\" cert\\\\ expired? ? now"')
  })

  it('are Kubernetes Status objects', () => {
    assert.deepEqual(JSON.parse(statusBody(503, 'ServiceUnavailable', 'memid: expired')), {
      kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: 'memid: expired', reason: 'ServiceUnavailable', code: 503,
    })
  })
})

describe('renderKubeconfig', () => {
  it('has one context per proxy, the first current, server URLs and no credentials', () => {
    const text = renderKubeconfig([
      { name: 'prod', cluster: 'prod', server: 'http://127.0.0.1:8001' },
      { name: 'staging', cluster: 'staging', server: 'http://127.0.0.1:8002' },
    ])
    const doc = parse(text) as Record<string, any>
    assert.equal(doc.apiVersion, 'v1')
    assert.equal(doc.kind, 'Config')
    assert.equal(doc['current-context'], 'prod')
    assert.deepEqual(doc.clusters, [
      { name: 'prod', cluster: { server: 'http://127.0.0.1:8001' } },
      { name: 'staging', cluster: { server: 'http://127.0.0.1:8002' } },
    ])
    assert.deepEqual(doc.contexts.map((c: any) => [c.name, c.context.cluster, c.context.user]), [['prod', 'prod', 'memid'], ['staging', 'staging', 'memid']])
    assert.deepEqual(doc.users, [{ name: 'memid', user: {} }])
    assert.doesNotMatch(text, /certificate|key-data|token|password|BEGIN/i)
  })

  it('refuses an empty list and duplicate names', () => {
    assert.throws(() => renderKubeconfig([]), TypeError)
    assert.throws(() => renderKubeconfig([{ name: 'a', cluster: 'a', server: 'http://x' }, { name: 'a', cluster: 'b', server: 'http://y' }]), /duplicate/)
  })
})
