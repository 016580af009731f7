import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { once } from 'node:events'
import path from 'node:path'
// The package's own name: resolved through package.json "exports" to the built dist/,
// exactly as a user's `import { startAgent } from 'memid'` is.
import { startAgent, startAuthServer, SqliteStore, MemidError } from 'memid'
import { tempDir } from '../fixtures/memid.ts'

test('a Node program embeds the agent: ready, renewed events, status, stop', async () => {
  const { dir, cleanup } = tempDir()
  const auth = await startAuthServer({
    store: SqliteStore.open(':memory:'), listen: '127.0.0.1:0', clusterName: 'lib',
    logger: (await import('memid')).createLogger({ sink: { write: () => undefined } }),
  })
  try {
    await auth.admin.addRole({ name: 'lib', logins: ['deploy'] })
    const { token } = await auth.admin.addBot({ name: 'lib', roles: ['lib'] })
    const agent = startAgent({
      authServer: auth.address, caPins: [auth.caPin], token: token.token,
      certificateTtlMs: 8_000, renewalIntervalMs: 2_000,
      controlSocket: path.join(dir, 'run', 'control.sock'),
      services: [{ type: 'ssh-agent', path: path.join(dir, 'run', 'agent.sock'), keyType: 'ed25519' }],
    })
    await agent.ready
    const s = agent.status()
    assert.equal(s.bot, 'lib')
    assert.equal(s.generation, 1)
    assert.equal(s.services[0]?.status, 'ok')
    const [renewed] = (await once(agent, 'renewed')) as [{ generation: number; serial: string }]
    assert.equal(renewed.generation, 2)
    assert.notEqual(renewed.serial, s.identity.status === 'valid' ? s.identity.serial : '')
    assert.match(agent.knownHosts(), /^@cert-authority \* ssh-ed25519 /)
    await agent.stop()
    assert.deepEqual(await agent.closed, { code: 0 })
    assert.ok(!existsSync(path.join(dir, 'run', 'agent.sock')))
  } finally {
    await auth.stop()
    cleanup()
  }
})

test('startAgent rejects ready with a typed error on a bad token', async () => {
  const auth = await startAuthServer({
    store: SqliteStore.open(':memory:'), listen: '127.0.0.1:0', clusterName: 'lib',
    logger: (await import('memid')).createLogger({ sink: { write: () => undefined } }),
  })
  try {
    const agent = startAgent({ authServer: auth.address, caPins: [auth.caPin], token: 'tok-000000000000.' + 'A'.repeat(43) })
    await assert.rejects(agent.ready, (err: unknown) => err instanceof MemidError && err.code === 'ERR_TOKEN_INVALID')
    assert.deepEqual(await agent.closed, { code: 0 })
  } finally {
    await auth.stop()
  }
})
