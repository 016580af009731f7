import { describe, test, after } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import {
  errorResponse, parseStartupParams, printable, readClientHello, SSL_REQUEST, TunnelRefusal, MAX_STARTUP_PACKET,
} from '../../../src/services/db-tunnel/postgres.ts'
import { resolveDbTunnelConfig, socketPort } from '../../../src/services/db-tunnel/config.ts'
import { ConfigError } from '../../../src/core/errors.ts'
import { parseErrorResponse, startupPacket } from '../../fixtures/psql.ts'

/** A connected pair: `server` is the side the tunnel reads, `client` writes into it. */
async function socketPair(o: { allowHalfOpen?: boolean; serverErrorHandler?: boolean } = {}): Promise<{ client: net.Socket; server: net.Socket; close(): void }> {
  const listener = net.createServer({ pauseOnConnect: true, allowHalfOpen: o.allowHalfOpen ?? false })
  await new Promise<void>((r) => listener.listen(0, '127.0.0.1', r))
  const accepted = new Promise<net.Socket>((r) => listener.once('connection', r))
  const client = net.connect((listener.address() as net.AddressInfo).port, '127.0.0.1')
  const server = await accepted
  if (o.serverErrorHandler ?? true) server.on('error', () => undefined)
  client.on('error', () => undefined)
  listener.close()
  return { client, server, close: () => { client.destroy(); server.destroy() } }
}

function header(len: number, code: number): Buffer {
  const b = Buffer.alloc(8)
  b.writeInt32BE(len, 0)
  b.writeInt32BE(code, 4)
  return b
}

