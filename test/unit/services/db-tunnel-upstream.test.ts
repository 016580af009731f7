import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import tls from 'node:tls'
import { CredentialSource, type TlsClientCredential } from '../../../src/credentials/credentials.ts'
import { createDbTunnelService } from '../../../src/services/db-tunnel/index.ts'
import type { Service } from '../../../src/services/service.ts'
import type { X509Authority } from '../../../src/pki/x509.ts'
import { dbCredential, serverCertificate, testCa, TestClock, tlsTunnel, tunnelDeps } from '../../fixtures/db-tunnel.ts'
import { parseErrorResponse, rawConnect, readUntilClose, startupPacket } from '../../fixtures/psql.ts'

type Mode = 'tls' | 'refuse-tls' | 'error' | 'http' | 'silent' | 'extra-after-S'

/**
 * A small server that behaves like PostgreSQL up to the startup message (or does not, on
 * purpose), so each upstream failure can be produced on demand.
 */
async function fakePostgres(mode: Mode, cert: { keyPem: string; certPem: string }, clientCaPem: string) {
  const seen: { sni: string | false | undefined; startup?: Buffer }[] = []
  const sockets = new Set<net.Socket>()
  const server = net.createServer((sock) => {
    sockets.add(sock)
    sock.on('error', () => undefined)
    sock.once('close', () => sockets.delete(sock))
    sock.once('data', () => {
      if (mode === 'silent') return
      if (mode === 'refuse-tls') return void sock.write('N')
      if (mode === 'error') return void sock.end('E')
      if (mode === 'http') return void sock.end('HTTP/1.1 400 Bad Request\r\n\r\n')
      sock.write(mode === 'extra-after-S' ? 'Sxyz' : 'S')
      const secure = new tls.TLSSocket(sock, {
        isServer: true,
        secureContext: tls.createSecureContext({ key: cert.keyPem, cert: cert.certPem, ca: clientCaPem }),
        requestCert: true,
        rejectUnauthorized: true,
      })
      secure.on('error', () => undefined)
      secure.once('data', (startup: Buffer) => {
        seen.push({ sni: (secure as tls.TLSSocket & { servername?: string | false }).servername, startup })
        // AuthenticationOk, then ReadyForQuery(idle).
        secure.write(Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 0, 0x5a, 0, 0, 0, 5, 0x49]))
      })
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  return {
    port: (server.address() as net.AddressInfo).port,
    seen,
    close: () => {
      for (const s of sockets) s.destroy()
      return new Promise<void>((r) => server.close(() => r()))
    },
  }
}

describe('db-tunnel upstream failures become ErrorResponses', () => {
  let clientCa: X509Authority
  let serverCa: X509Authority
  let cert: { keyPem: string; certPem: string }
  const clock = new TestClock()
  const cleanups: (() => Promise<void> | void)[] = []

  before(async () => {
    clientCa = await testCa('client CA')
    serverCa = await testCa('server CA')
    cert = await serverCertificate(serverCa)
  })
  after(async () => {
    for (const c of cleanups.reverse()) await c()
  })

  /** A tunnel to a fake server in `mode`; returns the ErrorResponse (if any) a client gets. */
  async function attempt(mode: Mode, o: { host?: string; serverCert?: typeof cert; connectTimeoutMs?: number } = {}) {
    const upstream = await fakePostgres(mode, o.serverCert ?? cert, clientCa.certPem)
    cleanups.push(upstream.close)
    const source = new CredentialSource<TlsClientCredential>('database orders', clock)
    source.set(await dbCredential({ clientCa, serverCaPem: serverCa.certPem, user: 'app', host: o.host ?? '127.0.0.1', port: upstream.port }))
    const deps = tunnelDeps(source, clock)
    const tunnel = createDbTunnelService({
      listen: '127.0.0.1:0', service: 'orders', username: 'app', protocol: 'postgres',
      maxConnections: 5, connectTimeoutMs: o.connectTimeoutMs ?? 3000,
    }, deps)
    await tunnel.start()
    cleanups.push(() => tunnel.stop(500))
    const s = await rawConnect({ host: '127.0.0.1', port: Number(tunnel.address.split(':').pop()) })
    s.write(startupPacket({ user: 'app', database: 'orders' }))
    // A working upstream keeps the session open: hang up once its first answer is in.
    if (mode === 'tls') s.once('data', () => setTimeout(() => s.end(), 20))
    const answer = await readUntilClose(s, 2000)
    s.destroy()
    return { answer, error: parseErrorResponse(answer.data), upstream, tunnel, deps }
  }

  test('a server that speaks TLS: the startup packet arrives inside TLS and the answer comes back', async () => {
    const { answer, upstream } = await attempt('tls')
    assert.equal(answer.data[0], 0x52)
    assert.deepEqual(upstream.seen[0]?.startup, startupPacket({ user: 'app', database: 'orders' }))
    assert.equal(upstream.seen[0]?.sni, false, 'no SNI for an IP address')
  })

  test('SNI carries the registered host name', async () => {
    const { upstream } = await attempt('tls', { host: 'localhost' })
    assert.equal(upstream.seen[0]?.sni, 'localhost')
  })

  test('a server that answers N', async () => {
    const { error } = await attempt('refuse-tls')
    assert.equal(error?.C, '08001')
    assert.match(error?.M ?? '', /does not accept TLS \(it answered N to SSLRequest\)/)
    assert.match(error?.H ?? '', /ssl = on/)
  })

  test('a server that answers E (its text is not shown, CVE-2024-10977)', async () => {
    const { error } = await attempt('error')
    assert.match(error?.M ?? '', /answered the SSL request with an error/)
  })

  test('a server that is not PostgreSQL', async () => {
    const { error } = await attempt('http')
    assert.match(error?.M ?? '', /did not answer the SSL request like a PostgreSQL server/)
  })

  test('bytes after S before the handshake are refused (CVE-2021-23222)', async () => {
    const { error } = await attempt('extra-after-S')
    assert.match(error?.M ?? '', /sent unencrypted data after agreeing to TLS/)
  })

  test('a server that never answers: connect timeout', async () => {
    const started = Date.now()
    const { error, tunnel } = await attempt('silent', { connectTimeoutMs: 300 })
    assert.ok(Date.now() - started < 1500)
    assert.equal(error?.C, '08001')
    assert.match(error?.M ?? '', /timed out connecting to the database server at 127\.0\.0\.1:\d+/)
    assert.equal(tunnel.health().status, 'degraded')
  })

  test('a server certificate that does not name the host', async () => {
    const other = await serverCertificate(serverCa, { dns: ['db.internal'], ips: [] })
    const { error, deps } = await attempt('tls', { serverCert: other })
    assert.equal(error?.C, '08006')
    assert.match(error?.M ?? '', /the certificate of the database server at 127\.0\.0\.1:\d+ is not trusted: .*127\.0\.0\.1/)
    assert.match(await deps.metrics.metrics(), /reason="upstream_cert_invalid"\} 1/)
  })
})

describe('db-tunnel service lifecycle', () => {
  test('before the first credential: 57P03 naming why and what to run, counted as not_ready', async () => {
    const clock = new TestClock()
    const source = new CredentialSource<TlsClientCredential>('database orders', clock)
    source.fail(new Error('role does not allow database user app'))
    const deps = tunnelDeps(source, clock)
    const tunnel = createDbTunnelService({
      listen: '127.0.0.1:0', service: 'orders', username: 'app', protocol: 'postgres', maxConnections: 5, connectTimeoutMs: 1000,
    }, deps)
    assert.equal(tunnel.health().status, 'starting')
    await tunnel.start()
    try {
      // Before the first certificate renewal is still trying: degraded; failed is for expired.
      assert.equal(tunnel.health().status, 'degraded')
      const s = await rawConnect({ host: '127.0.0.1', port: Number(tunnel.address.split(':').pop()) })
      s.write(startupPacket({ user: 'app' }))
      const err = parseErrorResponse((await readUntilClose(s)).data)
      assert.equal(err?.C, '57P03')
      assert.equal(err?.M, 'memid tunnel orders: no database orders credential yet: role does not allow database user app')
      assert.equal(err?.H, 'run `memid status` on this host to see why the agent cannot renew its certificates')
      assert.match(await deps.metrics.metrics(), /reason="not_ready"\} 1/)
    } finally {
      await tunnel.stop(100)
    }
  })

  test('an IPv6 upstream is named [host]:port in the status, as in its errors', async () => {
    const clock = new TestClock()
    const clientCa = await testCa('client CA')
    const serverCa = await testCa('server CA')
    const source = new CredentialSource<TlsClientCredential>('database orders', clock)
    source.set(await dbCredential({ clientCa, serverCaPem: serverCa.certPem, user: 'app', host: '::1', port: 5432 }))
    const tunnel = createDbTunnelService({
      listen: '127.0.0.1:0', service: 'orders', username: 'app', protocol: 'postgres', maxConnections: 5, connectTimeoutMs: 1000,
    }, tunnelDeps(source, clock))
    assert.equal(tunnel.describe?.().upstream, '[::1]:5432')
  })

  test('stop() closes the listener, ends open connections by the deadline and removes the socket file', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'memid-dbt-'))
    const clock = new TestClock()
    const source = new CredentialSource<TlsClientCredential>('database orders', clock)
    const sock = path.join(dir, 'run', '.s.PGSQL.5432')
    const tunnel: Service = createDbTunnelService({
      listen: sock, service: 'orders', username: 'app', protocol: 'postgres', maxConnections: 5, connectTimeoutMs: 1000,
    }, tunnelDeps(source, clock))
    await tunnel.start()
    assert.equal(tunnel.address, sock)
    assert.ok(existsSync(sock))
    const lingering = await rawConnect({ path: sock })
    const closed = readUntilClose(lingering, 5000)
    const started = Date.now()
    await tunnel.stop(200)
    assert.ok((await closed).closed)
    assert.ok(Date.now() - started < 2000)
    assert.equal(existsSync(sock), false)
    assert.equal(tunnel.health().status, 'stopped')
    await assert.rejects(rawConnect({ path: sock }))
    rmSync(dir, { recursive: true, force: true })
  })
})

