/**
 * The kubernetes join from the agent library: the projected token is read from its file at
 * join time (a missing file is a one-line error naming it), and the instance records the
 * pod's namespace, service account and pod.
 */
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { writeFileSync } from 'node:fs'
import { startAgent } from '../../src/agent/agent.ts'
import { MemidError } from '../../src/core/errors.ts'
import { startAuth, tempDir, type AuthFixture } from '../fixtures/memid.ts'
import { ServiceAccountIssuer } from '../fixtures/kube-service-accounts.ts'

describe('kubernetes join (agent library)', () => {
  let auth: AuthFixture
  let tmp: { dir: string; cleanup: () => void }
  const sa = new ServiceAccountIssuer()

  before(async () => {
    auth = await startAuth()
    tmp = tempDir('memid-join-k8s-')
    const jwks = path.join(tmp.dir, 'jwks.json')
    writeFileSync(jwks, JSON.stringify(await sa.jwks()))
    assert.equal((await auth.cli(['roles', 'add', 'reports', '--logins', 'deploy'])).code, 0)
    assert.equal((await auth.cli(['bots', 'add', 'reports', '--roles', 'reports'])).code, 0)
    const add = await auth.cli(['tokens', 'add', '--bot', 'reports', '--join-method', 'kubernetes', '--name', 'k8s-reports', '--issuer', sa.issuer, '--jwks-file', jwks, '--allow', 'sub=system:serviceaccount:reports:*'])
    assert.equal(add.code, 0, add.stderr)
  })
  after(async () => {
    await auth?.stop()
    tmp?.cleanup()
  })

  const agentFor = (file: string) => startAgent({
    authServer: auth.addr, caPins: [auth.caPin],
    onboarding: { method: 'kubernetes', tokenName: 'k8s-reports', idToken: { kind: 'file', path: file } },
  })

  test('joins with the projected token file; status shows the method; a missing file says where to mount it', async () => {
    const file = path.join(tmp.dir, 'memid')
    writeFileSync(file, `${await sa.token({ namespace: 'reports', serviceAccount: 'reporting-job', audiences: ['memid'], expirationSeconds: 600, pod: 'reporting-job-x1' })}\n`)
    const agent = agentFor(file)
    try {
      await agent.ready
      const s = agent.status()
      assert.equal(s.joinMethod, 'kubernetes')
      assert.equal(s.joins, 1)
      const inst = JSON.parse((await auth.cli(['get', `bot_instance/reports/${s.instanceId}`, '--format', 'json'])).stdout)
      assert.deepEqual(inst.claims, { 'kubernetes.io.namespace': 'reports', 'kubernetes.io.serviceaccount.name': 'reporting-job', 'kubernetes.io.pod.name': 'reporting-job-x1' })
    } finally {
      await agent.stop()
    }
    const missing = agentFor(path.join(tmp.dir, 'nope'))
    await assert.rejects(missing.ready, (e: unknown) => e instanceof MemidError && e.code === 'ERR_JOIN_ENV_MISSING'
      && e.message === `--id-token-file: cannot read ${path.join(tmp.dir, 'nope')}: ENOENT (mount a projected service-account token there: serviceAccountToken with path memid)`)
    assert.throws(() => startAgent({ authServer: auth.addr, caPins: [auth.caPin], onboarding: { method: 'kubernetes', tokenName: 'k', idToken: { kind: 'env' } } }), /onboarding.idToken: does not fit the kubernetes join method/)
  })
})
