import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createPublicKey, generateKeyPairSync, X509Certificate } from 'node:crypto'
import { issueDbCertificate } from '../../../src/auth/issue-db.ts'
import { createResourceCa, loadOrCreateCas, type CaSet } from '../../../src/auth/cas.ts'
import type { IssueContext } from '../../../src/auth/issuer.ts'
import { SqliteStore } from '../../../src/storage/sqlite.ts'
import type { Role } from '../../../src/storage/store.ts'
import { refused, role } from '../../helpers/issue.ts'

describe('issueDbCertificate', () => {
  let store: SqliteStore
  let cas: CaSet
  const caPem = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n'

  before(async () => {
    store = SqliteStore.open(':memory:')
    cas = await loadOrCreateCas(store, 'test')
    // `memid dbs add orders …` (with the server's CA) and `memid dbs add billing …` (without)
    await store.putResource({ kind: 'db', name: 'orders', uri: 'postgres://orders.example:5432', caPem, createdAt: '' }, await createResourceCa('db', 'orders'))
    await store.putResource({ kind: 'db', name: 'billing', uri: 'postgres://billing.example:5432', createdAt: '' }, await createResourceCa('db', 'billing'))
  })
  after(async () => {
    await store.close()
  })

  const ctx = (roles: Role[], now = Date.now()): IssueContext => ({
    bot: { name: 'ci', roles: roles.map((r) => r.name), maxTtlMs: 3_600_000, createdAt: '' } as IssueContext['bot'],
    instance: { id: '6f1c9a8e-1111-4222-8333-444455556666' } as IssueContext['instance'],
    roles, cas, store,
    publicKey: createPublicKey(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey),
    ttlMs: 600_000, now,
  })
  const ordersApp = role('orders-app', { databases: ['orders'], dbUsers: ['app'], dbNames: ['orders'] })

  it('issues CN = the granted user from the database\'s own client CA, for the TTL given, with the upstream it names', async () => {
    const now = Date.now()
    const res = await issueDbCertificate(ctx([ordersApp], now), { publicKey: '', service: 'orders', username: 'app', database: 'orders' })
    assert.equal(res.user, 'app')
    assert.deepEqual(res.upstream, { name: 'orders', uri: 'postgres://orders.example:5432', caPem })
    const cert = new X509Certificate(res.certificate)
    assert.match(cert.subject, /^CN=app$/m)
    assert.equal(res.serial.toLowerCase(), cert.serialNumber.toLowerCase())
    assert.ok(cert.verify(new X509Certificate((await store.getResourceCa('db', 'orders'))!.publicMaterial).publicKey), "signed by orders' own CA")
    assert.ok(!cert.verify(new X509Certificate((await store.getResourceCa('db', 'billing'))!.publicMaterial).publicKey), 'not by another database\'s CA')
    assert.equal(Date.parse(res.notAfter), new Date(cert.validTo).getTime())
    assert.ok(Date.parse(res.notAfter) <= now + 600_000 && Date.parse(res.notAfter) > now + 590_000, res.notAfter)
    assert.equal(Date.parse(res.notBefore), new Date(cert.validFrom).getTime())
  })

  it('names no server CA for a database registered without one', async () => {
    const res = await issueDbCertificate(ctx([role('b', { databases: ['billing'], dbUsers: ['app'], dbNames: ['*'] })]), { publicKey: '', service: 'billing', username: 'app', database: 'x' })
    assert.deepEqual(res.upstream, { name: 'billing', uri: 'postgres://billing.example:5432' })
  })

  it('refuses a registered database the roles do not grant', async () => {
    await refused(issueDbCertificate(ctx([ordersApp]), { publicKey: '', service: 'billing', username: 'app', database: 'orders' }), 'ERR_ACCESS_DENIED', /no role granting database "billing"/)
  })

  it('refuses an unregistered database even under a role granting every database', async () => {
    await refused(issueDbCertificate(ctx([role('all', { databases: ['*'], dbUsers: ['*'], dbNames: ['*'] })]), { publicKey: '', service: 'staging', username: 'app' }), 'ERR_NOT_FOUND', /"staging" is not registered/)
  })

  it('refuses a user the roles do not grant (postgres), naming the user and database name', async () => {
    await refused(issueDbCertificate(ctx([ordersApp]), { publicKey: '', service: 'orders', username: 'postgres', database: 'orders' }), 'ERR_ACCESS_DENIED',
      /not allowed to connect to "orders" as user "postgres" on database name "orders"/)
  })

  it('refuses a request without a database name when the roles grant only named ones, saying how to name one', async () => {
    await refused(issueDbCertificate(ctx([ordersApp]), { publicKey: '', service: 'orders', username: 'app' }), 'ERR_ACCESS_DENIED', /with no database name .*orders\/app\/DBNAME/)
  })

  it('two roles cannot be combined into a grant neither makes alone', async () => {
    const roles = [ordersApp, role('billing-admin', { databases: ['billing'], dbUsers: ['admin'], dbNames: ['*'] })]
    await refused(issueDbCertificate(ctx(roles), { publicKey: '', service: 'orders', username: 'admin', database: 'orders' }), 'ERR_ACCESS_DENIED', /as user "admin"/)
  })
})