describe('db-tunnel tls protocol data path', () => {
  test('half-close: a client that sends, shuts down its side and then reads still gets the answer', async () => {
    // Answers only once the client's side has ended, like `sort` behind a socket.
    const t = await tlsTunnel('cache', (s) => {
      let n = 0
      s.on('data', (d: Buffer) => (n += d.length))
      s.on('end', () => s.end(`got ${n} bytes`))
    })
    try {
      const s = await rawConnect({ host: '127.0.0.1', port: t.port })
      s.end(Buffer.alloc(100_000, 'x'))
      const answer = await readUntilClose(s, 3000)
      assert.equal(answer.data.toString(), 'got 100000 bytes')
    } finally {
      await t.stop()
    }
  })

  test('half-close, the other order: the server ends its side first and still reads what the client sends after that', async () => {
    // Greets and ends at once, then counts what arrives and reports it out of band.
    let counted: (n: number) => void = () => undefined
    const total = new Promise<number>((r) => (counted = r))
    const t = await tlsTunnel('cache', (s) => {
      let n = 0
      s.on('data', (d: Buffer) => (n += d.length))
      s.on('end', () => counted(n))
      s.end('bye')
    })
    try {
      // A client that allows half-open sockets, so the server's end does not end its side too.
      const s = net.connect({ host: '127.0.0.1', port: t.port, allowHalfOpen: true })
      const closed = new Promise((r) => s.once('close', r))
      let greeting = ''
      s.on('data', (d: Buffer) => (greeting += d.toString()))
      await new Promise((r) => s.once('end', r))
      assert.equal(greeting, 'bye', 'the server\'s end reached the client after its data')
      s.end(Buffer.alloc(100_000, 'y'))
      assert.equal(await total, 100_000, 'the client\'s data after the server\'s end reached the server')
      await closed
    } finally {
      await t.stop()
    }
  })
})

