import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { X509Certificate } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import { SqliteStore } from '../../../src/storage/sqlite.ts'
import { SCHEMA_MIGRATIONS_DDL, SQLITE, migrations } from '../../../src/storage/migrations.ts'
import { loadOrCreateCas, resourceAuthority } from '../../../src/auth/cas.ts'
import { T0 } from '../../helpers/store-contract.ts'

let dir: string
before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'memid-cas-'))
})
after(() => rmSync(dir, { recursive: true, force: true }))

/**
 * A store as memid left it before client CAs were per resource: every migration before
 * the one adding `resource_cas` (found by content: the lead renumbers migrations), one
 * shared kube-client and db-client CA, and registered resources.
 */
function storeBeforePerResourceCas(file: string): void {
  const all = migrations(SQLITE)
  const mine = all.findIndex((m) => m.includes('CREATE TABLE resource_cas'))
  assert.ok(mine > 0)
  const db = new DatabaseSync(file)
  db.exec(SCHEMA_MIGRATIONS_DDL)
  all.slice(0, mine).forEach((sql, i) => {
    db.exec(sql)
    db.prepare('INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)').run(i + 1, T0)
  })
  db.close()
  const s = new DatabaseSync(file)
  for (const kind of ['kube-client', 'db-client']) {
    s.prepare('INSERT INTO cas (kind, private_key, public_material, created_at) VALUES (?, ?, ?, ?)').run(kind, Buffer.from([1]), `PEM-shared-${kind}`, T0)
  }
  for (const [kind, name] of [['kube', 'dev'], ['kube', 'prod'], ['db', 'orders']]) {
    s.prepare('INSERT INTO resources (kind, name, uri, ca_pem, created_at) VALUES (?, ?, ?, NULL, ?)').run(kind as string, name as string, 'https://x:1', T0)
  }
  s.close()
}

describe('client CAs per resource: the migration from one shared CA', () => {
  it('gives every existing registration its own CA and drops the shared keys', async () => {
    const file = path.join(dir, 'old.db')
    storeBeforePerResourceCas(file)
    const store = SqliteStore.open(file)
    try {
      await loadOrCreateCas(store, 'memid')
      const pems = new Set<string>()
      for (const [kind, name] of [['kube', 'dev'], ['kube', 'prod'], ['db', 'orders']] as const) {
        const ca = await store.getResourceCa(kind, name)
        assert.ok(ca, `${kind} ${name} has a CA`)
        assert.equal(ca.kind, kind === 'kube' ? 'kube-client' : 'db-client')
        const cert = new X509Certificate(ca.publicMaterial)
        assert.ok(cert.ca)
        assert.match(cert.subject, new RegExp(`for (kube cluster|database) ${name}`))
        pems.add(ca.publicMaterial)
        const authority = await resourceAuthority(store, kind, name)
        assert.ok(cert.checkPrivateKey(authority.key), 'the stored key is the certificate\'s')
      }
      assert.equal(pems.size, 3, 'no two resources share a CA')
      assert.equal(await store.getCa('kube-client'), undefined, 'the shared kube-client key is gone')
      assert.equal(await store.getCa('db-client'), undefined, 'the shared db-client key is gone')

      // A later start changes nothing.
      const before = (await store.getResourceCa('kube', 'prod'))?.publicMaterial
      await loadOrCreateCas(store, 'memid')
      assert.equal((await store.getResourceCa('kube', 'prod'))?.publicMaterial, before)
    } finally {
      await store.close()
    }
  })

  it('a resource without a CA is refused a signature with a clear error, never a shared CA', async () => {
    const store = SqliteStore.open(':memory:')
    try {
      await assert.rejects(resourceAuthority(store, 'db', 'ghost'), /database "ghost" has no client CA yet/)
    } finally {
      await store.close()
    }
  })
})
