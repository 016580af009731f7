/**
 * Local exposure with real clients: psql and kubectl run as a second local user (created
 * here with useradd, run with runuser) are refused by the database tunnel and the kube
 * proxy in their protocol's own words, naming their uid; the agent's own user is served;
 * with the second user in allowed_users both are served.
 *
 * Needs root (useradd, runuser), as CI and the dev sandbox run: without it the suite fails
 * saying so rather than passing without having tested anything.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import { chownSync } from 'node:fs'
import { Registry } from 'prom-client'
import { CredentialSource, type TlsClientCredential } from '../../src/credentials/credentials.ts'
import { silentLogger } from '../../src/core/log.ts'
import { createDbTunnelService } from '../../src/services/db-tunnel/index.ts'
import { createKubeProxyService } from '../../src/services/kube-proxy/index.ts'
import type { Service } from '../../src/services/service.ts'
import { dbCredential, run, testCa, TestClock, tlsTunnel, tunnelDeps } from '../fixtures/db-tunnel.ts'
import { startKubeApiServer, type KubeApiServer } from '../fixtures/kube-apiserver.ts'
import { createKubeClientCa, issueKubeCredential, kubectl, kubectlHome, requireKubectl } from '../fixtures/kube-client.ts'
import { startPostgres, type PostgresFixture } from '../fixtures/postgres.ts'
import { cleanPgEnv, conninfo, psql } from '../fixtures/psql.ts'
import { ensureUser } from '../fixtures/sshd.ts'

const OTHER = 'memidpeer'
const own = process.geteuid?.() ?? -1

/** `psql` as another local user (runuser), with the same flags as the fixture's psql(). */
function psqlAs(user: string, info: string, query: string) {
  return run('runuser', ['-u', user, '--', 'psql', '-X', '-At', '-w', '-v', 'ON_ERROR_STOP=1', '-d', info, '-c', query], { env: cleanPgEnv() })
}

/**
 * A raw PostgreSQL startup as another user (Node run with that uid): returns the fields
 * of the ErrorResponse it gets, so the SQLSTATE itself is checked, not only psql's text.
 */
function startupAs(uid: number, gid: number, port: number): Promise<Record<string, string>> {
  const code = `
    const s = require('node:net').connect(${port}, '127.0.0.1')
    const params = Buffer.from('user\\0app\\0database\\0orders\\0\\0')
    const head = Buffer.alloc(8); head.writeInt32BE(8 + params.length, 0); head.writeInt32BE(196608, 4)
    s.on('connect', () => s.write(Buffer.concat([head, params])))
    let got = Buffer.alloc(0)
    s.on('data', (d) => (got = Buffer.concat([got, d])))
    s.on('close', () => {
      const fields = {}
      if (got[0] === 0x45) for (const f of got.subarray(5).toString().split('\\0')) if (f) fields[f[0]] = f.slice(1)
      process.stdout.write(JSON.stringify(fields))
    })`
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', code], { uid, gid, stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (d: Buffer) => (out += d.toString()))
    child.on('error', reject)
    child.on('close', () => resolve(JSON.parse(out || '{}') as Record<string, string>))
  })
}

/** Bytes a raw TCP client run as another user receives before the socket closes. */
function rawAs(uid: number, gid: number, port: number, send: string): Promise<string> {
  const code = `
    const s = require('node:net').connect(${port}, '127.0.0.1', () => s.write(${JSON.stringify(send)}))
    let got = ''
    s.on('data', (d) => { got += d; s.end() })
    s.on('error', () => {})
    s.on('close', () => process.stdout.write(JSON.stringify(got)))`
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', code], { uid, gid, stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (d: Buffer) => (out += d.toString()))
    child.on('error', reject)
    child.on('close', () => resolve(JSON.parse(out || '""') as string))
  })
}