describe('db-tunnel startup checks (before any upstream connection is spent)', () => {
  let clientCa: X509Authority
  let serverCa: X509Authority
  let cert: { keyPem: string; certPem: string }
  const cleanups: (() => Promise<void> | void)[] = []
  before(async () => {
    clientCa = await testCa('client CA')
    serverCa = await testCa('server CA')
    cert = await serverCertificate(serverCa)
  })
  after(async () => {
    for (const c of cleanups.reverse()) await c()
  })

  async function tunnelTo(o: { database?: string; maxConnections?: number } = {}) {
    const clock = new TestClock()
    const upstream = await fakePostgres('tls', cert, clientCa.certPem)
    cleanups.push(upstream.close)
    const source = new CredentialSource<TlsClientCredential>('database orders', clock)
    source.set(await dbCredential({ clientCa, serverCaPem: serverCa.certPem, user: 'app', host: '127.0.0.1', port: upstream.port }))
    const deps = tunnelDeps(source, clock)
    const tunnel = createDbTunnelService({
      listen: '127.0.0.1:0', service: 'orders', username: 'app', protocol: 'postgres',
      maxConnections: o.maxConnections ?? 5, connectTimeoutMs: 3000, ...(o.database !== undefined ? { database: o.database } : {}),
    }, deps)
    await tunnel.start()
    cleanups.push(() => tunnel.stop(500))
    const port = Number(tunnel.address.split(':').pop())
    /** Sends a startup message; the ErrorResponse fields, or 'served' when the upstream answered. */
    const startup = async (params: Record<string, string>, keep = false) => {
      const s = await rawConnect({ host: '127.0.0.1', port })
      s.write(startupPacket(params))
      const first = await new Promise<Buffer>((resolve) => s.once('data', resolve))
      if (!keep) s.destroy()
      // An ErrorResponse this small arrives in one piece.
      return { s, first: first[0] === 0x45 ? parseErrorResponse(first) : 'served' as const }
    }
    return { upstream, startup, clock, source, deps }
  }

  test('no user name, or another user than the tunnel\'s: 28000 naming the user to connect as, upstream untouched', async () => {
    const t = await tunnelTo()
    assert.deepEqual((await t.startup({ database: 'orders' })).first, {
      S: 'FATAL', V: 'FATAL', C: '28000', M: 'memid tunnel orders: no PostgreSQL user name specified in startup packet', H: 'connect with -U app',
    })
    assert.equal(((await t.startup({ user: '' })).first as Record<string, string>).M, 'memid tunnel orders: no PostgreSQL user name specified in startup packet')
    assert.deepEqual((await t.startup({ user: 'post\ngres' })).first, {
      S: 'FATAL', V: 'FATAL', C: '28000', M: 'memid tunnel orders: this tunnel serves the database user "app", not "post?gres"',
      H: 'connect with -U app (or PGUSER=app), or configure another tunnel for "post?gres"',
    })
    assert.equal(t.upstream.seen.length, 0, 'no upstream connection for a refused startup')
    assert.equal((await t.startup({ user: 'app', database: 'anything' })).first, 'served', 'a tunnel without a database name serves any')
    const m = await t.deps.metrics.metrics()
    assert.match(m, /reason="bad_startup"\} 2/)
    assert.match(m, /reason="wrong_user"\} 1/)
  })

  test('a tunnel for one database name refuses others, and an omitted name is the user name (as in PostgreSQL)', async () => {
    const t = await tunnelTo({ database: 'orders' })
    assert.deepEqual((await t.startup({ user: 'app', database: 'billing' })).first, {
      S: 'FATAL', V: 'FATAL', C: '28000', M: 'memid tunnel orders: this tunnel serves the database "orders", not "billing"', H: 'connect with -d orders',
    })
    assert.equal(((await t.startup({ user: 'app' })).first as Record<string, string>).M, 'memid tunnel orders: this tunnel serves the database "orders", not "app"')
    assert.equal(((await t.startup({ user: 'app', database: '' })).first as Record<string, string>).M, 'memid tunnel orders: this tunnel serves the database "orders", not "app"')
    assert.equal(t.upstream.seen.length, 0)
    assert.equal((await t.startup({ user: 'app', database: 'orders' })).first, 'served')
    assert.match(await t.deps.metrics.metrics(), /reason="wrong_database"\} 3/)
    const same = await tunnelTo({ database: 'app' })
    assert.equal((await same.startup({ user: 'app' })).first, 'served', 'no name given, the user name is the database')
  })

  test('max_connections: the session beyond the limit gets 53300; a closed session frees its place', async () => {
    const t = await tunnelTo({ maxConnections: 1 })
    const first = await t.startup({ user: 'app' }, true)
    assert.equal(first.first, 'served')
    assert.deepEqual((await t.startup({ user: 'app' })).first, {
      S: 'FATAL', V: 'FATAL', C: '53300', M: 'memid tunnel orders: too many connections: this tunnel allows 1 at a time', H: 'close idle sessions or raise max_connections of this tunnel',
    })
    assert.match(await t.deps.metrics.metrics(), /reason="too_many_connections"\} 1/)
    first.s.destroy()
    await new Promise((r) => setTimeout(r, 100))
    assert.equal((await t.startup({ user: 'app' })).first, 'served')
  })

  test('an expired identity is 28000 (identity_expired), not a connection attempt', async () => {
    const t = await tunnelTo()
    t.clock.offsetMs = 10 * 3_600_000
    const r = (await t.startup({ user: 'app' })).first as Record<string, string>
    assert.equal(r.C, '28000')
    assert.match(r.H ?? '', /memid status/)
    assert.equal(t.upstream.seen.length, 0)
    assert.match(await t.deps.metrics.metrics(), /reason="identity_expired"\} 1/)
  })
})
