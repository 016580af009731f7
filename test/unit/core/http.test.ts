import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import net from 'node:net'
import { MAX_BODY_BYTES, Router, readJsonBody, sendJson } from '../../../src/core/http.ts'
import { MemidError } from '../../../src/core/errors.ts'

const SMALL_LIMIT = 1024

const router = new Router()
  .on('POST', '/v1/echo', async (req, res) => sendJson(res, 200, { got: await readJsonBody(req) }))
  .on('POST', '/v1/small', async (req, res) => sendJson(res, 200, { got: await readJsonBody(req, SMALL_LIMIT) }))
  .on('GET', '/v1/items/:name', (_req, res, params, query) => sendJson(res, 200, { name: params.name, q: query.get('q') }))
  .on('DELETE', '/v1/items/:name', (_req, res, params) => sendJson(res, 200, { deleted: params.name }))
  .on('GET', '/v1/bots/:bot/instances/:id', (_req, res, params) => sendJson(res, 200, params))
  .on('GET', '/v1/refused', () => {
    throw new MemidError('ERR_ACCESS_DENIED', 'role does not allow it')
  })
  .on('GET', '/v1/broken', () => {
    throw new Error('database file /secret/path is corrupt\n    at stack')
  })

let server: http.Server
let port: number
let handlerCrashes = 0

before(async () => {
  server = http.createServer((req, res) => {
    router.handle(req, res).catch(() => handlerCrashes++)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  port = (server.address() as net.AddressInfo).port
})

after(async () => {
  server.closeAllConnections()
  await new Promise((resolve) => server.close(resolve))
  assert.equal(handlerCrashes, 0, 'Router.handle never rejects')
})

interface Answer {
  status: number
  headers: http.IncomingHttpHeaders
  body: any
}

function request(method: string, path: string, opts: { headers?: Record<string, string | number>; body?: string | Buffer; chunks?: Buffer[] } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, headers: opts.headers, agent: false }, (res) => {
      const parts: Buffer[] = []
      res.on('data', (c: Buffer) => parts.push(c))
      res.on('end', () => {
        const text = Buffer.concat(parts).toString('utf8')
        let body: unknown = text
        try {
          body = JSON.parse(text)
        } catch {
          // left as text
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body })
      })
    })
    // The server may answer before the whole oversized body is written; that is fine.
    req.on('error', (err: NodeJS.ErrnoException) => (err.code === 'EPIPE' || err.code === 'ECONNRESET' ? undefined : reject(err)))
    if (opts.chunks) {
      for (const c of opts.chunks) req.write(c)
      req.end()
    } else {
      req.end(opts.body)
    }
  })
}

const json = { 'content-type': 'application/json' }

describe('Router', () => {
  it('routes by method and path, with decoded :params and the query', async () => {
    const a = await request('GET', '/v1/items/web%20one?q=x')
    assert.equal(a.status, 200)
    assert.deepEqual(a.body, { name: 'web one', q: 'x' })
    const b = await request('DELETE', '/v1/items/web')
    assert.deepEqual(b.body, { deleted: 'web' })
    const c = await request('GET', '/v1/bots/ci/instances/1f0c-22')
    assert.deepEqual(c.body, { bot: 'ci', id: '1f0c-22' })
  })

  it('a plain path and the forms the URL parser normalizes to it route alike', async () => {
    for (const p of ['/v1/items/web', '/v1/./items/web', '/v1/x/../items/web', '/v1/items/web?']) {
      const a = await request('GET', p)
      assert.equal(a.status, 200, p)
      assert.deepEqual(a.body, { name: 'web', q: null }, p)
    }
    const b = await request('GET', '/v1/items/web?q=1&q=2')
    assert.deepEqual(b.body, { name: 'web', q: '1' })
  })

  it('unknown path: 404 ERR_NOT_FOUND', async () => {
    for (const p of ['/nope', '/v1/items', '/v1/items/a/b', '/v1/echo/extra', '/V1/ECHO']) {
      const a = await request('GET', p)
      assert.equal(a.status, 404, p)
      assert.equal(a.body.error.code, 'ERR_NOT_FOUND', p)
    }
  })

  it('known path, wrong method: 405 ERR_METHOD_NOT_ALLOWED', async () => {
    const a = await request('GET', '/v1/echo')
    assert.equal(a.status, 405)
    assert.equal(a.body.error.code, 'ERR_METHOD_NOT_ALLOWED')
    assert.match(a.body.error.message, /GET.*\/v1\/echo/)
    const b = await request('PUT', '/v1/items/x', { headers: json, body: '{}' })
    assert.equal(b.status, 405)
  })

  it('malformed percent-encoding in a path parameter: 400, not a crash', async () => {
    const a = await request('GET', '/v1/items/%E0%A4%A')
    assert.equal(a.status, 400)
    assert.equal(a.body.error.code, 'ERR_BAD_REQUEST')
  })

  it('a MemidError from a handler keeps its code and status', async () => {
    const a = await request('GET', '/v1/refused')
    assert.equal(a.status, 403)
    assert.deepEqual(a.body, { error: { code: 'ERR_ACCESS_DENIED', message: 'role does not allow it' } })
  })

  it('any other error becomes a bare 500 that reveals nothing', async () => {
    const a = await request('GET', '/v1/broken')
    assert.equal(a.status, 500)
    assert.deepEqual(a.body, { error: { code: 'ERR_INTERNAL', message: 'internal error' } })
  })

  it('answers are JSON and never cached', async () => {
    const a = await request('GET', '/v1/items/x')
    assert.equal(a.headers['content-type'], 'application/json')
    assert.equal(a.headers['cache-control'], 'no-store')
    assert.equal(Number(a.headers['content-length']), Buffer.byteLength(JSON.stringify(a.body)))
  })
})

