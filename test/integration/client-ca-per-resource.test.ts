/**
 * Issue 10, items 2 and 8. One shared kube-client CA and one db-client CA used to sign every
 * certificate, so a bot granted only `dev` (as system:masters) held a certificate `prod`
 * accepted. Each registered cluster and database now has a client CA of its own, and a
 * kube certificate follows one role: no role's groups ride on another role's user.
 *
 * The attacker here is the bot itself: it holds a `dev` certificate and its key (as the
 * agent's memory does) and aims them at `prod` with the real kubectl and the real psql.
 */
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { X509Certificate, type KeyObject } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { stringify } from 'yaml'
import type { AuthClient } from '../../src/agent/auth-client.ts'
import { startAuth, tempDir, type AuthFixture } from '../fixtures/memid.ts'
import { startKubeApiServer, type KubeApiServer } from '../fixtures/kube-apiserver.ts'
import { kubectl, requireKubectl } from '../fixtures/kube-client.ts'
import { startPostgres, type PostgresFixture } from '../fixtures/postgres.ts'
import { cleanPgEnv, conninfo } from '../fixtures/psql.ts'
import { run } from '../fixtures/db-tunnel.ts'
import { client, join, newKey, type TestIdentity } from '../helpers/identity.ts'

const keyPem = (key: KeyObject) => key.export({ type: 'pkcs8', format: 'pem' }) as string
const b64 = (s: string) => Buffer.from(s).toString('base64')

