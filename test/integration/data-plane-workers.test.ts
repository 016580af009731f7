/**
 * The kube proxy's and the database tunnel's TCP listeners on two worker threads: every
 * renewal reaches every worker (PostgreSQL and the API server see the new serial on
 * connections each worker served), a kubectl watch survives a renewal, a worker that dies
 * is logged and restarted while the other worker's sessions carry on, /metrics sums the
 * workers, SIGTERM drains every worker, and `workers: 1` keeps the single-thread path.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import { startAgent as startAgentInProcess, type AgentHandle } from '../../src/agent/agent.ts'
import { startAuthServer, type AuthServer } from '../../src/auth/server.ts'
import { createLogger } from '../../src/core/log.ts'
import { runningGroups } from '../../src/services/workers.ts'
import { SqliteStore } from '../../src/storage/sqlite.ts'
import { freePort } from '../fixtures/db-tunnel.ts'
import { startKubeApiServer, type KubeApiServer } from '../fixtures/kube-apiserver.ts'
import { kubectl, KubectlProcess, requireKubectl, type KubectlOptions } from '../fixtures/kube-client.ts'
import { eventually, startAgent, startAuth, tempDir, type AgentFixture, type AuthFixture } from '../fixtures/memid.ts'
import { startPostgres, type PostgresFixture } from '../fixtures/postgres.ts'
import { conninfo, psql, PsqlSession } from '../fixtures/psql.ts'

interface WorkerView {
  worker: number
  status: string
  serial?: string
  accepted: number
  open: number
}

function get(url: string, headers: http.OutgoingHttpHeaders = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    // A new connection per request: the kernel picks a worker per connection.
    http.get(url, { agent: false, headers: { connection: 'close', ...headers } }, (res) => {
      let body = ''
      res.on('data', (d: Buffer) => (body += d.toString()))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    }).on('error', reject)
  })
}

const serialOf = (hex: string) => BigInt(`0x${hex}`)

describe('data plane on two worker threads (agent in-process)', () => {
  let auth: AuthServer
  let pg: PostgresFixture
  let kube: KubeApiServer
  let agent: AgentHandle
  let tmp: { dir: string; cleanup: () => void }
  let k: KubectlOptions
  const lines: Record<string, unknown>[] = []
  let dbPort: number
  let kubeUrl: string
  let diag: string
  const db = () => conninfo({ host: '127.0.0.1', port: dbPort, user: 'app', dbname: 'orders' })
  const svc = (name: string) => agent.status().services.find((s) => s.name === name && !String(s.address).startsWith('/')) as Record<string, any>
  const workersOf = (name: string) => svc(name).workers as WorkerView[]

  before(async () => {
    requireKubectl()
    tmp = tempDir('memid-workers-')
    auth = await startAuthServer({ store: SqliteStore.open(':memory:'), listen: '127.0.0.1:0', clusterName: 'w', logger: createLogger({ sink: { write: () => undefined } }) })
    pg = await startPostgres({})
    kube = await startKubeApiServer({})
    kube.addPod('web-1')
    await auth.admin.addResource('db', { name: 'orders', uri: `postgres://127.0.0.1:${pg.port}`, caPem: pg.serverCaPem })
    await pg.setClientCa(await auth.admin.exportCa('db-client', 'orders'))
    await auth.admin.addResource('kube', { name: 'prod', uri: kube.url, caPem: kube.caPem })
    kube.setClientCa(await auth.admin.exportCa('kube-client', 'prod'))
    await auth.admin.addRole({ name: 'r', databases: ['orders'], dbUsers: ['app'], dbNames: ['orders'], kubeClusters: ['prod'], kubeUsers: ['dev'], kubeGroups: ['viewers'] })
    const { token } = await auth.admin.addBot({ name: 'w', roles: ['r'] })
    agent = startAgentInProcess({
      authServer: auth.address, caPins: [auth.caPin], token: token.token, workers: 2, drainMs: 2_000,
      diagnostics: '127.0.0.1:0', controlSocket: path.join(tmp.dir, 'control.sock'),
      logger: createLogger({ sink: { write: (l) => void lines.push(JSON.parse(l) as Record<string, unknown>) } }),
      services: [
        { type: 'database-tunnel', listen: '127.0.0.1:0', service: 'orders', username: 'app', database: 'orders' },
        { type: 'database-tunnel', listen: path.join(tmp.dir, 'pg', '.s.PGSQL.6432'), service: 'orders', username: 'app', database: 'orders' },
        { type: 'kube-proxy', listen: '127.0.0.1:0', cluster: 'prod' },
      ],
    })
    await agent.ready
    dbPort = Number(String(svc('db-tunnel:orders').address).split(':').pop())
    kubeUrl = `http://${svc('kube-proxy:prod').address}`
    diag = `http://${agent.status().diagnostics}`
    const file = path.join(tmp.dir, 'kubeconfig')
    writeFileSync(file, await agent.kubeconfig())
    k = { home: path.join(tmp.dir, 'home'), env: { KUBECONFIG: file } }
  })

  after(async () => {
    await PsqlSession.closeAll()
    await agent?.stop()
    await auth?.stop()
    await kube?.stop()
    await pg?.stop()
    tmp?.cleanup()
  })

  /** Runs `connect` until every worker of `name` accepted more than it had; returns what each call gave. */
  async function untilEveryWorkerServed<T>(name: string, connect: () => Promise<T>): Promise<T[]> {
    const before = workersOf(name).map((w) => w.accepted)
    const out: T[] = []
    await eventually(async () => {
      out.push(await connect())
      // Workers report their counters every half second.
      await new Promise((r) => setTimeout(r, 50))
      return workersOf(name).every((w, i) => w.accepted > (before[i] as number))
    }, 60_000, `every ${name} worker serving a new connection`)
    return out
  }

  it('each TCP listener runs on two workers; the unix-socket tunnel stays in the main thread', async () => {
    for (const name of ['db-tunnel:orders', 'kube-proxy:prod']) {
      await eventually(() => workersOf(name).length === 2 && workersOf(name).every((w) => w.status === 'ok'), 10_000, `${name} workers ok`)
      assert.equal(svc(name).status, 'ok')
    }
    const unix = agent.status().services.find((s) => String(s.address).startsWith('/'))
    assert.equal(unix?.workers, undefined)
    assert.equal(unix?.status, 'ok')
    const r = await psql(db(), 'select current_user')
    assert.equal(r.stdout.trim(), 'app', r.stderr)
    const ready = await get(`${diag}/readyz`)
    assert.equal(ready.status, 200, ready.body)
  })

  it('a renewal reaches every worker: connections each worker served reach PostgreSQL and the API server with the new serial, and a watch survives it', async () => {
    const watch = new KubectlProcess(['get', 'pods', '--watch'], k)
    try {
      await watch.waitFor(/^web-1\s/m)
      const oldDb = svc('db-tunnel:orders').credential.serial as string
      const oldKube = svc('kube-proxy:prod').credential.serial as string
      await agent.renew()
      const newDb = await eventually(() => {
        const s = svc('db-tunnel:orders').credential.serial as string
        return s !== oldDb ? s : undefined
      }, 20_000, 'a new database certificate')
      const newKube = await eventually(() => {
        const s = svc('kube-proxy:prod').credential.serial as string
        return s !== oldKube ? s : undefined
      }, 20_000, 'a new kube certificate')
      // Each worker says it holds the new credential…
      await eventually(() => workersOf('db-tunnel:orders').every((w) => w.serial === newDb), 10_000, 'every tunnel worker holding the new serial')
      await eventually(() => workersOf('kube-proxy:prod').every((w) => w.serial === newKube), 10_000, 'every proxy worker holding the new serial')

      // …and the servers see it on connections every worker served.
      const seen = await untilEveryWorkerServed('db-tunnel:orders', async () => {
        const r = await psql(db(), 'select client_serial from pg_stat_ssl where pid = pg_backend_pid()')
        assert.equal(r.stderr, '')
        return BigInt(r.stdout.trim())
      })
      assert.deepEqual([...new Set(seen)], [serialOf(newDb)])

      const upstreamBefore = kube.connectionSerials.length
      const answers = await untilEveryWorkerServed('kube-proxy:prod', () => get(`${kubeUrl}/api/v1/namespaces/default/pods`))
      assert.ok(answers.every((a) => a.status === 200))
      const upstream = kube.connectionSerials.slice(upstreamBefore)
      assert.ok(upstream.length >= 2, `each worker opened its own upstream connection (saw ${upstream.length})`)
      assert.deepEqual([...new Set(upstream)], [newKube])

      kube.addPod('after-renewal')
      await watch.waitFor(/^after-renewal\s/m)
      assert.equal(watch.child.exitCode, null)
      const r = await kubectl(['get', 'pod', 'after-renewal', '-o', 'name'], k)
      assert.equal(r.code, 0, r.stderr)
    } finally {
      await watch.stop()
    }
  })

  it('/metrics sums the workers: one series per label set, counting the connections of both', async () => {
    const accepted = workersOf('db-tunnel:orders').reduce((n, w) => n + w.accepted, 0)
    const text = (await get(`${diag}/metrics`)).body
    const series = text.split('\n').filter((l) => l.startsWith('memid_db_tunnel_connections_total{'))
    assert.equal(series.length, 1, series.join('\n'))
    assert.ok(Number(series[0]?.split(' ').pop()) >= accepted, series[0])
    assert.match(text, /memid_kube_proxy_requests_total\{cluster="prod",code="200"\} \d+/)
    assert.match(text, /memid_identity_generation \d+/)
  })

  it('a worker that dies is logged and restarted; sessions on the other worker keep working', async () => {
    const sessions: PsqlSession[] = []
    await eventually(async () => {
      const s = new PsqlSession(db())
      assert.equal(await s.query('select 1'), '1')
      sessions.push(s)
      await new Promise((r) => setTimeout(r, 600))
      return workersOf('db-tunnel:orders').every((w) => w.open > 0)
    }, 60_000, 'open sessions on both workers')
    const onSurvivor = (workersOf('db-tunnel:orders')[0] as WorkerView).open
    const group = [...runningGroups][0]
    assert.ok(group)
    await group.terminateWorker(1)

    const restarted = await eventually(() => lines.find((l) => l.msg === 'data-plane worker 1 exited; restarting it'), 10_000, 'the crash logged')
    assert.equal(restarted.level, 50)
    assert.equal(restarted.worker, 1)
    // Every session on worker 0 still answers; those on worker 1 went with it.
    const results = await Promise.all(sessions.map((s) => s.query('select 2', 5_000).then((v) => v === '2', () => false)))
    assert.equal(results.filter(Boolean).length, onSurvivor)
    await eventually(() => lines.some((l) => l.msg === 'data-plane worker 1 serves again'), 10_000, 'the restart logged')
    await eventually(() => workersOf('db-tunnel:orders').every((w) => w.status === 'ok'), 10_000, 'both workers ok again')
    // The proxy lived in the same thread: it was restarted with it and serves again.
    await eventually(() => workersOf('kube-proxy:prod').every((w) => w.status === 'ok'), 10_000, 'both proxy workers ok again')
    await untilEveryWorkerServed('kube-proxy:prod', async () => assert.equal((await get(`${kubeUrl}/api/v1/namespaces/default/pods`)).status, 200))
    await untilEveryWorkerServed('db-tunnel:orders', async () => assert.equal((await psql(db(), 'select 3')).stdout.trim(), '3'))
    for (const s of sessions) await s.close()
  })
})