describe('readJsonBody', () => {
  it('parses a JSON body; an empty body is {}', async () => {
    const a = await request('POST', '/v1/echo', { headers: json, body: '{"a":[1,2],"b":"é"}' })
    assert.equal(a.status, 200)
    assert.deepEqual(a.body, { got: { a: [1, 2], b: 'é' } })
    const b = await request('POST', '/v1/echo')
    assert.deepEqual(b.body, { got: {} })
  })

  it('accepts a charset parameter on application/json', async () => {
    const a = await request('POST', '/v1/echo', { headers: { 'content-type': 'application/json; charset=utf-8' }, body: '[1]' })
    assert.deepEqual(a.body, { got: [1] })
  })

  it('bad JSON: 400 ERR_INVALID_JSON', async () => {
    for (const body of ['{', '{"a":}', 'nope', '{"a":1}}', '\u0000']) {
      const a = await request('POST', '/v1/echo', { headers: json, body })
      assert.equal(a.status, 400, body)
      assert.equal(a.body.error.code, 'ERR_INVALID_JSON', body)
    }
  })

  it('wrong content type: 415 ERR_UNSUPPORTED_MEDIA_TYPE', async () => {
    for (const ctype of ['text/plain', 'application/x-www-form-urlencoded', 'application/jsonp', 'multipart/form-data; boundary=x']) {
      const a = await request('POST', '/v1/echo', { headers: { 'content-type': ctype }, body: '{}' })
      assert.equal(a.status, 415, ctype)
      assert.equal(a.body.error.code, 'ERR_UNSUPPORTED_MEDIA_TYPE', ctype)
    }
  })

  it('declared oversized body: 413 ERR_BODY_TOO_LARGE before reading it', async () => {
    const body = `{"a":"${'x'.repeat(SMALL_LIMIT)}"}`
    const a = await request('POST', '/v1/small', { headers: json, body })
    assert.equal(a.status, 413)
    assert.equal(a.body.error.code, 'ERR_BODY_TOO_LARGE')
  })

  it('chunked oversized body without a length: 413 once the cap is passed', async () => {
    const chunks = Array.from({ length: 8 }, () => Buffer.alloc(256, 0x61))
    const a = await request('POST', '/v1/small', { headers: json, chunks })
    assert.equal(a.status, 413)
    assert.equal(a.body.error.code, 'ERR_BODY_TOO_LARGE')
  })

  it('the default cap is MAX_BODY_BYTES: exactly at the cap passes, one byte more does not', async () => {
    const pad = (n: number) => `"${'y'.repeat(n - 2)}"`
    const at = await request('POST', '/v1/echo', { headers: json, body: pad(MAX_BODY_BYTES) })
    assert.equal(at.status, 200)
    const over = await request('POST', '/v1/echo', { headers: json, body: pad(MAX_BODY_BYTES + 1) })
    assert.equal(over.status, 413)
  })

  it('a client that disconnects mid-body does not disturb the server', async () => {
    await new Promise<void>((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.write('POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{"a":')
        setTimeout(() => s.destroy(), 20)
      })
      s.on('close', () => resolve())
      s.on('error', reject)
    })
    const a = await request('POST', '/v1/echo', { headers: json, body: '{"still":"fine"}' })
    assert.deepEqual(a.body, { got: { still: 'fine' } })
  })

  it('a 413 leaves the connection usable for the error response over keep-alive', async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
    try {
      const send = (body: string) => new Promise<number>((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/v1/small', headers: json, agent }, (res) => {
          res.resume()
          res.on('end', () => resolve(res.statusCode ?? 0))
        })
        req.on('error', reject)
        req.end(body)
      })
      assert.equal(await send(`"${'z'.repeat(SMALL_LIMIT * 2)}"`), 413)
      assert.equal(await send('{"ok":true}'), 200)
    } finally {
      agent.destroy()
    }
  })
})
