import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createPublicKey, generateKeyPairSync, X509Certificate } from 'node:crypto'
import { issueKubeCertificate } from '../../../src/auth/issue-kube.ts'
import { createResourceCa, loadOrCreateCas, type CaSet } from '../../../src/auth/cas.ts'
import type { IssueContext } from '../../../src/auth/issuer.ts'
import { SqliteStore } from '../../../src/storage/sqlite.ts'
import type { Role } from '../../../src/storage/store.ts'
import { refused, role } from '../../helpers/issue.ts'

describe('issueKubeCertificate', () => {
  let store: SqliteStore
  let cas: CaSet

  before(async () => {
    store = SqliteStore.open(':memory:')
    cas = await loadOrCreateCas(store, 'test')
    // `memid kube add dev` and `memid kube add prod`
    for (const name of ['dev', 'prod']) await store.putResource({ kind: 'kube', name, uri: `https://${name}.example:6443`, createdAt: '' }, await createResourceCa('kube', name))
  })
  after(async () => {
    await store.close()
  })

  const ctx = (roles: Role[]): IssueContext => ({
    bot: { name: 'ci', roles: roles.map((r) => r.name), maxTtlMs: 3_600_000, createdAt: '' } as IssueContext['bot'],
    instance: { id: '6f1c9a8e-1111-4222-8333-444455556666' } as IssueContext['instance'],
    roles, cas, store,
    publicKey: createPublicKey(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey),
    ttlMs: 600_000, now: Date.now(),
  })
  const devOnly = [role('dev-deployer', { kubeClusters: ['dev'], kubeUsers: ['deployer'], kubeGroups: ['deployers'] })]

  it('issues for a cluster the roles grant: CN = the granted user, O = the granted groups, from the kube-client CA', async () => {
    const res = await issueKubeCertificate(ctx(devOnly), { publicKey: '', cluster: 'dev' })
    assert.equal(res.user, 'deployer')
    assert.deepEqual(res.groups, ['deployers'])
    assert.equal(res.upstream.name, 'dev')
    const cert = new X509Certificate(res.certificate)
    assert.match(cert.subject, /CN=deployer/)
    assert.ok(cert.verify(new X509Certificate((await store.getResourceCa('kube', 'dev'))!.publicMaterial).publicKey), "signed by dev's own kube-client CA")
  })

  it('refuses a registered cluster the roles do not grant (prod, with a role granting only dev)', async () => {
    await refused(issueKubeCertificate(ctx(devOnly), { publicKey: '', cluster: 'prod' }), 'ERR_ACCESS_DENIED', /kube cluster "prod"/)
  })

  it('refuses a kube user the roles do not grant (cluster-admin), even on a granted cluster', async () => {
    await refused(issueKubeCertificate(ctx(devOnly), { publicKey: '', cluster: 'dev', user: 'cluster-admin' }), 'ERR_ACCESS_DENIED', /kube user "cluster-admin"/)
  })

  it('a user granted for another cluster is not granted here', async () => {
    const roles = [...devOnly, role('prod-viewer', { kubeClusters: ['prod'], kubeUsers: ['viewer'] })]
    await refused(issueKubeCertificate(ctx(roles), { publicKey: '', cluster: 'dev', user: 'viewer' }), 'ERR_ACCESS_DENIED', /kube user "viewer"/)
    const res = await issueKubeCertificate(ctx(roles), { publicKey: '', cluster: 'prod' })
    assert.equal(res.user, 'viewer')
    assert.deepEqual(res.groups, [], 'no group from the dev role')
  })

  it('refuses an unregistered cluster even under a role granting every cluster', async () => {
    await refused(issueKubeCertificate(ctx([role('all', { kubeClusters: ['*'], kubeUsers: ['x'] })]), { publicKey: '', cluster: 'staging' }), 'ERR_NOT_FOUND', /not registered/)
  })

  it('needs a user to be named when the roles grant several, and refuses when they grant none', async () => {
    const several = [role('a', { kubeClusters: ['dev'], kubeUsers: ['u1', 'u2'] })]
    await refused(issueKubeCertificate(ctx(several), { publicKey: '', cluster: 'dev' }), 'ERR_ACCESS_DENIED', /several kube users/)
    assert.equal((await issueKubeCertificate(ctx(several), { publicKey: '', cluster: 'dev', user: 'u2' })).user, 'u2')
    await refused(issueKubeCertificate(ctx([role('none', { kubeClusters: ['dev'] })]), { publicKey: '', cluster: 'dev' }), 'ERR_ACCESS_DENIED', /no kube user/)
  })
  it('a refusal lists the users the roles do grant, or says none', async () => {
    const several = [role('a', { kubeClusters: ['dev'], kubeUsers: ['u2', 'u1'] })]
    await refused(issueKubeCertificate(ctx(several), { publicKey: '', cluster: 'dev', user: 'root' }), 'ERR_ACCESS_DENIED', /; allowed: u1, u2$/)
    await refused(issueKubeCertificate(ctx(several), { publicKey: '', cluster: 'dev' }), 'ERR_ACCESS_DENIED', /several kube users \(u1, u2\); name one/)
    await refused(issueKubeCertificate(ctx([role('none', { kubeClusters: ['dev'] })]), { publicKey: '', cluster: 'dev', user: 'root' }), 'ERR_ACCESS_DENIED', /; allowed: none$/)
  })

  it('passes on the API server\'s CA when the cluster was registered with one, and none otherwise', async () => {
    const caPem = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n'
    await store.putResource({ kind: 'kube', name: 'withca', uri: 'https://withca.example:6443', caPem, createdAt: '' }, await createResourceCa('kube', 'withca'))
    const all = [role('all', { kubeClusters: ['*'], kubeUsers: ['deployer'] })]
    assert.deepEqual((await issueKubeCertificate(ctx(all), { publicKey: '', cluster: 'withca' })).upstream, { name: 'withca', uri: 'https://withca.example:6443', caPem })
    assert.deepEqual((await issueKubeCertificate(ctx(all), { publicKey: '', cluster: 'dev' })).upstream, { name: 'dev', uri: 'https://dev.example:6443' })
  })
})
