/**
 * Invariant 1 for the database tunnel: an agent that joins, serves psql through a TCP and
 * a unix-socket tunnel to a PostgreSQL that requires client certificates, renews its
 * database certificate several times with a session held open, and shuts down, traced
 * with `strace -f`, opens no file for writing and creates none other than its unix
 * sockets (and their 0700 directories). The TCP tunnel runs on two worker threads, which
 * must not write either.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { startAuth, startAgent, eventually, tempDir, type AuthFixture, type AgentFixture } from '../fixtures/memid.ts'
import { startPostgres, type PostgresFixture } from '../fixtures/postgres.ts'
import { cleanPgEnv, conninfo, psql, PsqlSession } from '../fixtures/psql.ts'
import { freePort, run } from '../fixtures/db-tunnel.ts'
import { diskWrites, requireStrace, signalTraced, straceArgs, traceSawRead } from '../fixtures/zero-disk.ts'

describe('zero disk: an agent serving a database tunnel writes nothing', () => {
  const strace = requireStrace()
  let auth: AuthFixture
  let agent: AgentFixture
  let pg: PostgresFixture
  let tmp: { dir: string; cleanup: () => void }
  let trace: string
  let port: number
  let sockDir: string

  before(async () => {
    tmp = tempDir('memid-db-strace-')
    trace = path.join(tmp.dir, 'strace.txt')
    sockDir = path.join(tmp.dir, 'pg')
    auth = await startAuth()
    pg = await startPostgres({})
    assert.equal((await auth.cli(['dbs', 'add', 'orders', '--uri', `postgres://127.0.0.1:${pg.port}`, '--ca-file', pg.serverCaFile])).code, 0)
    const exported = await auth.cli(['auth', 'export', '--kind', 'db-client', '--database', 'orders'])
    assert.equal(exported.code, 0, exported.stderr)
    await pg.setClientCa(exported.stdout)
    const token = await auth.bot('dbot', ['--databases', 'orders', '--db-users', 'app', '--db-names', 'orders'])
    port = await freePort()
    agent = startAgent({
      auth, token, dir: path.join(tmp.dir, 'agent'),
      args: [
        '--certificate-ttl', '6s', '--renewal-interval', '2s', '--workers', '2',
        '--db-tunnel', `127.0.0.1:${port}=orders/app/orders`,
        '--db-tunnel', `${sockDir}/.s.PGSQL.6432=orders/app/orders`,
      ],
      wrap: straceArgs(strace, trace),
    })
    await agent.ready
  })

  after(async () => {
    await PsqlSession.closeAll()
    if (agent) signalTraced(agent.process.proc, 'SIGKILL')
    await agent?.stop()
    await auth?.stop()
    await pg?.stop()
    tmp?.cleanup()
  })

  it('join, psql over TCP and the unix socket, three renewals under an open session, and SIGTERM leave no file written', async () => {
    const info = conninfo({ host: '127.0.0.1', port, user: 'app', dbname: 'orders' })
    const tcp = ((await agent.status()).services as Record<string, any>[]).find((s) => s.address === `127.0.0.1:${port}`)
    assert.equal(tcp?.workers?.length, 2, 'the TCP tunnel runs on two worker threads')
    const session = new PsqlSession(info)
    assert.equal(await session.query('select current_user'), 'app')
    const serial = async () => ((await agent.status()).services as Record<string, any>[]).find((s) => s.address === `127.0.0.1:${port}`)?.serial as string
    const serials = new Set([await serial()])
    await eventually(async () => {
      serials.add(await serial())
      return serials.size >= 4
    }, 30_000, 'three database certificate renewals')
    assert.equal(await session.query('select current_user'), 'app')
    assert.equal(await session.close(), 0)
    assert.equal((await psql(info, 'select current_user')).stdout.trim(), 'app')
    const unix = await run('psql', ['-X', '-At', '-w', '-h', sockDir, '-p', '6432', '-U', 'app', '-c', 'select current_user', 'orders'], { env: cleanPgEnv() })
    assert.equal(unix.stdout.trim(), 'app', unix.stderr)

    assert.ok(signalTraced(agent.process.proc, 'SIGTERM'))
    assert.equal(await agent.process.exited, 0, 'agent (under strace) exits 0 on SIGTERM')

    assert.ok(traceSawRead(trace, path.join(agent.dir, 'token')), 'the trace captured the agent reading its token file (file opens are visible)')

    const offending = diskWrites(trace, [path.dirname(agent.controlSocket), sockDir])
    assert.deepEqual(offending, [], `the agent wrote to disk:\n${offending.join('\n')}`)
    const lines = readFileSync(trace, 'utf8')
    assert.match(lines, new RegExp(`bind\\(\\d+, \\{sa_family=AF_INET, sin_port=htons\\(${port}\\), sin_addr=inet_addr\\("127\\.0\\.0\\.1"\\)\\}`), 'the trace saw the TCP tunnel bind')
    assert.ok(lines.includes(`bind(`) && lines.includes(`${sockDir}/.s.PGSQL.6432`), 'the trace saw the unix tunnel bind')
  })
})
