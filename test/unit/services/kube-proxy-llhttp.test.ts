/**
 * Pins the parts of Node's undocumented `HTTPParser` (llhttp, from the builtin
 * `_http_common`) that the kube proxy drives: a Node upgrade that changes any of them fails
 * here, not in a kubectl session.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { HTTPParser, methods, type LlhttpParser } from '../../../src/services/kube-proxy/llhttp.ts'

interface Seen {
  heads: unknown[][]
  lines: string[][]
  bodies: string[]
  done: number
}

function parser(type: number, maxHeader = 16 * 1024, headReturn = 0): { p: LlhttpParser; seen: Seen } {
  const seen: Seen = { heads: [], lines: [], bodies: [], done: 0 }
  const p = new HTTPParser()
  p.initialize(type, {}, maxHeader, HTTPParser.kLenientNone)
  p[HTTPParser.kOnHeaders] = (lines: string[]) => void seen.lines.push(lines)
  p[HTTPParser.kOnHeadersComplete] = (...args: unknown[]) => {
    seen.heads.push(args)
    return headReturn
  }
  p[HTTPParser.kOnBody] = (b: Buffer) => void seen.bodies.push(b.toString('latin1'))
  p[HTTPParser.kOnMessageComplete] = () => void seen.done++
  return { p, seen }
}

describe('llhttp as Node exposes it (process.getBuiltinModule("_http_common").HTTPParser)', () => {
  it('has the constants and method table the proxy uses, and loading it prints no warning', () => {
    for (const k of ['REQUEST', 'RESPONSE', 'kOnHeaders', 'kOnHeadersComplete', 'kOnBody', 'kOnMessageComplete', 'kLenientNone'] as const) {
      assert.equal(typeof HTTPParser[k], 'number', k)
    }
    for (const m of ['GET', 'HEAD', 'POST', 'CONNECT']) assert.ok(methods.includes(m), m)
    const child = spawnSync(process.execPath, ['-e', 'process.getBuiltinModule("_http_common").HTTPParser'], { encoding: 'utf8' })
    assert.equal(child.status, 0)
    assert.equal(child.stderr, '')
  })

  it('reports a request head as (major, minor, headers, method, url, status, message, upgrade, keepAlive), then body and end', () => {
    const { p, seen } = parser(HTTPParser.REQUEST)
    const input = 'POST /x?y=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.0\r\n\r\n'
    assert.equal(p.execute(Buffer.from(input)), input.length)
    assert.deepEqual(seen.heads[0], [1, 1, ['Host', 'a', 'Content-Length', '3'], methods.indexOf('POST'), '/x?y=1', undefined, undefined, false, true])
    assert.deepEqual(seen.heads[1], [1, 0, [], methods.indexOf('GET'), '/', undefined, undefined, false, false])
    assert.deepEqual(seen.bodies, ['abc'])
    assert.equal(seen.done, 2)
    p.close()
  })

  it('hands over more than 32 header lines through kOnHeaders, the head then carrying none', () => {
    const { p, seen } = parser(HTTPParser.REQUEST)
    const input = `GET /many HTTP/1.1\r\n${Array.from({ length: 40 }, (_, i) => `X-${i}: v\r\n`).join('')}\r\n`
    assert.equal(p.execute(Buffer.from(input)), input.length)
    assert.equal(seen.lines.flat().length, 80)
    assert.equal(seen.heads[0]?.[2], undefined)
    p.close()
  })

  it('dechunks a chunked body, extensions and trailers dropped', () => {
    const { p, seen } = parser(HTTPParser.REQUEST)
    const input = 'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n'
    assert.equal(p.execute(Buffer.from(input)), input.length)
    assert.deepEqual(seen.bodies, ['abc', 'de'])
    assert.equal(seen.done, 1)
    p.close()
  })

  it('fails with an Error carrying code and bytesParsed: oversized head, CL with TE, repeated CL, bare LF', () => {
    const cases: [string, string, number?][] = [
      [`GET / HTTP/1.1\r\nX: ${'a'.repeat(200)}\r\n\r\n`, 'HPE_HEADER_OVERFLOW', 100],
      ['POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n', 'HPE_INVALID_TRANSFER_ENCODING'],
      ['POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na', 'HPE_UNEXPECTED_CONTENT_LENGTH'],
      ['GET / HTTP/1.1\nHost: a\n\n', 'HPE_INVALID_VERSION'],
    ]
    for (const [input, code, max] of cases) {
      const { p } = parser(HTTPParser.REQUEST, max)
      const r = p.execute(Buffer.from(input))
      assert.ok(r instanceof Error, input)
      assert.equal(r.code, code, input)
      assert.equal(typeof r.bytesParsed, 'number')
      p.close()
    }
  })

  it('refuses a transfer coding other than a final chunked only after the head callback (the proxy checks it there)', () => {
    const { p, seen } = parser(HTTPParser.REQUEST)
    const r = p.execute(Buffer.from('POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nab'))
    assert.equal(seen.heads.length, 1)
    assert.ok(r instanceof Error)
    assert.equal(r.code, 'HPE_INVALID_TRANSFER_ENCODING')
    const refused = parser(HTTPParser.REQUEST, 16 * 1024, -1)
    const r2 = refused.p.execute(Buffer.from('GET / HTTP/1.1\r\n\r\n'))
    assert.ok(r2 instanceof Error, 'returning -1 from the head callback fails the parse')
    p.close()
    refused.p.close()
  })

  it('stops after an upgrade request when the head callback returns 2: the rest is the other protocol', () => {
    const { p, seen } = parser(HTTPParser.REQUEST, 16 * 1024, 2)
    const head = 'GET /exec HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n'
    assert.equal(p.execute(Buffer.from(`${head}RAW`)), head.length)
    assert.equal(seen.heads[0]?.[7], true)
    p.close()
  })

  it('reads responses: interim 1xx then the final one, no body after a 1 (HEAD), a body until finish() without a length, 101 stops', () => {
    const a = parser(HTTPParser.RESPONSE)
    const input = 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'
    assert.equal(a.p.execute(Buffer.from(input)), input.length)
    assert.deepEqual(a.seen.heads.map((h) => [h[5], h[8]]), [[100, true], [200, true]])
    assert.equal(a.seen.done, 2)

    const head = parser(HTTPParser.RESPONSE, 16 * 1024, 1)
    const twice = 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n'
    assert.equal(head.p.execute(Buffer.from(twice)), twice.length)
    assert.equal(head.seen.done, 2)

    const eof = parser(HTTPParser.RESPONSE)
    eof.p.execute(Buffer.from('HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc'))
    assert.equal(eof.seen.heads[0]?.[8], false, 'Connection: close: not keep-alive')
    assert.equal(eof.seen.done, 0)
    assert.equal(eof.p.finish(), undefined)
    assert.equal(eof.seen.done, 1)

    const up = parser(HTTPParser.RESPONSE)
    const switching = 'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n'
    assert.equal(up.p.execute(Buffer.from(`${switching}FRAMES`)), switching.length)
    for (const x of [a, head, eof, up]) x.p.close()
  })
})