describe('postgres wire helpers', () => {
  const open: { close(): void }[] = []
  after(() => open.forEach((p) => p.close()))

  test('errorResponse encodes a FATAL ErrorResponse psql can read', () => {
    const b = errorResponse({ code: '28000', message: 'no\0pe', detail: 'd', hint: 'h' })
    assert.equal(b[0], 0x45)
    assert.equal(b.readInt32BE(1), b.length - 1)
    assert.deepEqual(parseErrorResponse(b), { S: 'FATAL', V: 'FATAL', C: '28000', M: 'nope', D: 'd', H: 'h' })
  })

  test('errorResponse ends with the message terminator a strict client waits for, and its length counts it', () => {
    // 'E', int32 29, then S/V/C/M fields each ending in NUL, then the final NUL.
    assert.equal(errorResponse({ code: '28000', message: 'm' }).toString('hex'), '450000001d53464154414c0056464154414c00433238303030004d6d0000')
  })

  test('parseStartupParams reads pairs and rejects broken layouts', () => {
    const p = parseStartupParams(startupPacket({ user: 'app', database: 'orders', application_name: 'psql' }))
    assert.deepEqual([...p], [['user', 'app'], ['database', 'orders'], ['application_name', 'psql']])
    const raw = (body: string) => Buffer.concat([header(8 + body.length, 196608), Buffer.from(body, 'latin1')])
    for (const bad of ['user\0app\0', 'user\0app', 'user', 'user\0app\0\0x', 'user\0a\0user\0b\0\0', '']) {
      assert.throws(() => parseStartupParams(raw(bad)), (e: unknown) => e instanceof TunnelRefusal && e.fields.code === '08P01', JSON.stringify(bad))
    }
  })

  test('readClientHello answers SSLRequest and GSSENCRequest with N, then returns the startup packet', async () => {
    const pair = await socketPair()
    open.push(pair)
    const answers: Buffer[] = []
    pair.client.on('data', (d: Buffer) => answers.push(d))
    const hello = readClientHello(pair.server, 2000)
    pair.client.write(header(8, 80877104))
    await waitFor(() => Buffer.concat(answers).length === 1)
    pair.client.write(header(8, 80877103))
    await waitFor(() => Buffer.concat(answers).length === 2)
    const startup = startupPacket({ user: 'app' })
    // The startup packet split across writes, followed by bytes the pipe must still see.
    pair.client.write(startup.subarray(0, 5))
    await new Promise((r) => setTimeout(r, 20))
    pair.client.write(Buffer.concat([startup.subarray(5), Buffer.from('next')]))
    const h = await hello
    assert.equal(Buffer.concat(answers).toString(), 'NN')
    assert.equal(h.kind, 'startup')
    assert.ok(h.kind === 'startup' && h.params.get('user') === 'app')
    assert.deepEqual(h.packet, startup)
    const rest = new Promise<Buffer>((resolve) => pair.server.once('data', resolve))
    // readClientHello leaves the socket paused for the pipe to resume.
    pair.server.resume()
    assert.equal((await rest).toString(), 'next')
  })

  test('once it returns, readClientHello is off the socket: paused, none of its listeners left, later bytes go to the pipe alone', async () => {
    const events = ['data', 'end', 'error', 'close'] as const
    const cases: [string, Buffer][] = [
      ['startup', startupPacket({ user: 'app' })],
      ['cancel', Buffer.concat([header(16, 80877102), Buffer.alloc(8, 7)])],
      ['refused', header(7, 196608)],
    ]
    for (const [name, bytes] of cases) {
      const pair = await socketPair()
      open.push(pair)
      const before = events.map((e) => pair.server.listenerCount(e))
      const hello = readClientHello(pair.server, 2000)
      pair.client.write(bytes)
      await hello.catch(() => undefined)
      assert.deepEqual(events.map((e) => pair.server.listenerCount(e)), before, `${name}: listeners`)
      assert.equal(pair.server.isPaused(), true, `${name}: paused`)
      if (name !== 'startup') continue
      // What the client sends next is the session's: a reader still attached would parse it as another hello and pause the socket.
      const got: Buffer[] = []
      pair.server.on('data', (d: Buffer) => got.push(d))
      pair.server.resume()
      pair.client.write(startupPacket({ user: 'app' }))
      await waitFor(() => Buffer.concat(got).length === startupPacket({ user: 'app' }).length)
      await new Promise((r) => setTimeout(r, 20))
      assert.equal(pair.server.isPaused(), false, 'the pipe keeps flowing')
    }
  })

  test('readClientHello returns a CancelRequest (short and protocol 3.2 long keys)', async () => {
    for (const keyLen of [8, 32]) {
      const pair = await socketPair()
      open.push(pair)
      const hello = readClientHello(pair.server, 2000)
      pair.client.write(Buffer.concat([header(8 + keyLen, 80877102), Buffer.alloc(keyLen, 7)]))
      const h = await hello
      assert.equal(h.kind, 'cancel')
      assert.equal(h.packet.length, 8 + keyLen)
    }
  })

  const refused: [string, Buffer, string][] = [
    ['length 7', header(7, 196608), 'bad_startup'],
    ['oversized', header(MAX_STARTUP_PACKET + 1, 196608), 'bad_startup'],
    ['protocol 2.0', startupPacket({ user: 'a' }, 0x20000), 'bad_startup'],
    ['repeated SSLRequest', header(8, 80877103), 'bad_startup'],
    ['cancel of 300 bytes', header(300, 80877102), 'bad_startup'],
  ]
  for (const [name, bytes, reason] of refused) {
    test(`readClientHello refuses ${name}`, async () => {
      const pair = await socketPair()
      open.push(pair)
      const hello = readClientHello(pair.server, 2000)
      pair.client.write(bytes)
      if (name === 'repeated SSLRequest') {
        await new Promise((r) => pair.client.once('data', r))
        pair.client.write(bytes)
      }
      await assert.rejects(hello, (e: unknown) => e instanceof TunnelRefusal && e.reason === reason)
    })
  }

  /** What readClientHello makes of `bytes`: the hello, or the refusal's reason, message and SQLSTATE. */
  async function helloOf(bytes: Buffer): Promise<{ hello?: Awaited<ReturnType<typeof readClientHello>>; reason?: string; message?: string; code?: string; answers: string }> {
    const pair = await socketPair()
    open.push(pair)
    let answers = ''
    pair.client.on('data', (d: Buffer) => { answers += d.toString('latin1') })
    const hello = readClientHello(pair.server, 1000)
    pair.client.write(bytes)
    try {
      return { hello: await hello, answers }
    } catch (e) {
      assert.ok(e instanceof TunnelRefusal, String(e))
      return { reason: e.reason, message: e.message, code: e.fields.code, answers }
    } finally {
      pair.close()
    }
  }

  test('startup packet lengths: 8 and 10000 bytes are read, 7 and 10001 refused at once with the length named', async () => {
    const max = startupPacket({ user: 'a'.repeat(MAX_STARTUP_PACKET - 15) })
    assert.equal(max.length, MAX_STARTUP_PACKET)
    const ok = await helloOf(max)
    assert.equal(ok.hello?.kind, 'startup', JSON.stringify(ok))
    const min = await helloOf(Buffer.concat([header(9, 196608), Buffer.of(0)]))
    assert.equal(min.hello?.kind, 'startup', 'an empty parameter list is a startup packet')
    for (const len of [7, MAX_STARTUP_PACKET + 1, -1]) {
      const r = await helloOf(header(len, 196608))
      assert.deepEqual([r.reason, r.code, r.message], ['bad_startup', '08P01', `invalid length of startup packet: ${len}`], String(len))
    }
    const eight = await helloOf(header(8, 196608))
    assert.equal(eight.reason, 'bad_startup', 'a startup packet needs its terminator')
    assert.match(eight.message ?? '', /expected terminator/)
  })

  test('SSL and GSS requests must be exactly 8 bytes, each answered once, with nothing sent after them in the clear', async () => {
    for (const code of [80877103, 80877104]) {
      const long = await helloOf(Buffer.concat([header(12, code), Buffer.alloc(4)]))
      assert.deepEqual([long.reason, long.message, long.answers], ['bad_startup', 'invalid length of SSL/GSS negotiation request', ''], String(code))
      const piggyback = await helloOf(Buffer.concat([header(8, code), startupPacket({ user: 'a' })]))
      assert.deepEqual([piggyback.reason, piggyback.code, piggyback.message, piggyback.answers],
        ['bad_startup', '08P01', 'received unencrypted data after SSL/GSS request', ''], `${code}: bytes after the request`)
    }
    const gssTwice = await helloOf(Buffer.concat([header(8, 80877104)]))
    assert.equal(gssTwice.reason, 'client_timeout', 'a lone GSS request is answered and the reader waits')
    assert.equal(gssTwice.answers, 'N')
  })

  test('a repeated GSS request is refused; SSL after GSS is answered', async () => {
    const pair = await socketPair()
    open.push(pair)
    const hello = readClientHello(pair.server, 2000)
    let answers = ''
    pair.client.on('data', (d: Buffer) => { answers += d.toString() })
    pair.client.write(header(8, 80877104))
    await waitFor(() => answers === 'N')
    pair.client.write(header(8, 80877104))
    await assert.rejects(hello, (e: unknown) => e instanceof TunnelRefusal && e.reason === 'bad_startup' && e.message === 'repeated SSL/GSS negotiation request')
  })

  test('cancel requests of 16 and 268 bytes are read; 15 and 269 refused', async () => {
    for (const len of [16, 268]) {
      const r = await helloOf(Buffer.concat([header(len, 80877102), Buffer.alloc(len - 8, 1)]))
      assert.equal(r.hello?.kind, 'cancel', String(len))
      assert.equal(r.hello?.packet.length, len)
    }
    for (const len of [15, 269]) {
      const r = await helloOf(Buffer.concat([header(len, 80877102), Buffer.alloc(len - 8, 1)]))
      assert.deepEqual([r.reason, r.message], ['bad_startup', 'invalid length of cancel request'], String(len))
    }
  })

  test('protocol versions other than 3.x are refused as unsupported, naming the version', async () => {
    for (const [version, name] of [[0x20000, '2.0'], [0x40000, '4.0'], [0x1234, '0.4660']] as const) {
      const r = await helloOf(header(8, version))
      assert.deepEqual([r.reason, r.code, r.message], ['bad_startup', '0A000', `unsupported frontend protocol ${name}: this tunnel speaks protocol 3`], name)
    }
    const v32 = await helloOf(startupPacket({ user: 'a' }, 0x30002))
    assert.equal(v32.hello?.kind === 'startup' && v32.hello.version, 0x30002, 'protocol 3.2 is read')
  })

  test('each broken startup layout is named: terminator, trailing data, unterminated name or value, duplicates', () => {
    const raw = (body: string) => Buffer.concat([header(8 + body.length, 196608), Buffer.from(body, 'latin1')])
    for (const [body, message] of [
      ['user\0app\0', 'invalid startup packet layout: expected terminator as last byte'],
      ['user\0app\0\0x', 'invalid startup packet layout: data after the terminator'],
      ['user', 'invalid startup packet layout: unterminated parameter name'],
      ['user\0app', 'invalid startup packet layout: unterminated parameter value'],
      ['user\0a\0user\0b\0\0', 'duplicate startup parameter "user"'],
    ] as const) {
      assert.throws(() => parseStartupParams(raw(body)), (e: unknown) => e instanceof TunnelRefusal && e.name === 'TunnelRefusal' && e.reason === 'bad_startup' && e.message === message, JSON.stringify(body))
    }
  })

  test('the SSLRequest sent upstream is length 8, code 80877103', () => {
    assert.equal(SSL_REQUEST.toString('hex'), '0000000804d2162f')
  })

  test('GSS then SSL: both answered N, then the startup packet is read', async () => {
    const pair = await socketPair()
    open.push(pair)
    let answers = ''
    pair.client.on('data', (d: Buffer) => { answers += d.toString() })
    const hello = readClientHello(pair.server, 2000)
    pair.client.write(header(8, 80877104))
    await waitFor(() => answers === 'N')
    pair.client.write(header(8, 80877103))
    await waitFor(() => answers === 'NN')
    pair.client.write(startupPacket({ user: 'app' }))
    assert.equal((await hello).kind, 'startup')
  })

  test('a silent client and a client that hangs up get 08P01 with their own message', async () => {
    const silent = await socketPair()
    open.push(silent)
    await assert.rejects(readClientHello(silent.server, 100),
      (e: unknown) => e instanceof TunnelRefusal && e.fields.code === '08P01' && e.message === 'no startup message received within 100 ms')
    const quitter = await socketPair()
    open.push(quitter)
    const hello = readClientHello(quitter.server, 2000)
    quitter.client.end(Buffer.from([0, 0]))
    await assert.rejects(hello, (e: unknown) => e instanceof TunnelRefusal && e.fields.code === '08P01' && e.message === 'incomplete startup packet')
  })

  test('a client that half-closes mid-packet is let go at once, on a listener that allows half-open sockets as the tunnel\'s does', async () => {
    const pair = await socketPair({ allowHalfOpen: true })
    open.push(pair)
    const started = Date.now()
    const hello = readClientHello(pair.server, 3000)
    pair.client.end(startupPacket({ user: 'app' }).subarray(0, 10))
    await assert.rejects(hello, (e: unknown) => e instanceof TunnelRefusal && e.reason === 'client_closed')
    assert.ok(Date.now() - started < 2000, 'not held until the startup timeout')
  })

  test('a connection reset during the startup is a client_closed refusal, not an uncaught error', async () => {
    // No error handler of the caller's: readClientHello must take the socket's error itself.
    const pair = await socketPair({ serverErrorHandler: false })
    open.push(pair)
    const hello = readClientHello(pair.server, 3000)
    pair.client.write(startupPacket({ user: 'app' }).subarray(0, 10))
    await new Promise((r) => setTimeout(r, 50))
    pair.client.resetAndDestroy()
    await assert.rejects(hello, (e: unknown) => e instanceof TunnelRefusal && e.reason === 'client_closed')
    pair.server.on('error', () => undefined)
  })

  test('a socket destroyed during the startup (the tunnel stopping) ends the wait at once', async () => {
    const pair = await socketPair()
    open.push(pair)
    const started = Date.now()
    const hello = readClientHello(pair.server, 3000)
    pair.client.write(startupPacket({ user: 'app' }).subarray(0, 10))
    await new Promise((r) => setTimeout(r, 50))
    // A local destroy emits neither 'end' nor 'error', only 'close'.
    pair.server.destroy()
    await assert.rejects(hello, (e: unknown) => e instanceof TunnelRefusal && e.reason === 'client_closed')
    assert.ok(Date.now() - started < 2000, 'not held until the startup timeout')
  })

  test('a bad length is refused as soon as its 4 bytes are in, without waiting for more', async () => {
    const r = await helloOf(header(7, 196608).subarray(0, 4))
    assert.deepEqual([r.reason, r.message], ['bad_startup', 'invalid length of startup packet: 7'])
  })

  test('printable keeps client text safe to echo: non-ASCII replaced, long values cut', () => {
    assert.equal(printable('a\nb\u00e9\u0000c'), 'a?b??c')
    assert.equal(printable('x'.repeat(64)), 'x'.repeat(64))
    assert.equal(printable('x'.repeat(65)), `${'x'.repeat(64)}…`)
    assert.equal(printable('abcdef', 3), 'abc…')
    assert.equal(printable(' ~'), ' ~')
  })

  test('readClientHello gives up on a silent client and on one that hangs up mid-packet', async () => {
    const silent = await socketPair()
    open.push(silent)
    await assert.rejects(readClientHello(silent.server, 100), (e: unknown) => e instanceof TunnelRefusal && e.reason === 'client_timeout')
    const quitter = await socketPair()
    open.push(quitter)
    const hello = readClientHello(quitter.server, 2000)
    quitter.client.end(startupPacket({ user: 'app' }).subarray(0, 10))
    await assert.rejects(hello, (e: unknown) => e instanceof TunnelRefusal && e.reason === 'client_closed')
  })
})