describe('workers: 1 keeps every service in the main thread', () => {
  let auth: AuthServer
  let agent: AgentHandle
  let tmp: { dir: string; cleanup: () => void }

  before(async () => {
    tmp = tempDir('memid-workers1-')
    auth = await startAuthServer({ store: SqliteStore.open(':memory:'), listen: '127.0.0.1:0', clusterName: 'w1', logger: createLogger({ sink: { write: () => undefined } }) })
    await auth.admin.addResource('db', { name: 'orders', uri: 'postgres://127.0.0.1:1' })
    await auth.admin.addRole({ name: 'r', databases: ['orders'], dbUsers: ['app'], dbNames: ['*'] })
  })
  after(async () => {
    await agent?.stop()
    await auth?.stop()
    tmp?.cleanup()
  })

  it('no worker threads, no workers in status', async () => {
    const { token } = await auth.admin.addBot({ name: 'one', roles: ['r'] })
    agent = startAgentInProcess({
      authServer: auth.address, caPins: [auth.caPin], token: token.token, workers: 1, controlSocket: path.join(tmp.dir, 'control.sock'),
      services: [{ type: 'database-tunnel', listen: '127.0.0.1:0', service: 'orders', username: 'app' }],
    })
    await agent.ready
    const s = agent.status().services[0]
    assert.equal(s?.workers, undefined)
    assert.equal(s?.status, 'ok')
    assert.equal([...runningGroups].length, 0)
  })
})

