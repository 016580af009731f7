/**
 * Platform joins, agent side, end to end: `memid start --join-method github` on a "runner"
 * whose only credential is the Actions ID-token endpoint (no join token, no secret file),
 * serving its ssh agent to a real `ssh` login; refusals exit 1 with one line; an identity
 * that expired while the auth service was away is replaced by a fresh join.
 */
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { MemidProcess, eventually, memidBin, runMemid, startAuth, tempDir, type AuthFixture } from '../fixtures/memid.ts'
import { TestIssuer, githubClaims, type GithubEndpoint } from '../fixtures/oidc-issuer.ts'
import { startSshd, type Sshd } from '../fixtures/sshd.ts'
import { sshLogin } from '../fixtures/ssh-tools.ts'

describe('platform joins (agent side)', () => {
  let issuer: TestIssuer
  let auth: AuthFixture
  let sshd: Sshd
  let tmp: { dir: string; cleanup: () => void }
  let token: string
  const running: MemidProcess[] = []

  before(async () => {
    issuer = await TestIssuer.start()
    auth = await startAuth({ env: { NODE_EXTRA_CA_CERTS: issuer.caFile } })
    assert.equal((await auth.cli(['roles', 'add', 'ci', '--logins', 'deploy'])).code, 0)
    assert.equal((await auth.cli(['bots', 'add', 'ci', '--roles', 'ci'])).code, 0)
    const add = await auth.cli(['tokens', 'add', '--bot', 'ci', '--join-method', 'github', '--name', 'gh-deploy', '--issuer', issuer.url, '--allow', 'repository=acme/deploy,ref=refs/heads/main', '--ttl', '0'])
    assert.equal(add.code, 0, add.stderr)
    token = add.stdout.trim()
    const exported = await auth.cli(['auth', 'export', '--kind', 'ssh-user'])
    sshd = await startSshd({
      userCaLine: exported.stdout, users: ['deploy'],
      async hostCertificate(_line, files) {
        const r = await auth.cli(['auth', 'sign-host', '--host', '127.0.0.1,localhost', '--public-key', files.publicKeyFile, '--out', files.outFile])
        assert.equal(r.code, 0, r.stderr)
        return undefined
      },
    })
    tmp = tempDir('memid-join-agent-')
  })
  after(async () => {
    for (const p of running) await p.stop()
    await sshd?.stop()
    await auth?.stop()
    await issuer?.stop()
    tmp?.cleanup()
  })

  /** The environment of a GitHub Actions job with `permissions: id-token: write`. */
  const runnerEnv = (ep: GithubEndpoint) => ({ ACTIONS_ID_TOKEN_REQUEST_URL: ep.requestUrl, ACTIONS_ID_TOKEN_REQUEST_TOKEN: ep.requestToken, NODE_EXTRA_CA_CERTS: issuer.caFile })
  const baseArgs = (name: string, extra: string[] = []) => ['start', '--auth-server', auth.addr, '--ca-pin', auth.caPin, '--join-method', 'github', '--join-token', name,
    '--control-socket', path.join(tmp.dir, name, 'control.sock'), ...extra]
  const instances = async (): Promise<any[]> => JSON.parse((await auth.cli(['get', 'bot_instance/ci', '--format', 'json'])).stdout).items

  test('without permissions: id-token: write the agent says exactly that, exit 1, before contacting anything', async () => {
    const before = (await instances()).length
    const r = await runMemid(baseArgs('no-perm'), { env: { ACTIONS_ID_TOKEN_REQUEST_URL: '', ACTIONS_ID_TOKEN_REQUEST_TOKEN: '' } })
    assert.equal(r.code, 1, r.stderr)
    assert.equal(r.stderr, 'memid: --join-method github: ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN are not set: the job needs "permissions: id-token: write" (GitHub Actions sets them only then)\n')
    assert.equal((await instances()).length, before)
    const noName = await runMemid(['start', '--auth-server', auth.addr, '--ca-pin', auth.caPin, '--join-method', 'github'])
    assert.equal(noName.code, 2)
    assert.match(noName.stderr, /^memid: --join-token: the github join method needs the token's name/)
    const mixed = await runMemid([...baseArgs('mixed'), '--token-file', '/tmp/x'], { env: { ACTIONS_ID_TOKEN_REQUEST_URL: 'https://x', ACTIONS_ID_TOKEN_REQUEST_TOKEN: 'y' } })
    assert.equal(mixed.code, 2)
    assert.match(mixed.stderr, /^memid: --token-file: is for --join-method token/)
  })

  test('a refused first join exits 1 with the one-line reason; nothing is created', async () => {
    const before = (await instances()).length
    const ep = issuer.github(githubClaims({ repository: 'evil/deploy' }))
    const r = await runMemid(baseArgs(token), { env: runnerEnv(ep) })
    assert.equal(r.code, 1, r.stderr)
    assert.equal(r.stderr.split('\n').filter(Boolean).filter((l) => !l.startsWith('{')).length, 1, 'one line')
    assert.match(r.stderr, /^memid: join: join token gh-deploy: claim repository \("evil\/deploy"\) matches no --allow rule$/m)
    assert.deepEqual(ep.audiences, ['memid'], 'the agent asked for the audience the auth service announced')
    assert.equal((await instances()).length, before)
    const failed = JSON.parse((await auth.cli(['audit', '--type', 'join.failed', '--format', 'json'])).stdout).items[0]
    assert.equal(failed.fields.claim, 'repository')
    assert.ok(!r.stderr.includes('eyJ'), 'no JWT in the output')
  })

  test('joined with github, the agent serves its ssh agent and a real ssh login works; after the identity expired while auth was down it rejoins with a new instance', async () => {
    const ep = issuer.github(githubClaims())
    const dir = path.join(tmp.dir, 'agent')
    const sock = path.join(dir, 'ssh', 'agent.sock')
    const control = path.join(dir, 'run', 'control.sock')
    const p = new MemidProcess(memidBin[0], [memidBin[1], ...baseArgs(token, ['--control-socket', control, '--ssh-agent', sock, '--certificate-ttl', '8s', '--renewal-interval', '3s'])], runnerEnv(ep))
    running.push(p)
    await p.waitFor('agent ready', 30_000)
    const status = async () => JSON.parse((await runMemid(['status', '--control-socket', control, '--format', 'json'])).stdout)
    const first = await status()
    assert.equal(first.joinMethod, 'github')
    assert.equal(first.joins, 1)
    const text = (await runMemid(['status', '--control-socket', control])).stdout
    assert.match(text, /Join method:\s+github \(1 join by this process\)/)
    const inst = (await instances()).find((i) => i.id === first.instanceId)
    assert.deepEqual(inst.claims, { repository: 'acme/deploy', workflow: 'deploy', ref: 'refs/heads/main', run_id: '4242' })
    const knownHostsCommand = `${memidBin[0]} ${memidBin[1]} known-hosts --control-socket ${control}`
    const login = () => sshLogin({ agentSocket: sock, port: sshd.port, user: 'deploy', knownHostsCommand })
    const r = await login()
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.stdout.trim(), 'deploy')
    assert.ok(!p.stderr.includes('eyJ'), 'the JWT is never logged')

    // The auth service goes away for longer than the identity lives.
    await auth.process.stop()
    await new Promise((r) => setTimeout(r, 10_000))
    await auth.restart()
    await p.waitFor((rec) => rec.msg === 'joined' && rec.joinMethod === 'github', 40_000)
    const second = await eventually(async () => {
      const s = await status()
      return s.joins === 2 && s.identity.status === 'valid' ? s : undefined
    }, 30_000, 'a second join')
    assert.notEqual(second.instanceId, first.instanceId, 'a new bot instance')
    assert.equal(ep.audiences.length, 2, 'a fresh JWT for the rejoin')
    await eventually(async () => (await login()).code === 0, 30_000, 'ssh works again')
    assert.equal(await p.stop(), 0)
  })
})