describe('local exposure: only the agent\'s user (and allowed_users) may use the TCP listeners', () => {
  let otherUid: number
  let otherGid: number
  let pg: PostgresFixture
  let api: KubeApiServer
  const services: Service[] = []
  let dbDeps: ReturnType<typeof tunnelDeps>
  let dbOwn: Service
  let dbAllowed: Service
  let kubeOwn: Service
  let kubeAllowed: Service
  let kubeMetrics: Registry
  let home: { home: string; cleanup: () => void }
  const port = (s: Service) => Number(s.address.split(':').pop())
  const info = (s: Service) => conninfo({ host: '127.0.0.1', port: port(s), user: 'app', dbname: 'orders', sslmode: 'disable' })

  before(async () => {
    if (own !== 0) throw new Error('this test needs root: it creates a second local user (useradd) and runs psql and kubectl as that user (runuser); CI runs it as root')
    requireKubectl()
    await ensureUser(OTHER)
    otherUid = Number(execFileSync('id', ['-u', OTHER], { encoding: 'utf8' }).trim())
    otherGid = Number(execFileSync('id', ['-g', OTHER], { encoding: 'utf8' }).trim())

    const clientCa = await testCa('test db-client CA')
    pg = await startPostgres({ clientCaPem: clientCa.certPem, roles: ['app'] })
    const clock = new TestClock()
    const db = new CredentialSource<TlsClientCredential>('database orders', clock)
    db.set(await dbCredential({ clientCa, serverCaPem: pg.serverCaPem, user: 'app', host: pg.host, port: pg.port }))
    dbDeps = tunnelDeps(db, clock)
    const tunnel = async (extra: { allowedUsers?: string[] }) => {
      const s = createDbTunnelService({
        listen: '127.0.0.1:0', service: 'orders', username: 'app', database: 'orders', protocol: 'postgres', maxConnections: 20, connectTimeoutMs: 5000, ...extra,
      }, dbDeps)
      await s.start()
      services.push(s)
      return s
    }
    dbOwn = await tunnel({})
    dbAllowed = await tunnel({ allowedUsers: [OTHER] })

    const kubeCa = await createKubeClientCa()
    api = await startKubeApiServer({ clientCaPem: kubeCa.certPem })
    api.addPod('p1')
    const kube = new CredentialSource<TlsClientCredential>('kube-proxy:test certificate', clock)
    kube.set(await issueKubeCredential({ ca: kubeCa, server: api, user: 'bot-ci', groups: ['developers'] }))
    kubeMetrics = new Registry()
    const proxy = async (extra: { allowedUsers?: string[] }) => {
      const s = createKubeProxyService({ listen: '127.0.0.1:0', cluster: 'test', ...extra }, { credentials: kube, clock, metrics: kubeMetrics, logger: silentLogger() })
      await s.start()
      services.push(s)
      return s
    }
    kubeOwn = await proxy({})
    kubeAllowed = await proxy({ allowedUsers: [String(otherUid)] })
    home = kubectlHome()
    chownSync(home.home, otherUid, otherGid)
  })

  after(async () => {
    for (const s of services.reverse()) await s.stop(1000)
    await pg?.stop()
    await api?.stop()
    home?.cleanup()
  })

  it('psql as another local user gets FATAL 28000 naming its uid; nothing reaches the database', async () => {
    const sessions = () => dbDeps.lines.filter((l) => l.includes('tunnel session open')).length
    const before = sessions()
    const r = await psqlAs(OTHER, info(dbOwn), 'select current_user')
    assert.notEqual(r.code, 0)
    assert.match(r.stderr, new RegExp(`FATAL: {2}memid tunnel orders: connections from uid ${otherUid} are refused: db-tunnel:orders serves only the agent's user \\(uid 0\\)`))
    assert.match(r.stderr, /HINT: {2}run the client as the agent's user, or add its user to allowed_users/)
    const fields = await startupAs(otherUid, otherGid, port(dbOwn))
    assert.equal(fields.C, '28000')
    assert.equal(fields.S, 'FATAL')
    assert.match(fields.M ?? '', new RegExp(`uid ${otherUid}`))
    assert.ok(dbDeps.lines.some((l) => l.includes('local connection refused') && l.includes(`"uid":${otherUid}`)), 'one log line names the uid')
    assert.match(await dbDeps.metrics.metrics(), /memid_local_refused_total\{service="db-tunnel:orders"\} [1-9]/)
    assert.equal(sessions(), before, 'no upstream session was opened for the refused user')
  })

  it('psql as the agent\'s own user is served', async () => {
    const r = await psql(info(dbOwn), 'select current_user')
    assert.equal(r.stderr, '')
    assert.equal(r.stdout.trim(), 'app')
  })

  it('psql as that user is served once it is in allowed_users (by name)', async () => {
    const r = await psqlAs(OTHER, info(dbAllowed), 'select current_user')
    assert.equal(r.stderr, '')
    assert.equal(r.stdout.trim(), 'app')
  })

  it('kubectl get pods as another local user gets 403 with a Kubernetes Status naming its uid', async () => {
    const r = await kubectl(['get', 'pods'], { server: `http://${kubeOwn.address}`, home: home.home, asUser: OTHER })
    assert.notEqual(r.code, 0)
    // Discovery comes first; kubectl prints its message only from the Warning header.
    assert.match(r.stderr, new RegExp(`memid: connections from uid ${otherUid} are refused: kube-proxy:test serves only the agent's user \\(uid 0\\)`))
    assert.match(r.stderr, /Error from server \(Forbidden\)/)
    assert.match(await kubeMetrics.metrics(), /memid_local_refused_total\{service="kube-proxy:test"\} [1-9]/)
    assert.equal(api.requests.filter((q) => q.path.startsWith('/api/v1/namespaces/default/pods')).length, 0, 'nothing was forwarded')
  })

  it('kubectl get pods as the agent\'s own user lists the pods', async () => {
    const ownHome = kubectlHome()
    try {
      const r = await kubectl(['get', 'pods', '-o', 'name'], { server: `http://${kubeOwn.address}`, home: ownHome.home })
      assert.equal(r.code, 0, r.stderr)
      assert.equal(r.stdout.trim(), 'pod/p1')
    } finally {
      ownHome.cleanup()
    }
  })

  it('kubectl get pods as that user lists the pods once its uid is in allowed_users', async () => {
    const r = await kubectl(['get', 'pods', '-o', 'name'], { server: `http://${kubeAllowed.address}`, home: home.home, asUser: OTHER })
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.stdout.trim(), 'pod/p1')
  })

  it('a tls tunnel closes another user\'s connection without a byte, and serves its own user', async () => {
    const t = await tlsTunnel('echo', (s) => s.pipe(s))
    try {
      assert.equal(await rawAs(otherUid, otherGid, t.port, 'ping'), '')
      assert.equal(await rawAs(own, 0, t.port, 'ping'), 'ping')
    } finally {
      await t.stop()
    }
  })
})
