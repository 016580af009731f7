import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { startPostgres, type PostgresFixture } from '../fixtures/postgres.ts'
import { testCa } from '../fixtures/db-tunnel.ts'
import { startAuth, type AuthFixture } from '../fixtures/memid.ts'
import { TestIssuer } from '../fixtures/oidc-issuer.ts'
import { client, newKey } from '../helpers/identity.ts'
import { MemidError } from '../../src/core/errors.ts'

const PASSWORD = randomBytes(12).toString('hex')

/** Two auth servers sharing one PostgreSQL: a JWT used on one is refused by the other. */
describe('platform join replay across replicas', () => {
  let pg: PostgresFixture
  let issuer: TestIssuer
  let a: AuthFixture
  let b: AuthFixture

  before(async () => {
    pg = await startPostgres({ clientCaPem: (await testCa('unused client CA')).certPem, roles: [], databases: {}, passwordRole: { name: 'memid', password: PASSWORD } })
    await pg.sql('CREATE DATABASE joins OWNER memid')
    issuer = await TestIssuer.start()
    const storage = `postgres://memid@127.0.0.1:${pg.port}/joins`
    const env = { PGPASSWORD: PASSWORD, NODE_EXTRA_CA_CERTS: issuer.caFile }
    a = await startAuth({ storage, env })
    b = await startAuth({ storage, env })
  })
  after(async () => {
    await b?.stop()
    await a?.stop()
    await issuer?.stop()
    await pg?.stop()
  })

  test('joined through one replica, the same JWT is refused by the other; the refusal is audited and creates nothing', async () => {
    assert.equal((await a.cli(['roles', 'add', 'ci', '--logins', 'deploy'])).code, 0)
    assert.equal((await a.cli(['bots', 'add', 'ci', '--roles', 'ci'])).code, 0)
    const add = await a.cli(['tokens', 'add', '--bot', 'ci', '--join-method', 'oidc', '--issuer', issuer.url, '--allow', 'sub=runner'])
    assert.equal(add.code, 0, add.stderr)
    const name = add.stdout.trim()
    const jwt = await issuer.mint({ sub: 'runner', aud: 'memid' })
    const [ca, cb] = [await client(a), await client(b)]
    try {
      await ca.join({ joinMethod: 'oidc', tokenName: name, idToken: jwt, publicKey: newKey().publicKey })
      await assert.rejects(cb.join({ joinMethod: 'oidc', tokenName: name, idToken: jwt, publicKey: newKey().publicKey }),
        (e: unknown) => e instanceof MemidError && e.code === 'ERR_JOIN_JWT_REPLAYED' && /already used/.test(e.message))
    } finally {
      ca.close()
      cb.close()
    }
    const failed = JSON.parse((await a.cli(['audit', '--type', 'join.failed', '--format', 'json'])).stdout).items.reverse()
    assert.equal(failed.at(-1).code, 'ERR_JOIN_JWT_REPLAYED')
    assert.equal(failed.at(-1).fields.tokenName, name)
    assert.equal(JSON.parse((await b.cli(['get', 'bot_instance/ci', '--format', 'json'])).stdout).items.length, 1)
    assert.equal(await pg.sql('SELECT count(*) FROM join_replays', 'joins'), '1\n')
  })
})
