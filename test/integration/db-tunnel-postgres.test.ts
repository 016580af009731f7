import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, statSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { CredentialSource, type TlsClientCredential } from '../../src/credentials/credentials.ts'
import { createDbTunnelService } from '../../src/services/db-tunnel/index.ts'
import type { Service } from '../../src/services/service.ts'
import type { X509Authority } from '../../src/pki/x509.ts'
import { dbCredential, freePort, run, testCa, TestClock, tunnelDeps } from '../fixtures/db-tunnel.ts'
import { startPostgres, type PostgresFixture } from '../fixtures/postgres.ts'
import {
  cleanPgEnv, conninfo, parseErrorResponse, psql, PsqlSession, rawConnect, readUntilClose, startupPacket,
} from '../fixtures/psql.ts'

const SOCKET_PORT = 6432

describe('db-tunnel (postgres) against a real PostgreSQL 15', () => {
  let pg: PostgresFixture
  let clientCa: X509Authority
  const clock = new TestClock()
  let source: CredentialSource<TlsClientCredential>
  let deps: ReturnType<typeof tunnelDeps>
  let tcp: Service
  let unix: Service
  let sockDir: string
  const services: Service[] = []
  const tcpPort = () => Number(tcp.address.split(':').pop())
  const tcpInfo = (extra: Record<string, string | number> = {}) =>
    conninfo({ host: '127.0.0.1', port: tcpPort(), user: 'app', dbname: 'orders', ...extra })
  const issue = (o: Partial<Parameters<typeof dbCredential>[0]> = {}) =>
    dbCredential({ clientCa, serverCaPem: pg.serverCaPem, user: 'app', host: pg.host, port: pg.port, ...o })
  const tunnel = async (cfg: Partial<Parameters<typeof createDbTunnelService>[0]>, src = source) => {
    const s = createDbTunnelService({
      listen: '127.0.0.1:0', service: 'orders', username: 'app', database: 'orders', protocol: 'postgres',
      maxConnections: 50, connectTimeoutMs: 5000, ...cfg,
    }, { ...deps, credentials: src })
    await s.start()
    services.push(s)
    return s
  }

  before(async () => {
    clientCa = await testCa('test db-client CA')
    pg = await startPostgres({ clientCaPem: clientCa.certPem, roles: ['app', 'other'] })
    source = new CredentialSource<TlsClientCredential>('database orders', clock)
    source.set(await issue())
    deps = tunnelDeps(source, clock)
    sockDir = mkdtempSync(path.join(os.tmpdir(), 'memid-dbt-'))
    tcp = await tunnel({})
    unix = await tunnel({ listen: path.join(sockDir, 'run', `.s.PGSQL.${SOCKET_PORT}`) })
  })

  after(async () => {
    await PsqlSession.closeAll()
    for (const s of services.reverse()) await s.stop(1000)
    await pg?.stop()
    if (sockDir) rmSync(sockDir, { recursive: true, force: true })
  })

  for (const sslmode of ['disable', 'prefer']) {
    test(`psql through the TCP listener prints app (sslmode=${sslmode})`, async () => {
      const r = await psql(tcpInfo({ sslmode }), 'select current_user')
      assert.equal(r.stderr, '')
      assert.equal(r.stdout.trim(), 'app')
      assert.equal(r.code, 0)
    })

    test(`psql -h DIR -p PORT through the unix socket prints app (sslmode=${sslmode})`, async () => {
      const r = await run('psql', ['-X', '-At', '-w', '-h', path.join(sockDir, 'run'), '-p', String(SOCKET_PORT), '-U', 'app', '-c', 'select current_user', 'orders'], {
        env: cleanPgEnv({ PGSSLMODE: sslmode }),
      })
      assert.equal(r.stderr, '')
      assert.equal(r.stdout.trim(), 'app')
    })
  }

  test('the unix socket is 0600 in a 0700 directory', () => {
    assert.equal(statSync(unix.address).mode & 0o777, 0o600)
    assert.equal(statSync(path.dirname(unix.address)).mode & 0o777, 0o700)
  })

  test('the upstream leg is TLS with the in-memory client certificate', async () => {
    const r = await psql(tcpInfo(), "select ssl, client_dn, client_serial from pg_stat_ssl where pid = pg_backend_pid()")
    const [ssl, dn, serial] = r.stdout.trim().split('|')
    assert.equal(ssl, 't')
    assert.equal(dn, '/CN=app')
    assert.equal(BigInt(serial as string).toString(16), BigInt('0x' + source.peek()!.serial).toString(16))
  })

  test('answers GSSENCRequest and SSLRequest with N, then tunnels the startup message', async () => {
    const s = await rawConnect({ host: '127.0.0.1', port: tcpPort() })
    const got: Buffer[] = []
    s.on('data', (d: Buffer) => got.push(d))
    s.write(packet8(80877104))
    await waitFor(() => Buffer.concat(got).length >= 1)
    assert.equal(Buffer.concat(got).toString(), 'N')
    s.write(packet8(80877103))
    await waitFor(() => Buffer.concat(got).length >= 2)
    assert.equal(Buffer.concat(got).toString(), 'NN')
    s.write(startupPacket({ user: 'app', database: 'orders' }))
    // AuthenticationOk ('R', int32 8, int32 0) comes from the server itself.
    await waitFor(() => Buffer.concat(got).length >= 2 + 9)
    const answer = Buffer.concat(got).subarray(2)
    assert.equal(String.fromCharCode(answer[0] as number), 'R')
    assert.equal(answer.readInt32BE(5), 0)
    s.destroy()
  })

  test('a user other than the tunnel\'s gets an ErrorResponse naming the served user', async () => {
    const r = await psql(conninfo({ host: '127.0.0.1', port: tcpPort(), user: 'other', dbname: 'orders', sslmode: 'prefer' }), 'select 1')
    assert.notEqual(r.code, 0)
    assert.match(r.stderr, /FATAL: {2}memid tunnel orders: this tunnel serves the database user "app", not "other"/)
    assert.match(r.stderr, /HINT: {2}connect with -U app/)
  })

  test('a database other than the tunnel\'s gets an ErrorResponse naming the served database', async () => {
    const r = await psql(conninfo({ host: '127.0.0.1', port: tcpPort(), user: 'app', dbname: 'postgres' }), 'select 1')
    assert.match(r.stderr, /FATAL: {2}memid tunnel orders: this tunnel serves the database "orders", not "postgres"/)
  })

  test('open sessions keep their certificate across renewals, new sessions use the new one', async () => {
    const session = new PsqlSession(tcpInfo())
    const serialSql = 'select client_serial from pg_stat_ssl where pid = pg_backend_pid()'
    const before = await session.query(serialSql)
    const oldSerial = source.peek()!.serial
    assert.equal(BigInt(before), BigInt('0x' + oldSerial))
    source.set(await issue())
    const fresh = await psql(tcpInfo(), serialSql)
    assert.equal(BigInt(fresh.stdout.trim()), BigInt('0x' + source.peek()!.serial))
    assert.equal(await session.query(serialSql), before)
    assert.equal(await session.query('select current_user'), 'app')
    assert.equal(await session.close(), 0)
  })

  test('pgbench through the tunnel while the credential is renewed: zero failed transactions', async () => {
    const init = await run('pgbench', ['-i', '-s', '1', '-q'], { env: cleanPgEnv(pg.adminEnv('app', 'orders')) })
    assert.equal(init.code, 0, init.stderr)
    const bench = (args: string[]) =>
      run('pgbench', ['-h', '127.0.0.1', '-p', String(tcpPort()), '-U', 'app', '-T', '5', '-n', ...args, 'orders'], {
        env: cleanPgEnv({ PGSSLMODE: 'prefer' }),
        timeoutMs: 60_000,
      })
    // One run keeps its connections open, the other (-C) opens one per transaction.
    const runs = Promise.all([bench(['-c', '4', '-j', '2']), bench(['-c', '2', '-C'])])
    const serials = new Set([source.peek()!.serial])
    for (let i = 0; i < 6; i++) {
      await new Promise((r) => setTimeout(r, 600))
      source.set(await issue())
      serials.add(source.peek()!.serial)
    }
    const results = await runs
    for (const r of results) {
      assert.equal(r.code, 0, r.stderr + r.stdout)
      const processed = /number of transactions actually processed: (\d+)/.exec(r.stdout)
      assert.ok(processed && Number(processed[1]) > 0, r.stdout)
      const failed = /number of failed transactions: (\d+)/.exec(r.stdout)
      assert.ok(failed, r.stdout)
      assert.equal(failed[1], '0', r.stdout)
      assert.doesNotMatch(r.stderr, /error|FATAL/i)
    }
    assert.equal(serials.size, 7)
  })

  test('Ctrl-C in psql cancels a long query through the tunnel (CancelRequest)', async () => {
    const child = spawn('psql', ['-X', '-At', '-w', '-d', tcpInfo(), '-c', 'select pg_sleep(30)'], { env: cleanPgEnv() })
    let stderr = ''
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)))
    await waitFor(async () => (await pg.sql("select count(*) from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'")).trim() === '1', 10_000)
    const started = Date.now()
    child.kill('SIGINT')
    const code = await exited
    assert.ok(Date.now() - started < 5000, 'the query was cancelled, not waited out')
    assert.match(stderr, /canceling statement due to user request/)
    assert.notEqual(code, 0)
  })

  test('a CancelRequest sent by hand through the tunnel cancels the backend it names', async () => {
    const s = await rawConnect({ host: '127.0.0.1', port: tcpPort() })
    const got: Buffer[] = []
    s.on('data', (d: Buffer) => got.push(d))
    s.write(startupPacket({ user: 'app', database: 'orders' }))
    // Read up to ReadyForQuery, remembering BackendKeyData ('K': pid, secret).
    let key: Buffer | undefined
    await waitFor(() => {
      const all = Buffer.concat(got)
      for (let o = 0; o + 5 <= all.length;) {
        const type = String.fromCharCode(all[o] as number)
        const len = all.readInt32BE(o + 1)
        if (o + 1 + len > all.length) return false
        if (type === 'K') key = all.subarray(o + 5, o + 1 + len)
        if (type === 'Z') return true
        o += 1 + len
      }
      return false
    })
    assert.ok(key)
    got.length = 0
    const q = Buffer.from('select pg_sleep(30)\0')
    const query = Buffer.alloc(5)
    query.write('Q')
    query.writeInt32BE(4 + q.length, 1)
    s.write(Buffer.concat([query, q]))
    await waitFor(async () => (await pg.sql("select count(*) from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'")).trim() === '1', 10_000)
    const cancel = Buffer.alloc(8)
    cancel.writeInt32BE(8 + key.length, 0)
    cancel.writeInt32BE(80877102, 4)
    const c = await rawConnect({ host: '127.0.0.1', port: tcpPort() })
    c.write(Buffer.concat([cancel, key]))
    const answer = await readUntilClose(c)
    assert.equal(answer.closed, true)
    assert.equal(answer.data.length, 0, 'PostgreSQL never answers a cancel request')
    await waitFor(() => Buffer.concat(got).includes(Buffer.from('57014')), 5000)
    s.destroy()
  })

  test('a client certificate the server does not trust: ErrorResponse naming the cause', async () => {
    const rogue = await testCa('rogue CA')
    const src = new CredentialSource<TlsClientCredential>('database orders', clock)
    src.set(await issue({ clientCa: rogue }))
    const t = await tunnel({}, src)
    const r = await psql(conninfo({ host: '127.0.0.1', port: Number(t.address.split(':').pop()), user: 'app', dbname: 'orders' }), 'select 1')
    assert.match(r.stderr, /FATAL: {2}memid tunnel orders: the database server at 127\.0\.0\.1:\d+ did not accept memid's client certificate/)
    assert.match(r.stderr, /HINT: .*ssl_ca_file/)
  })

  test('a server certificate not signed by the registered CA: ErrorResponse, no connection', async () => {
    const other = await testCa('other server CA')
    const src = new CredentialSource<TlsClientCredential>('database orders', clock)
    src.set(await issue({ serverCaPem: other.certPem }))
    const t = await tunnel({}, src)
    const r = await psql(conninfo({ host: '127.0.0.1', port: Number(t.address.split(':').pop()), user: 'app', dbname: 'orders' }), 'select 1')
    assert.match(r.stderr, /FATAL: {2}memid tunnel orders: the certificate of the database server at 127\.0\.0\.1:\d+ is not trusted/)
  })

  test('an unreachable database server: ErrorResponse 08001', async () => {
    const closed = await freePort()
    const src = new CredentialSource<TlsClientCredential>('database orders', clock)
    src.set(await issue({ port: closed }))
    const t = await tunnel({}, src)
    const r = await psql(conninfo({ host: '127.0.0.1', port: Number(t.address.split(':').pop()), user: 'app', dbname: 'orders' }), 'select 1')
    assert.match(r.stderr, new RegExp(`FATAL: {2}memid tunnel orders: cannot reach the database server at 127\\.0\\.0\\.1:${closed}: ECONNREFUSED`))
    assert.equal(t.health().status, 'degraded')
  })

  test('max_connections: the extra connection gets 53300 too_many_connections', async () => {
    const t = await tunnel({ maxConnections: 1 })
    const port = Number(t.address.split(':').pop())
    const first = new PsqlSession(conninfo({ host: '127.0.0.1', port, user: 'app', dbname: 'orders' }))
    assert.equal(await first.query('select 1'), '1')
    const s = await rawConnect({ host: '127.0.0.1', port })
    s.write(startupPacket({ user: 'app', database: 'orders' }))
    const answer = await readUntilClose(s)
    assert.equal(parseErrorResponse(answer.data)?.C, '53300')
    const r = await psql(conninfo({ host: '127.0.0.1', port, user: 'app', dbname: 'orders' }), 'select 1')
    assert.match(r.stderr, /too many connections: this tunnel allows 1 at a time/)
    await first.close()
    await waitFor(async () => (await psql(conninfo({ host: '127.0.0.1', port, user: 'app', dbname: 'orders' }), 'select 1')).code === 0)
  })

  test('idle timeout ends a quiet session with a FATAL 57P05', async () => {
    const t = await tunnel({ idleTimeoutMs: 400 })
    const port = Number(t.address.split(':').pop())
    const s = await rawConnect({ host: '127.0.0.1', port })
    const got: Buffer[] = []
    s.on('data', (d: Buffer) => got.push(d))
    s.write(startupPacket({ user: 'app', database: 'orders' }))
    const answer = await readUntilClose(s, 5000)
    assert.equal(answer.closed, true)
    const all = Buffer.concat(got)
    const at = all.lastIndexOf(Buffer.from('57P05'))
    assert.ok(at > 0, 'an ErrorResponse with 57P05 ends the session')
  })

  test('malformed, truncated and oversized startup packets never crash, and a good session keeps working', async () => {
    const session = new PsqlSession(tcpInfo())
    assert.equal(await session.query('select 41 + 1'), '42')
    const port = tcpPort()
    const cases: { name: string; bytes: Buffer; expect: 'error' | 'close' | 'either'; code?: string }[] = [
      { name: 'random bytes', bytes: Buffer.from('a9f0c3e1d2b4a6c8e0f2d4b6a8c0e2f4a6b8c0d2e4f6a8b0', 'hex'), expect: 'either' },
      { name: 'length below 8', bytes: header(4), expect: 'error', code: '08P01' },
      { name: 'negative length', bytes: header(-1), expect: 'error', code: '08P01' },
      { name: 'oversized length', bytes: header(10_001), expect: 'error', code: '08P01' },
      { name: 'huge length', bytes: header(0x7fffffff), expect: 'error', code: '08P01' },
      { name: 'protocol 2', bytes: startupPacket({ user: 'app' }, 131072), expect: 'error', code: '0A000' },
      { name: 'no terminator', bytes: startupPacket({ user: 'app' }).subarray(0, -1), expect: 'close' },
      { name: 'unterminated name', bytes: Buffer.concat([header(13), Buffer.from('userx')]), expect: 'error', code: '08P01' },
      { name: 'missing final NUL', bytes: Buffer.concat([header(17), Buffer.from('user\0app\0x\0')]), expect: 'error', code: '08P01' },
      { name: 'duplicate user', bytes: startupPacketRaw('user\0app\0user\0app\0\0'), expect: 'error', code: '08P01' },
      { name: 'no user', bytes: startupPacket({ database: 'orders' }), expect: 'error', code: '28000' },
      { name: 'SSLRequest then close', bytes: packet8(80877103), expect: 'close' },
      { name: 'data after SSLRequest', bytes: Buffer.concat([packet8(80877103), startupPacket({ user: 'app' })]), expect: 'error', code: '08P01' },
      { name: 'SSLRequest with wrong length', bytes: header(12, 80877103), expect: 'close' },
      { name: 'short cancel', bytes: packet8(80877102), expect: 'error', code: '08P01' },
      { name: 'truncated startup then close', bytes: startupPacket({ user: 'app', database: 'orders' }).subarray(0, 12), expect: 'close' },
      { name: 'non-UTF-8 user', bytes: startupPacketRaw('user\0\xff\xfe\x01\0\0', 'latin1'), expect: 'error', code: '28000' },
    ]
    for (const c of cases) {
      const s = await rawConnect({ host: '127.0.0.1', port })
      s.end(c.bytes)
      const answer = await readUntilClose(s)
      assert.ok(answer.closed, `${c.name}: the tunnel closes the connection`)
      const err = parseErrorResponse(answer.data.subarray(answer.data[0] === 0x4e ? 1 : 0))
      if (c.expect === 'error') {
        assert.ok(err, `${c.name}: an ErrorResponse`)
        assert.equal(err.C, c.code, `${c.name}: ${JSON.stringify(err)}`)
        assert.match(err.M ?? '', /^memid tunnel orders: /)
      }
      if (c.expect === 'close') {
        assert.ok(answer.data.length === 0 || answer.data.toString() === 'N' || err, `${c.name}: only 'N', an ErrorResponse or nothing`)
      }
    }
    // Random garbage in bulk, on many connections at once.
    await Promise.all(Array.from({ length: 40 }, async (_, i) => {
      const s = await rawConnect({ host: '127.0.0.1', port })
      s.end(Buffer.from(Array.from({ length: 1 + (i * 997) % 20_000 }, (_, j) => (i * 31 + j * 17) & 0xff)))
      await readUntilClose(s)
    }))
    // A client that sends half a packet and stalls holds only its own connection.
    const staller = await rawConnect({ host: '127.0.0.1', port })
    staller.write(header(200))
    assert.equal(await session.query('select current_user'), 'app')
    const r = await psql(tcpInfo(), 'select current_user')
    assert.equal(r.stdout.trim(), 'app')
    staller.destroy()
    assert.equal(await session.close(), 0)
    assert.equal(tcp.health().status, 'ok')
  })

  test('metrics: active connections, bytes each way, errors by reason', async () => {
    const text = await deps.metrics.metrics()
    assert.match(text, /memid_db_tunnel_active_connections\{service="orders"\} \d+/)
    const up = /memid_db_tunnel_bytes_total\{service="orders",direction="client_to_server"\} (\d+)/.exec(text)
    const down = /memid_db_tunnel_bytes_total\{service="orders",direction="server_to_client"\} (\d+)/.exec(text)
    assert.ok(Number(up?.[1]) > 1000 && Number(down?.[1]) > 1000, text)
    assert.match(text, /memid_db_tunnel_connection_errors_total\{service="orders",reason="wrong_user"\} [1-9]/)
    assert.match(text, /memid_db_tunnel_connection_errors_total\{service="orders",reason="bad_startup"\} [1-9]/)
    assert.match(text, /memid_db_tunnel_connection_errors_total\{service="orders",reason="too_many_connections"\} [1-9]/)
  })

  test('no key or certificate material in the tunnel logs', () => {
    const all = deps.lines.join('')
    assert.doesNotMatch(all, /BEGIN|PRIVATE/)
    assert.ok(all.includes('database tunnel connection refused'))
  })

  test('expired identity with renewal failing: psql gets an ErrorResponse naming the cause (last, it moves the clock)', async () => {
    source.fail(new Error('cannot reach the auth service at 127.0.0.1:3025 (ECONNREFUSED)'))
    clock.offsetMs = 2 * 3600_000
    try {
      const r = await psql(tcpInfo(), 'select 1')
      assert.notEqual(r.code, 0)
      assert.match(r.stderr, /FATAL: {2}memid tunnel orders: the database orders certificate expired at \S+ and could not be renewed: cannot reach the auth service at 127\.0\.0\.1:3025/)
      assert.match(r.stderr, /HINT: .*memid status/)
      assert.equal(tcp.health().status, 'failed')
      const u = await run('psql', ['-X', '-At', '-w', '-h', path.dirname(unix.address), '-p', String(SOCKET_PORT), '-U', 'app', '-c', 'select 1', 'orders'], { env: cleanPgEnv() })
      assert.match(u.stderr, /certificate expired/)
    } finally {
      clock.offsetMs = 0
    }
  })
})

/** A packet header: length and code (protocol 3.0 unless told). */
function header(len: number, code = 196608): Buffer {
  const b = Buffer.alloc(8)
  b.writeInt32BE(len, 0)
  b.writeInt32BE(code, 4)
  return b
}

/** SSLRequest, GSSENCRequest or a bodyless CancelRequest. */
function packet8(code: number): Buffer {
  return header(8, code)
}

function startupPacketRaw(body: string, encoding: BufferEncoding = 'utf8'): Buffer {
  const b = Buffer.from(body, encoding)
  const head = Buffer.alloc(8)
  head.writeInt32BE(8 + b.length, 0)
  head.writeInt32BE(196608, 4)
  return Buffer.concat([head, b])
}

async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const until = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > until) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 25))
  }
}
