import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { X509Certificate, createPublicKey } from 'node:crypto'
import { SqliteStore } from '../../../src/storage/sqlite.ts'
import type { BotInstance, Role } from '../../../src/storage/store.ts'
import { createResourceCa, loadOrCreateCas, type CaSet } from '../../../src/auth/cas.ts'
import { issueKubeCertificate } from '../../../src/auth/issue-kube.ts'
import type { IssueContext } from '../../../src/auth/issuer.ts'
import { MemidError } from '../../../src/core/errors.ts'
import { newKey } from '../../helpers/identity.ts'
import { T0, role } from '../../helpers/store-contract.ts'

const kubeRole = (name: string, kubeClusters: string[], kubeUsers: string[], kubeGroups: string[]): Role =>
  role(name, { kubeClusters, kubeUsers, kubeGroups })

describe('kube certificates: one role per certificate, signed by the cluster\'s own CA', () => {
  let store: SqliteStore
  let cas: CaSet

  const issue = (roles: Role[], cluster: string, user?: string) => {
    const ctx: IssueContext = {
      bot: { id: 'b0000000-0000-4000-8000-000000000001', name: 'ci', roles: roles.map((r) => r.name), maxTtlMs: 3_600_000, createdAt: T0 },
      instance: {} as BotInstance, roles, cas, store, publicKey: createPublicKey(newKey().key), ttlMs: 60_000, now: Date.now(),
    }
    return issueKubeCertificate(ctx, { publicKey: '', cluster, ...(user !== undefined ? { user } : {}) })
  }
  const deniedWith = (re: RegExp) => (e: unknown) => e instanceof MemidError && e.code === 'ERR_ACCESS_DENIED' && re.test(e.message)

  before(async () => {
    store = SqliteStore.open(':memory:')
    cas = await loadOrCreateCas(store, 'test')
    for (const name of ['dev', 'prod']) {
      await store.putResource({ kind: 'kube', name, uri: `https://${name}.example.test:6443`, createdAt: T0 }, await createResourceCa('kube', name))
    }
  })
  after(async () => {
    await store.close()
  })

  const app = kubeRole('app', ['prod'], ['ci-app'], ['app-deployers'])
  const appRead = kubeRole('app-read', ['*'], ['ci-app'], ['app-readers'])
  const audit = kubeRole('audit', ['prod'], ['ci-auditor'], ['auditors'])
  const masters = kubeRole('masters', ['*'], [], ['system:masters'])
  const devAdmin = kubeRole('dev-admin', ['dev'], ['ci-app'], ['system:masters'])

  it('the groups are those of the roles granting this cluster and this user, added up', async () => {
    const res = await issue([app, appRead, audit, masters, devAdmin], 'prod', 'ci-app')
    assert.deepEqual(res.groups, ['app-deployers', 'app-readers'])
    const cert = new X509Certificate(res.certificate)
    assert.match(cert.subject, /CN=ci-app/)
    assert.doesNotMatch(cert.subject, /auditors|system:masters/)
  })

  it('the chosen user is the only one the roles grant on that cluster; its groups alone', async () => {
    assert.deepEqual((await issue([audit, masters, devAdmin], 'prod')).groups, ['auditors'])
    assert.deepEqual((await issue([app, devAdmin], 'dev')).groups, ['system:masters'], 'dev-admin grants system:masters on dev only')
    assert.deepEqual((await issue([app, devAdmin], 'prod')).groups, ['app-deployers'])
  })

  it('a role with groups and no user grants nothing, alone or with another role\'s user', async () => {
    await assert.rejects(issue([masters], 'prod'), deniedWith(/has no kube user for cluster "prod"/))
    assert.deepEqual((await issue([masters, app], 'prod')).groups, ['app-deployers'])
  })

  it('a user another cluster\'s role grants is refused', async () => {
    await assert.rejects(issue([app, devAdmin], 'dev', 'ci-auditor'), deniedWith(/kube user "ci-auditor" is not granted/))
    await assert.rejects(issue([devAdmin], 'prod'), deniedWith(/no role granting kube cluster "prod"/))
  })

  it('signs with the cluster\'s own client CA and no other', async () => {
    const res = await issue([app, devAdmin], 'dev')
    const leaf = new X509Certificate(res.certificate)
    const dev = new X509Certificate((await store.getResourceCa('kube', 'dev'))!.publicMaterial)
    const prod = new X509Certificate((await store.getResourceCa('kube', 'prod'))!.publicMaterial)
    assert.ok(leaf.verify(dev.publicKey))
    assert.ok(!leaf.verify(prod.publicKey))
  })
})
