/**
 * Issue 5, end to end: a real PostgreSQL 15 that accepts only client certificates from
 * the db-client CA memid made for it (`hostssl all all 127.0.0.1/32 cert`), a real `memid auth start`
 * with the database registered by `memid dbs add`, a real `memid start --db-tunnel`, and
 * the real psql and pgbench. No certificate or key exists as a file on the client side.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import path from 'node:path'
import { startAuth, startAgent, eventually, tempDir, type AuthFixture, type AgentFixture } from '../fixtures/memid.ts'
import { startPostgres, type PostgresFixture } from '../fixtures/postgres.ts'
import { freePort, run } from '../fixtures/db-tunnel.ts'
import { cleanPgEnv, conninfo, parseErrorResponse, psql, PsqlSession, rawConnect, readUntilClose, startupPacket } from '../fixtures/psql.ts'

/** Short enough that renewals and expiry happen within the test, long enough for slow CI. */
const TTL = '10s'
const RENEWAL = '3s'
const SOCKET_PORT = 6432

describe('psql through the memid agent, end to end', () => {
  let auth: AuthFixture
  let agent: AgentFixture
  let pg: PostgresFixture
  let tmp: { dir: string; cleanup: () => void }
  let tcpPort: number
  let deniedPort: number
  let sockDir: string
  const tcp = (extra: Record<string, string | number> = {}) => conninfo({ host: '127.0.0.1', port: tcpPort, user: 'app', dbname: 'orders', ...extra })
  const tunnelStatus = async (address: string) =>
    ((await agent.status()).services as Record<string, any>[]).find((s) => s.address === address) as Record<string, any>

  before(async () => {
    auth = await startAuth()
    pg = await startPostgres({ roles: ['app', 'admin'] })
    const added = await auth.cli(['dbs', 'add', 'orders', '--uri', `postgres://127.0.0.1:${pg.port}`, '--ca-file', pg.serverCaFile])
    assert.equal(added.code, 0, added.stderr)
    // The server trusts the client CA of "orders" alone, which `dbs add` created.
    const exported = await auth.cli(['auth', 'export', '--kind', 'db-client', '--database', 'orders'])
    assert.equal(exported.code, 0, exported.stderr)
    await pg.setClientCa(exported.stdout)
    const token = await auth.bot('dbot', ['--databases', 'orders', '--db-users', 'app', '--db-names', 'orders'])
    tmp = tempDir('memid-db-e2e-')
    sockDir = path.join(tmp.dir, 'pg')
    tcpPort = await freePort()
    deniedPort = await freePort()
    agent = startAgent({
      auth, token, dir: path.join(tmp.dir, 'agent'),
      args: [
        '--certificate-ttl', TTL, '--renewal-interval', RENEWAL,
        '--db-tunnel', `127.0.0.1:${tcpPort}=orders/app/orders`,
        '--db-tunnel', `${sockDir}/.s.PGSQL.${SOCKET_PORT}=orders/app/orders`,
        // The roles allow only "app": this tunnel never gets a certificate.
        '--db-tunnel', `127.0.0.1:${deniedPort}=orders/admin/orders`,
      ],
    })
    await agent.ready
  })

  after(async () => {
    await PsqlSession.closeAll()
    await agent?.stop()
    await auth?.stop()
    await pg?.stop()
    tmp?.cleanup()
  })

  for (const sslmode of ['disable', 'prefer']) {
    it(`psql through the TCP listener prints app (sslmode=${sslmode})`, async () => {
      const r = await psql(tcp({ sslmode }), 'select current_user')
      assert.equal(r.stderr, '')
      assert.equal(r.stdout.trim(), 'app')
    })

    it(`psql -h DIR -p ${SOCKET_PORT} through the unix socket directory prints app (sslmode=${sslmode})`, async () => {
      const r = await run('psql', ['-X', '-At', '-w', '-h', sockDir, '-p', String(SOCKET_PORT), '-U', 'app', '-c', 'select current_user', 'orders'], {
        env: cleanPgEnv({ PGSSLMODE: sslmode }),
      })
      assert.equal(r.stderr, '')
      assert.equal(r.stdout.trim(), 'app')
    })
  }

  it('the server saw TLS with a client certificate memid issued (CN = app); memid status shows the tunnel', async () => {
    const r = await psql(tcp(), 'select ssl, client_dn, client_serial from pg_stat_ssl where pid = pg_backend_pid()')
    const [ssl, dn, serial] = r.stdout.trim().split('|')
    assert.equal(ssl, 't')
    assert.equal(dn, '/CN=app')
    const issued = agent.process.stderr.split('\n').filter((l) => l.includes('"service certificate issued"') && l.includes('db-tunnel:orders'))
      .map((l) => BigInt(`0x${(JSON.parse(l) as { serial: string }).serial}`))
    assert.ok(issued.includes(BigInt(serial as string)), 'the serial PostgreSQL saw is one the agent was issued')
    const st = await tunnelStatus(`127.0.0.1:${tcpPort}`)
    assert.equal(st.name, 'db-tunnel:orders')
    assert.equal(st.status, 'ok')
    assert.equal(st.user, 'app')
    assert.doesNotMatch(JSON.stringify(await agent.status()), /BEGIN|PRIVATE/)
  })

  it('a user the roles do not allow gets a clear error naming the refusal', async () => {
    const r = await psql(conninfo({ host: '127.0.0.1', port: deniedPort, user: 'admin', dbname: 'orders' }), 'select 1')
    assert.notEqual(r.code, 0)
    assert.match(r.stderr, /FATAL: {2}memid tunnel orders: no db-tunnel:orders credential yet: .*not allowed to connect to "orders" as user "admin"/)
    const st = await tunnelStatus(`127.0.0.1:${deniedPort}`)
    assert.equal(st.status, 'degraded')
    const audit = await auth.cli(['audit', '--format', 'json'])
    assert.match(audit.stdout, /admin/)
  })

  it('a user other than the tunnel\'s gets the ErrorResponse naming the served user', async () => {
    const r = await psql(conninfo({ host: '127.0.0.1', port: tcpPort, user: 'admin', dbname: 'orders' }), 'select 1')
    assert.match(r.stderr, /FATAL: {2}memid tunnel orders: this tunnel serves the database user "app", not "admin"/)
  })

  it('pgbench runs through the tunnel while the agent renews several times: zero failed transactions', async () => {
    const init = await run('pgbench', ['-i', '-s', '1', '-q'], { env: cleanPgEnv(pg.adminEnv('app', 'orders')) })
    assert.equal(init.code, 0, init.stderr)
    const issued = () => agent.process.stderr.split('\n').filter((l) => l.includes('"service certificate issued"') && l.includes(`db-tunnel:orders`)).length
    const before = issued()
    const bench = (args: string[]) =>
      run('pgbench', ['-h', '127.0.0.1', '-p', String(tcpPort), '-U', 'app', '-T', '6', '-n', ...args, 'orders'], {
        env: cleanPgEnv({ PGSSLMODE: 'prefer' }), timeoutMs: 60_000,
      })
    const runs = Promise.all([bench(['-c', '4', '-j', '2']), bench(['-c', '2', '-C'])])
    // SIGHUP forces a renewal now, on top of the 3 s schedule.
    for (let i = 0; i < 4; i++) {
      await new Promise((r) => setTimeout(r, 1200))
      agent.process.signal('SIGHUP')
    }
    for (const r of await runs) {
      assert.equal(r.code, 0, r.stderr + r.stdout)
      assert.match(r.stdout, /number of transactions actually processed: [1-9]\d*/)
      assert.match(r.stdout, /number of failed transactions: 0 \(0\.000%\)/)
      assert.doesNotMatch(r.stderr, /error|FATAL/i)
    }
    // Two tunnels for "orders" renew together: at least 3 renewals each during the run.
    assert.ok(issued() - before >= 6, `certificates issued during the run: ${issued() - before}`)
  })

  it('Ctrl-C in psql cancels a long query through the tunnel (CancelRequest)', async () => {
    const child = spawn('psql', ['-X', '-At', '-w', '-d', tcp(), '-c', 'select pg_sleep(30)'], { env: cleanPgEnv() })
    let stderr = ''
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)))
    await eventually(async () => (await pg.sql("select count(*) from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'")).trim() === '1', 10_000, 'the query to run')
    const started = Date.now()
    child.kill('SIGINT')
    await exited
    assert.ok(Date.now() - started < 5000)
    assert.match(stderr, /canceling statement due to user request/)
  })

  it('random, truncated and oversized startup packets never crash the agent; a good session keeps working', async () => {
    const session = new PsqlSession(tcp())
    assert.equal(await session.query('select current_user'), 'app')
    const header = (len: number, code = 196608) => {
      const b = Buffer.alloc(8)
      b.writeInt32BE(len, 0)
      b.writeInt32BE(code, 4)
      return b
    }
    const junk = [
      Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'),
      header(0x7fffffff),
      header(10_001),
      header(3),
      header(8, 80877103),
      Buffer.concat([header(8, 80877103), header(8, 80877103)]),
      startupPacket({ user: 'app', database: 'orders' }).subarray(0, 15),
      Buffer.concat([header(30), Buffer.from('user\0app')]),
      startupPacket({ user: 'app' }, 0x20000),
      ...Array.from({ length: 20 }, (_, i) => Buffer.from(Array.from({ length: 1 + i * 613 }, (_, j) => (i * 7 + j * 13) & 0xff))),
    ]
    for (const target of [{ host: '127.0.0.1', port: tcpPort }, { path: path.join(sockDir, `.s.PGSQL.${SOCKET_PORT}`) }]) {
      await Promise.all(junk.map(async (bytes) => {
        const s = await rawConnect(target)
        s.end(bytes)
        const answer = await readUntilClose(s)
        assert.ok(answer.closed, 'the tunnel closes the bad connection')
        const body = answer.data[0] === 0x4e ? answer.data.subarray(1) : answer.data
        if (body.length > 0) assert.ok(parseErrorResponse(body), `only 'N' or an ErrorResponse comes back, got ${JSON.stringify(body.toString('latin1'))}`)
      }))
    }
    assert.equal(agent.process.proc.exitCode, null, 'the agent is still running')
    assert.equal(await session.query('select 6 * 7'), '42')
    assert.equal((await psql(tcp(), 'select current_user')).stdout.trim(), 'app')
    assert.equal(await session.close(), 0)
    assert.equal((await tunnelStatus(`127.0.0.1:${tcpPort}`)).status, 'ok')
  })

  it('after expiry with the auth service down, psql gets an ErrorResponse naming the cause', async () => {
    await auth.stop()
    await eventually(async () => (await tunnelStatus(`127.0.0.1:${tcpPort}`)).credential.status === 'expired', 30_000, 'the db certificate to expire')
    const r = await psql(tcp(), 'select 1')
    assert.notEqual(r.code, 0)
    // The cause: the certificate expired, and why it could not be renewed.
    assert.match(r.stderr, /FATAL: {2}memid tunnel orders: the db-tunnel:orders certificate expired at \S+ and could not be renewed: .*(auth service|ECONNREFUSED)/)
    assert.match(r.stderr, /HINT: .*memid status/)
    const u = await run('psql', ['-X', '-At', '-w', '-h', sockDir, '-p', String(SOCKET_PORT), '-U', 'app', '-c', 'select 1', 'orders'], { env: cleanPgEnv() })
    assert.match(u.stderr, /FATAL: {2}memid tunnel orders: the db-tunnel:orders certificate expired/)
  })
})