describe('memid start --workers 2: SIGTERM drains every worker', () => {
  let auth: AuthFixture
  let agent: AgentFixture
  let pg: PostgresFixture
  let tmp: { dir: string; cleanup: () => void }
  let port: number

  before(async () => {
    tmp = tempDir('memid-workers-drain-')
    auth = await startAuth()
    pg = await startPostgres({})
    assert.equal((await auth.cli(['dbs', 'add', 'orders', '--uri', `postgres://127.0.0.1:${pg.port}`, '--ca-file', pg.serverCaFile])).code, 0)
    const exported = await auth.cli(['auth', 'export', '--kind', 'db-client', '--database', 'orders'])
    await pg.setClientCa(exported.stdout)
    const token = await auth.bot('dbot', ['--databases', 'orders', '--db-users', 'app', '--db-names', 'orders'])
    port = await freePort()
    agent = startAgent({ auth, token, dir: path.join(tmp.dir, 'agent'), args: ['--workers', '2', '--db-tunnel', `127.0.0.1:${port}=orders/app/orders`] })
    await agent.ready
  })

  after(async () => {
    await PsqlSession.closeAll()
    await agent?.stop()
    await auth?.stop()
    await pg?.stop()
    tmp?.cleanup()
  })

  it('queries running on both workers finish after SIGTERM, then the agent exits 0 well within the drain deadline', async () => {
    const info = conninfo({ host: '127.0.0.1', port, user: 'app', dbname: 'orders' })
    const tunnel = async () => ((await agent.status()).services as Record<string, any>[])[0] as Record<string, any>
    const sessions: PsqlSession[] = []
    await eventually(async () => {
      const s = new PsqlSession(info)
      assert.equal(await s.query('select 1'), '1')
      sessions.push(s)
      await new Promise((r) => setTimeout(r, 600))
      return ((await tunnel()).workers as WorkerView[]).every((w) => w.open > 0)
    }, 60_000, 'open sessions on both workers')
    const queries = sessions.map((s) => s.query('select pg_sleep(1.5), 7', 15_000))
    await new Promise((r) => setTimeout(r, 300))
    const t0 = Date.now()
    agent.process.signal('SIGTERM')
    // In-flight queries on both workers complete during the drain.
    for (const q of queries) assert.equal(await q, '|7')
    // New connections are refused once draining.
    const late = await psql(info, 'select 1')
    assert.notEqual(late.stdout.trim(), '1')
    for (const s of sessions) await s.close()
    assert.equal(await agent.process.exited, 0)
    assert.ok(Date.now() - t0 < 10_000, `exited ${Date.now() - t0} ms after SIGTERM (drain deadline 10 s)`)
    const stopped = agent.process.stderr.split('\n').filter((l) => l.includes('"database tunnel stopped"')).map((l) => (JSON.parse(l) as { worker?: number }).worker)
    assert.deepEqual(stopped.sort(), [0, 1])
  })
})
