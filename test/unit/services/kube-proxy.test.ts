import { after, describe, it } from 'node:test'
import http from 'node:http'
import net from 'node:net'
import assert from 'node:assert/strict'
import { parse } from 'yaml'
import { ConfigError } from '../../../src/core/errors.ts'
import { HostAllowList, resolveKubeProxyConfig } from '../../../src/services/kube-proxy/config.ts'
import { isDiscovery, isWatch, requestHead } from '../../../src/services/kube-proxy/headers.ts'
import { hostPort } from '../../../src/core/listener.ts'
import { renderKubeconfig } from '../../../src/services/kube-proxy/kubeconfig.ts'
import { statusBody, statusResponse, warningHeader, writeRawStatus } from '../../../src/services/kube-proxy/status.ts'

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
    assert.equal(requestHead('GET', '/api?x=1', 1, raw, '10.0.0.1:6443', 'plain', false),
      'GET /api?x=1 HTTP/1.1\r\nHost: 10.0.0.1:6443\r\nUser-Agent: kubectl/v1.32\r\nAccept: application/json\r\nImpersonate-User: alice\r\n' +
      'Accept: text/plain\r\nExpect: 100-continue\r\n\r\n')
  })

  it('keeps Transfer-Encoding for a chunked body, and Content-Length even when Connection names it', () => {
    assert.equal(requestHead('POST', '/x', 1, ['Transfer-Encoding', 'gzip, chunked', 'Connection', 'transfer-encoding'], 'h:1', 'chunked', false),
      'POST /x HTTP/1.1\r\nHost: h:1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n')
    assert.equal(requestHead('POST', '/x', 1, ['Content-Length', '5', 'Connection', 'Content-Length, close'], 'h:1', 'plain', true),
      'POST /x HTTP/1.1\r\nHost: h:1\r\nConnection: close\r\nContent-Length: 5\r\n\r\n')
  })

  it('keeps the HTTP version of the request line', () => {
    assert.equal(requestHead('GET', '/version', 0, [], 'h:1', 'plain', true), 'GET /version HTTP/1.0\r\nHost: h:1\r\nConnection: close\r\n\r\n')
  })

  it('keeps Upgrade and Connection: Upgrade for upgrades and nothing else hop-by-hop', () => {
    const head = requestHead('GET', '/api/v1/namespaces/d/pods/p/exec?command=ls', 1, [
      'Host', 'localhost:8001', 'Connection', 'Upgrade', 'Upgrade', 'websocket', 'Sec-WebSocket-Key', 'abc', 'Authorization', 'Bearer x',
      'Sec-WebSocket-Protocol', 'v5.channel.k8s.io', 'X-Evil', 'a\r\nInjected: yes', 'Transfer-Encoding', 'chunked',
    ], '[::1]:6443', 'upgrade', false)
    assert.equal(head,
      'GET /api/v1/namespaces/d/pods/p/exec?command=ls HTTP/1.1\r\nHost: [::1]:6443\r\nConnection: Upgrade\r\n' +
      'Upgrade: websocket\r\nSec-WebSocket-Key: abc\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\nX-Evil: aInjected: yes\r\n\r\n')
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
    assert.equal(requestHead('GET', '/x', 1, raw, 'h:1', 'plain', false), 'GET /x HTTP/1.1\r\nHost: h:1\r\nAccept: a\r\n\r\n')
    assert.equal(requestHead('GET', '/x', 1, raw, 'h:1', 'upgrade', false), 'GET /x HTTP/1.1\r\nHost: h:1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nAccept: a\r\n\r\n')
  })

  it('without a Connection header nothing else is dropped', () => {
    const raw = ['Accept', 'a', 'X-Ref', 'Impersonate-User', 'Impersonate-User', 'alice']
    assert.equal(requestHead('GET', '/', 1, raw, 'h:1', 'plain', false), 'GET / HTTP/1.1\r\nHost: h:1\r\nAccept: a\r\nX-Ref: Impersonate-User\r\nImpersonate-User: alice\r\n\r\n')
    assert.equal(requestHead('GET', '/', 1, raw, 'h:1', 'upgrade', false), 'GET / HTTP/1.1\r\nHost: h:1\r\nConnection: Upgrade\r\nAccept: a\r\nX-Ref: Impersonate-User\r\nImpersonate-User: alice\r\n\r\n')
  })

  it('the authority (hostPort) brackets IPv6 hosts', () => {
    assert.equal(hostPort('::1', 6443), '[::1]:6443')
    assert.equal(hostPort('10.0.0.1', 443), '10.0.0.1:443')
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

  it('statusResponse is a whole response with the Status as JSON, no-cache and, when asked, the Warning and Connection: close', () => {
    const body = statusBody(503, 'ServiceUnavailable', 'no certificate')
    assert.equal(statusResponse(503, 'ServiceUnavailable', 'no certificate', false, false),
      `HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\nContent-Length: ${body.length}\r\n\r\n${body}`)
    assert.equal(statusResponse(503, 'ServiceUnavailable', 'no certificate', true, true),
      `HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\nContent-Length: ${body.length}\r\n` +
      `Warning: 299 - "no certificate"\r\nConnection: close\r\n\r\n${body}`)
    const wide = statusResponse(502, 'ServiceUnavailable', 'déjà vu', false, false)
    assert.equal(Number(/Content-Length: (\d+)/.exec(wide)?.[1]), Buffer.byteLength(statusBody(502, 'ServiceUnavailable', 'déjà vu')))
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
      assert.equal(got, `HTTP/1.1 ${code} ${phrase}\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
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
