/**
 * `memid start` and local exposure: a kube proxy or database tunnel on a non-loopback
 * address is a config error (exit 2, naming the flag) before the join token is spent; in
 * the config file with `allow_remote: true` it starts, with one warning naming the address.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { runMemid, startAgent, startAuth, tempDir, type AuthFixture } from '../fixtures/memid.ts'

describe('memid start: listeners beyond loopback', () => {
  let auth: AuthFixture
  let tmp: { dir: string; cleanup: () => void }

  before(async () => {
    auth = await startAuth()
    tmp = tempDir('memid-exposure-agent-')
    const added = await auth.cli(['kube', 'add', 'prod', '--server', 'https://127.0.0.1:1'])
    assert.equal(added.code, 0, added.stderr)
  })
  after(async () => {
    await auth?.stop()
    tmp?.cleanup()
  })

  it('--kube-proxy 0.0.0.0:8001=prod and --db-tunnel 0.0.0.0:6432=… exit 2 naming the flag, and the token is not spent', async () => {
    const token = await auth.bot('exposed', ['--kube-clusters', 'prod', '--kube-users', 'ci'])
    const base = ['start', '--auth-server', auth.addr, '--ca-pin', auth.caPin, '--control-socket', path.join(tmp.dir, 'c.sock'), '--token-file', '-']
    const kube = await runMemid([...base, '--kube-proxy', '0.0.0.0:8001=prod'], { input: token })
    assert.equal(kube.code, 2, kube.stderr)
    assert.match(kube.stderr, /^memid: --kube-proxy\[0\]\.listen: 0\.0\.0\.0:8001 is not a loopback address or a unix socket.*allow_remote: true/m)
    const db = await runMemid([...base, '--db-tunnel', '0.0.0.0:6432=orders/app'], { input: token })
    assert.equal(db.code, 2, db.stderr)
    assert.match(db.stderr, /^memid: --db-tunnel\[0\]\.listen: 0\.0\.0\.0:6432 is not a loopback address/m)
    // Validation came before the join: the same token still joins.
    const agent = startAgent({ auth, token, dir: path.join(tmp.dir, 'a0'), args: ['--kube-proxy', '127.0.0.1:0=prod'] })
    try {
      await agent.ready
    } finally {
      await agent.stop()
    }
  })

  it('with allow_remote: true in the config file it starts on 0.0.0.0 and warns once, naming the address', async () => {
    const token = await auth.bot('remote', ['--kube-clusters', 'prod', '--kube-users', 'ci'])
    const config = path.join(tmp.dir, 'agent.yaml')
    writeFileSync(config, 'version: v1\nservices:\n  - { type: kube-proxy, cluster: prod, listen: "0.0.0.0:0", allow_remote: true }\n')
    const agent = startAgent({ auth, token, dir: path.join(tmp.dir, 'a1'), args: ['--config', config] })
    try {
      await agent.ready
      const warnings = agent.process.stderr.split('\n').filter((l) => l.includes('reachable from other hosts'))
      assert.equal(warnings.length, 1, agent.process.stderr)
      assert.match(warnings[0] as string, /kube-proxy:prod listens on 0\.0\.0\.0:\d+, reachable from other hosts \(allow_remote: true\)/)
      assert.match(warnings[0] as string, /"level":40|"level":"warn"/)
    } finally {
      await agent.stop()
    }
  })
})