describe('a client CA per kube cluster and per database', () => {
  let auth: AuthFixture
  let c: AuthClient
  let tmp: { dir: string; cleanup: () => void }
  let files = 0

  /** Creates the roles (name → `roles add` flags) and a bot holding them; returns its identity. */
  async function botWith(name: string, roles: Record<string, string[]>): Promise<TestIdentity> {
    for (const [role, flags] of Object.entries(roles)) {
      const r = await auth.cli(['roles', 'add', role, ...flags])
      assert.equal(r.code, 0, r.stderr)
    }
    const b = await auth.cli(['bots', 'add', name, '--roles', Object.keys(roles).join(','), '--format', 'json'])
    assert.equal(b.code, 0, b.stderr)
    return join(c, (JSON.parse(b.stdout) as { token: { token: string } }).token.token)
  }

  async function exportCa(args: string[]): Promise<string> {
    const r = await auth.cli(['auth', 'export', ...args])
    assert.equal(r.code, 0, r.stderr)
    return r.stdout
  }

  /** A file only this test (the attacker) writes; the agent never would. */
  function file(content: string): string {
    const p = path.join(tmp.dir, `f${++files}`)
    writeFileSync(p, content, { mode: 0o600 })
    return p
  }

  before(async () => {
    auth = await startAuth()
    c = await client(auth)
    tmp = tempDir('memid-client-ca-')
  })
  after(async () => {
    c?.close()
    await auth?.stop()
    tmp?.cleanup()
  })

  describe('kube (real kubectl against the test API server)', () => {
    let prod: KubeApiServer

    /** kubectl auth whoami on prod with this certificate and key in a kubeconfig. */
    function whoami(cert: string, key: KeyObject) {
      const kubeconfig = file(stringify({
        apiVersion: 'v1', kind: 'Config', 'current-context': 'prod',
        clusters: [{ name: 'prod', cluster: { server: prod.url, 'certificate-authority-data': b64(prod.caPem) } }],
        users: [{ name: 'bot', user: { 'client-certificate-data': b64(cert), 'client-key-data': b64(keyPem(key)) } }],
        contexts: [{ name: 'prod', context: { cluster: 'prod', user: 'bot' } }],
      }))
      return kubectl(['auth', 'whoami', '--request-timeout', '20s'], { home: path.join(tmp.dir, 'home'), env: { KUBECONFIG: kubeconfig } })
    }

    before(async () => {
      requireKubectl()
      prod = await startKubeApiServer({})
      const caFile = file(prod.caPem)
      for (const [name, url] of [['prod', prod.url], ['dev', 'https://dev.example.test:6443']] as const) {
        const added = await auth.cli(['kube', 'add', name, '--server', url, '--ca-file', caFile])
        assert.equal(added.code, 0, added.stderr)
        assert.match(added.stdout, new RegExp(`memid auth export --kind kube-client --cluster ${name}`))
      }
      // prod's API server trusts prod's client CA, as the README tells its operator.
      prod.setClientCa(await exportCa(['--kind', 'kube-client', '--cluster', 'prod']))
    })
    after(async () => {
      await prod?.stop()
    })

    test('a dev certificate (system:masters) is refused by the API server that trusts prod\'s client CA', async () => {
      const devBot = await botWith('dev-admin', { 'dev-admin': ['--kube-clusters', 'dev', '--kube-users', 'ci', '--kube-groups', 'system:masters'] })
      const k = newKey()
      const dev = await c.issueKube(devBot.caller, { publicKey: k.publicKey, cluster: 'dev' })
      assert.deepEqual(dev.groups, ['system:masters'])
      const seen = prod.requests.length
      const r = await whoami(dev.certificate, k.key)
      assert.notEqual(r.code, 0, `prod accepted the dev certificate: ${r.stdout}`)
      // The fixture ends the TLS handshake (TLS 1.3: kubectl sees EOF, a reset or a broken
      // pipe, depending on when the close lands); kube-apiserver answers 401. No request
      // reached prod either way (checked below).
      assert.match(r.stderr, /unknown certificate authority|bad certificate|unexpected EOF|connection reset by peer|broken pipe|Unauthorized/i)
      assert.equal(prod.requests.length, seen, 'no request reached prod')

      const devCa = new X509Certificate(await exportCa(['--kind', 'kube-client', '--cluster', 'dev']))
      const prodCa = new X509Certificate(await exportCa(['--kind', 'kube-client', '--cluster', 'prod']))
      const leaf = new X509Certificate(dev.certificate)
      assert.ok(leaf.verify(devCa.publicKey), 'signed by dev\'s own client CA')
      assert.ok(!leaf.verify(prodCa.publicKey))
      assert.match(devCa.subject, /kube-client CA for kube cluster dev/)
    })

    test('a prod certificate from a bot granted prod is accepted (the control)', async () => {
      const prodBot = await botWith('prod-viewer', { 'prod-viewer': ['--kube-clusters', 'prod', '--kube-users', 'ci', '--kube-groups', 'viewers'] })
      const k = newKey()
      const cert = await c.issueKube(prodBot.caller, { publicKey: k.publicKey, cluster: 'prod' })
      const r = await whoami(cert.certificate, k.key)
      assert.equal(r.code, 0, r.stderr)
      assert.match(r.stdout, /Username\s+ci\n/)
      assert.match(r.stdout, /Groups\s+\[viewers system:authenticated\]/)
    })

    test('mixed roles: a user from one role never carries another role\'s groups', async () => {
      const mixed = await botWith('mixed', {
        app: ['--kube-clusters', 'prod', '--kube-users', 'ci-app', '--kube-groups', 'app-deployers'],
        'app-read': ['--kube-clusters', 'prod', '--kube-users', 'ci-app', '--kube-groups', 'app-readers'],
        audit: ['--kube-clusters', 'prod', '--kube-users', 'ci-auditor', '--kube-groups', 'auditors'],
        // No user: alone it grants nothing, so it must add nothing to the others either.
        masters: ['--kube-clusters', '*', '--kube-groups', 'system:masters'],
      })
      const k = newKey()
      const app = await c.issueKube(mixed.caller, { publicKey: k.publicKey, cluster: 'prod', user: 'ci-app' })
      assert.deepEqual(app.groups, ['app-deployers', 'app-readers'], 'roles granting the same cluster and user add up, nothing else')
      const r = await whoami(app.certificate, k.key)
      assert.equal(r.code, 0, r.stderr)
      assert.match(r.stdout, /Username\s+ci-app\n/)
      assert.match(r.stdout, /Groups\s+\[app-deployers app-readers system:authenticated\]/)

      const k2 = newKey()
      const auditor = await c.issueKube(mixed.caller, { publicKey: k2.publicKey, cluster: 'prod', user: 'ci-auditor' })
      assert.deepEqual(auditor.groups, ['auditors'])
      const r2 = await whoami(auditor.certificate, k2.key)
      assert.match(r2.stdout, /Groups\s+\[auditors system:authenticated\]/)
    })
  })

  describe('database (real psql against PostgreSQL 15 with hostssl … cert)', () => {
    let pg: PostgresFixture

    /** psql as `app` on prod's PostgreSQL with this certificate and key. */
    function psqlWith(cert: string, key: KeyObject) {
      const info = conninfo({
        host: '127.0.0.1', port: pg.port, user: 'app', dbname: 'orders', sslmode: 'verify-full',
        sslrootcert: pg.serverCaFile, sslcert: file(cert), sslkey: file(keyPem(key)),
      })
      return run('psql', ['-X', '-At', '-w', '-d', info, '-c', 'select current_user'], { env: cleanPgEnv() })
    }

    before(async () => {
      pg = await startPostgres({ roles: ['app'] })
      for (const [name, uri] of [['prod', `postgres://127.0.0.1:${pg.port}`], ['dev', 'postgres://dev.example.test:5432']] as const) {
        const added = await auth.cli(['dbs', 'add', name, '--uri', uri, '--ca-file', pg.serverCaFile])
        assert.equal(added.code, 0, added.stderr)
      }
      await pg.setClientCa(await exportCa(['--kind', 'db-client', '--database', 'prod']))
    })
    after(async () => {
      await pg?.stop()
    })

    test('a dev certificate for user app is refused by the PostgreSQL that trusts prod\'s client CA', async () => {
      const devBot = await botWith('db-dev', { 'db-dev': ['--databases', 'dev', '--db-users', 'app', '--db-names', 'orders'] })
      const k = newKey()
      const dev = await c.issueDb(devBot.caller, { publicKey: k.publicKey, service: 'dev', username: 'app', database: 'orders' })
      const r = await psqlWith(dev.certificate, k.key)
      assert.notEqual(r.code, 0, `prod accepted the dev certificate: ${r.stdout}`)
      assert.match(r.stderr, /unknown ca|certificate verify failed|certificate/i)
      assert.doesNotMatch(r.stdout, /app/)
    })

    test('a prod certificate from a bot granted prod connects (the control)', async () => {
      const prodBot = await botWith('db-prod', { 'db-prod': ['--databases', 'prod', '--db-users', 'app', '--db-names', 'orders'] })
      const k = newKey()
      const cert = await c.issueDb(prodBot.caller, { publicKey: k.publicKey, service: 'prod', username: 'app', database: 'orders' })
      const r = await psqlWith(cert.certificate, k.key)
      assert.equal(r.code, 0, r.stderr)
      assert.equal(r.stdout.trim(), 'app')
    })
  })

  describe('memid auth export and the CA lifecycle', () => {
    test('export of a client CA without its resource name is a usage error naming the flag', async () => {
      for (const [kind, flag] of [['kube-client', '--cluster'], ['db-client', '--database']] as const) {
        const r = await auth.cli(['auth', 'export', '--kind', kind])
        assert.equal(r.code, 2, r.stderr)
        assert.match(r.stderr, new RegExp(`^memid: ${flag}: required with --kind ${kind}`))
        assert.equal(r.stdout, '')
      }
      const wrong = await auth.cli(['auth', 'export', '--kind', 'tls', '--cluster', 'prod'])
      assert.equal(wrong.code, 2)
      assert.match(wrong.stderr, /--cluster: only with --kind kube-client/)
      const unknown = await auth.cli(['auth', 'export', '--kind', 'kube-client', '--cluster', 'nowhere'])
      assert.equal(unknown.code, 1)
      assert.match(unknown.stderr, /kube cluster "nowhere" is not registered/)
    })

    test('kube rm + kube add gives a new CA; with rm --keep-ca the re-added cluster keeps its CA', async () => {
      assert.equal((await auth.cli(['kube', 'add', 'staging', '--server', 'https://staging.example.test:6443'])).code, 0)
      const first = await exportCa(['--kind', 'kube-client', '--cluster', 'staging'])
      assert.equal((await auth.cli(['kube', 'rm', 'staging'])).code, 0)
      const gone = await auth.cli(['auth', 'export', '--kind', 'kube-client', '--cluster', 'staging'])
      assert.equal(gone.code, 1, 'removed with its CA')
      assert.equal((await auth.cli(['kube', 'add', 'staging', '--server', 'https://staging.example.test:6443'])).code, 0)
      const second = await exportCa(['--kind', 'kube-client', '--cluster', 'staging'])
      assert.notEqual(second, first, 'a re-added cluster gets a new CA')

      const kept = await auth.cli(['kube', 'rm', 'staging', '--keep-ca'])
      assert.match(kept.stdout, /its client CA is kept/)
      const readded = await auth.cli(['kube', 'add', 'staging', '--server', 'https://staging-2.example.test:6443'])
      assert.match(readded.stdout, /keeps the client CA kept by rm --keep-ca/)
      assert.equal(await exportCa(['--kind', 'kube-client', '--cluster', 'staging']), second)

      const audit = JSON.parse((await auth.cli(['audit', '--format', 'json', '--type', 'kube.created'])).stdout).items.reverse() as { fields: Record<string, unknown> }[]
      assert.deepEqual(audit.filter((e) => e.fields.name === 'staging').map((e) => e.fields.clientCa), ['new', 'new', 'kept'])
    })

    test('export works through the admin socket too (a store that is not a file in the data dir)', async () => {
      const other = tempDir('memid-client-ca-sock-')
      const sock = await startAuth({ dataDir: path.join(other.dir, 'data'), storage: `sqlite:${path.join(other.dir, 'elsewhere.db')}` })
      try {
        assert.equal((await sock.cli(['dbs', 'add', 'orders', '--uri', 'postgres://db.example.test:5432'])).code, 0)
        const r = await sock.cli(['auth', 'export', '--kind', 'db-client', '--database', 'orders'])
        assert.equal(r.code, 0, r.stderr)
        assert.ok(new X509Certificate(r.stdout).ca)
        assert.match(new X509Certificate(r.stdout).subject, /db-client CA for database orders/)
        const usage = await sock.cli(['auth', 'export', '--kind', 'db-client'])
        assert.equal(usage.code, 2)
        assert.match(usage.stderr, /--database: required/)
        const missing = await sock.cli(['auth', 'export', '--kind', 'db-client', '--database', 'nope'])
        assert.equal(missing.code, 1)
        assert.match(missing.stderr, /database "nope" is not registered/)
      } finally {
        await sock.stop()
        other.cleanup()
      }
    })
  })
})