describe('db tunnel config', () => {
  const base = {
    listen: '127.0.0.1:6432', service: 'orders', username: 'app', protocol: 'postgres' as const,
    maxConnections: 10, connectTimeoutMs: 5000,
  }
  const rejects = (patch: Record<string, unknown>, message: RegExp) =>
    assert.throws(() => resolveDbTunnelConfig({ ...base, ...patch } as never), (e: unknown) => e instanceof ConfigError && message.test(e.message))

  test('accepts host:port and a .s.PGSQL.<port> socket', () => {
    assert.deepEqual(resolveDbTunnelConfig(base).address, { kind: 'tcp', host: '127.0.0.1', port: 6432 })
    assert.equal(resolveDbTunnelConfig({ ...base, listen: '/run/memid/.s.PGSQL.5432' }).address.kind, 'unix')
    assert.equal(socketPort('/run/memid/.s.PGSQL.5432'), 5432)
    assert.equal(resolveDbTunnelConfig({ ...base, protocol: 'tls', listen: '/run/memid/redis.sock' }).address.kind, 'unix')
  })

  test('names the key that is wrong', () => {
    rejects({ listen: 'nope' }, /^listen: must be host:port/)
    rejects({ listen: '/run/memid/pg.sock' }, /^listen: name the socket <dir>\/\.s\.PGSQL\.<port>/)
    rejects({ service: '' }, /^service: should not be empty/)
    rejects({ username: '' }, /^username: should not be empty/)
    rejects({ database: '' }, /^database: /)
    rejects({ protocol: 'mysql' }, /^protocol: must be postgres or tls/)
    rejects({ maxConnections: 0 }, /^max_connections: /)
    rejects({ connectTimeoutMs: 0 }, /^connect_timeout: /)
    rejects({ idleTimeoutMs: -1 }, /^idle_timeout: /)
  })
})

async function waitFor(check: () => boolean, timeoutMs = 2000): Promise<void> {
  const until = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > until) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 5))
  }
}
