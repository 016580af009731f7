import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { SignJWT, UnsecuredJWT, base64url } from 'jose'
import { AuthClient } from '../../src/agent/auth-client.ts'
import { MemidError } from '../../src/core/errors.ts'
import { startAuth, type AuthFixture } from '../fixtures/memid.ts'
import { TestIssuer, githubClaims, publicPem, type SigningKey } from '../fixtures/oidc-issuer.ts'
import { client, newKey } from '../helpers/identity.ts'
import { socketRequest } from '../../src/cli/socket-client.ts'
import path from 'node:path'
import { generateKeyPairSync } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { startKubeApiServer, type KubeApiServer } from '../fixtures/kube-apiserver.ts'
import { ServiceAccountIssuer } from '../fixtures/kube-service-accounts.ts'
import { createKubeClientCa, kubectl, kubectlHome, requireKubectl } from '../fixtures/kube-client.ts'
import { issueLeaf } from '../../src/pki/x509.ts'

const CLUSTER = 'memid'

interface Refusal {
  code: string
  message: RegExp
  claim?: string
}

/**
 * Platform joins against a real auth process that trusts the test issuer's CA through
 * NODE_EXTRA_CA_CERTS. Each refusal is checked for its code, its one-line message, the
 * join.failed audit event (token and first mismatching claim, never the JWT) and that no
 * bot instance was created.
 */
describe('platform joins (auth side)', () => {
  let issuer: TestIssuer
  let auth: AuthFixture
  let c: AuthClient
  let es: SigningKey

  before(async () => {
    issuer = await TestIssuer.start()
    // Published before the auth service first fetches the JWKS: a later key would wait for the once-a-minute refresh.
    es = await issuer.addKey('ES256')
    // One worker: this file makes many refused joins in a row, and each of N workers allows 1/N of the join rate.
    auth = await startAuth({ env: { NODE_EXTRA_CA_CERTS: issuer.caFile }, args: ['--workers', '1'] })
    c = await client(auth)
    assert.equal((await auth.cli(['roles', 'add', 'ci', '--logins', 'deploy'])).code, 0)
    assert.equal((await auth.cli(['bots', 'add', 'ci', '--roles', 'ci'])).code, 0)
  })
  after(async () => {
    c?.close()
    await auth?.stop()
    await issuer?.stop()
  })

  async function addToken(args: string[]): Promise<string> {
    const r = await auth.cli(['tokens', 'add', '--bot', 'ci', ...args])
    assert.equal(r.code, 0, r.stderr)
    const name = r.stdout.trim()
    assert.match(name, /^[A-Za-z0-9][A-Za-z0-9._@-]*$/, 'prints only the name')
    return name
  }

  // The admin socket directly: the CLI's own output is checked once, in its test; a process per look is slow.
  const admin = <T>(method: string, p: string, body?: unknown) => socketRequest<T>(path.join(auth.dataDir, 'admin.sock'), method, p, body, 'admin socket', '')
  const instances = async () => (await admin<{ items: any[] }>('GET', '/v1/instances?bot=ci&limit=10000')).items
  // Paged newest first; oldest first here, as the assertions read them.
  const audit = async (type: string) => (await admin<{ items: any[] }>('POST', '/v1/audit', { type, limit: 10_000 })).items.reverse()

  function join(joinMethod: 'github' | 'gitlab' | 'kubernetes' | 'oidc', tokenName: string, idToken: string) {
    return c.join({ joinMethod, tokenName, idToken, publicKey: newKey().publicKey })
  }

  async function refused(joinMethod: 'github' | 'gitlab' | 'kubernetes' | 'oidc', tokenName: string, idToken: string, want: Refusal): Promise<void> {
    const before = (await instances()).length
    const failedBefore = (await audit('join.failed')).length
    let err: unknown
    try {
      await join(joinMethod, tokenName, idToken)
    } catch (e) {
      err = e
    }
    assert.ok(err instanceof MemidError, `refused, got ${String(err)}`)
    assert.equal(err.code, want.code, err.message)
    assert.match(err.message, want.message)
    assert.ok(!/[\r\n]/.test(err.message), 'one line')
    for (const part of idToken.split('.').filter((p) => p.length > 16)) assert.ok(!err.message.includes(part), 'the JWT is not in the message')
    const failed = await audit('join.failed')
    assert.equal(failed.length, failedBefore + 1, 'one join.failed event')
    const ev = failed.at(-1)
    assert.equal(ev.code, want.code)
    assert.equal(ev.fields.tokenName, tokenName)
    assert.equal(ev.fields.joinMethod, joinMethod)
    if (want.claim !== undefined) assert.equal(ev.fields.claim, want.claim, 'the first mismatching claim is named')
    for (const part of idToken.split('.').filter((p) => p.length > 16)) assert.ok(!JSON.stringify(ev).includes(part), 'the JWT is not in the audit event')
    assert.equal((await instances()).length, before, 'no bot instance was created')
  }

  test('tokens add checks its input and prints only the name; ls shows method, rules and joins', async () => {
    const noId = await auth.cli(['tokens', 'add', '--bot', 'ci', '--join-method', 'github', '--allow', 'ref=refs/heads/main'])
    assert.notEqual(noId.code, 0)
    assert.match(noId.stderr, /--allow: a rule must name at least one of repository, repository_owner, sub/)
    const globOnly = await auth.cli(['tokens', 'add', '--bot', 'ci', '--join-method', 'github', '--allow', 'repository=*'])
    assert.match(globOnly.stderr, /must not be only "\*" or "\?" globs/)
    const noIssuer = await auth.cli(['tokens', 'add', '--bot', 'ci', '--join-method', 'oidc', '--allow', 'sub=x'])
    assert.match(noIssuer.stderr, /--issuer: the oidc join method needs the issuer URL/)
    const http = await auth.cli(['tokens', 'add', '--bot', 'ci', '--join-method', 'oidc', '--allow', 'sub=x', '--issuer', 'http://example.com'])
    assert.match(http.stderr, /--issuer: must be an https:\/\/ URL/)
    const badRule = await auth.cli(['tokens', 'add', '--bot', 'ci', '--join-method', 'github', '--allow', 'repository'])
    assert.match(badRule.stderr, /--allow: "repository" is not KEY=VALUE/)

    const name = await addToken(['--join-method', 'github', '--name', 'gh-listed', '--issuer', issuer.url, '--allow', 'repository=acme/deploy,ref=refs/heads/main', '--allow', 'repository_owner=acme,environment=prod', '--ttl', '0'])
    assert.equal(name, 'gh-listed')
    const ls = JSON.parse((await auth.cli(['tokens', 'ls', '--format', 'json'])).stdout).items.find((t: any) => t.name === name)
    assert.equal(ls.joinMethod, 'github')
    assert.deepEqual(ls.platform.rules, [{ repository: 'acme/deploy', ref: 'refs/heads/main' }, { repository_owner: 'acme', environment: 'prod' }])
    assert.equal(ls.platform.audience, CLUSTER, 'the audience defaults to the cluster name')
    assert.equal(ls.expiresAt, undefined, '--ttl 0: never expires')
    assert.equal(ls.joinCount, 0)
    const text = (await auth.cli(['tokens', 'ls'])).stdout
    assert.match(text, /gh-listed\s+ci\s+github\s+repository=acme\/deploy,ref=refs\/heads\/main \| repository_owner=acme,environment=prod\s+never\s+0 joins/)
    const info = await c.joinTokenInfo(name)
    assert.deepEqual(info, { name, joinMethod: 'github', audience: CLUSTER })
    await assert.rejects(c.joinTokenInfo('nope'), (e: unknown) => e instanceof MemidError && e.code === 'ERR_NOT_FOUND')
  })


  test('github: accepted join, many times, each its own instance with the claims; wrong repository refused', async () => {
    const name = await addToken(['--join-method', 'github', '--name', 'gh-ok', '--issuer', issuer.url, '--allow', 'repository=acme/deploy,ref=refs/heads/*', '--ttl', '0'])
    const ep = issuer.github(githubClaims())
    const a = await join('github', name, await issuer.mint({ ...ep.claims, aud: CLUSTER }))
    const b = await join('github', name, await issuer.mint({ ...githubClaims(), aud: CLUSTER }))
    assert.notEqual(a.instanceId, b.instanceId, 'each join creates its own bot instance')
    const inst = JSON.parse((await auth.cli(['get', `bot_instance/ci/${a.instanceId}`, '--format', 'json'])).stdout)
    assert.equal(inst.joinMethod, 'github')
    assert.equal(inst.tokenName, name)
    assert.deepEqual(inst.claims, { repository: 'acme/deploy', workflow: 'deploy', ref: 'refs/heads/main', run_id: '4242' })
    const ok = (await audit('join')).at(-1)
    assert.equal(ok.fields.joinMethod, 'github')
    const ls = JSON.parse((await auth.cli(['tokens', 'ls', '--format', 'json'])).stdout).items.find((t: any) => t.name === name)
    assert.equal(ls.joinCount, 2)

    await refused('github', name, await issuer.mint({ ...githubClaims({ repository: 'evil/deploy' }), aud: CLUSTER }), { code: 'ERR_JOIN_RULE_MISMATCH', message: /claim repository \("evil\/deploy"\) matches no --allow rule/, claim: 'repository' })
    await refused('github', name, await issuer.mint({ ...githubClaims({ ref: 'refs/tags/v1' }), aud: CLUSTER }), { code: 'ERR_JOIN_RULE_MISMATCH', message: /claim ref/, claim: 'ref' })
    await refused('gitlab', name, await issuer.mint({ ...githubClaims(), aud: CLUSTER }), { code: 'ERR_JOIN_METHOD_MISMATCH', message: /is for the github join method, not gitlab/ })

    assert.equal((await auth.cli(['tokens', 'rm', name])).code, 0)
    const gone = await join('github', name, await issuer.mint({ ...githubClaims(), aud: CLUSTER })).catch((e: unknown) => e)
    assert.ok(gone instanceof MemidError && gone.code === 'ERR_TOKEN_INVALID', 'tokens rm stops further joins')
  })

  test('verification: audience, issuer, time, lifetime, algorithms, keys, signature', async () => {
    const name = await addToken(['--join-method', 'oidc', '--name', 'oidc-v', '--issuer', issuer.url, '--allow', 'sub=svc:*', '--ttl', '1h'])
    const claims = { sub: 'svc:builder', aud: CLUSTER }
    await refused('oidc', name, await issuer.mint({ ...claims, aud: 'someone-else' }), { code: 'ERR_JOIN_WRONG_AUDIENCE', message: /audience is "someone-else", expected "memid"/, claim: 'aud' })
    await refused('oidc', name, await issuer.mint({ ...claims, iss: 'https://evil.example.com' }), { code: 'ERR_JOIN_WRONG_ISSUER', message: /issuer is "https:\/\/evil.example.com"/, claim: 'iss' })
    await refused('oidc', name, await issuer.mint(claims, { iatOffsetS: -700, lifetimeS: 600 }), { code: 'ERR_JOIN_JWT_EXPIRED', message: /the JWT expired at/, claim: 'exp' })
    await refused('oidc', name, await issuer.mint(claims, { nbfOffsetS: 300 }), { code: 'ERR_JOIN_JWT_NOT_YET_VALID', message: /not valid before/, claim: 'nbf' })
    await refused('oidc', name, await issuer.mint(claims, { iatOffsetS: 300 }), { code: 'ERR_JOIN_JWT_NOT_YET_VALID', message: /issued in the future/, claim: 'iat' })
    await refused('oidc', name, await issuer.mint(claims, { lifetimeS: 7200 }), { code: 'ERR_JOIN_JWT_LIFETIME', message: /valid for 7200s, more than the 3600s allowed/ })
    // Leeway: expired 10 s ago is still inside the 30 s allowance.
    await join('oidc', name, await issuer.mint(claims, { iatOffsetS: -310, lifetimeS: 300 }))

    const now = Math.floor(Date.now() / 1000)
    const none = new UnsecuredJWT({ ...claims, iss: issuer.url, iat: now, exp: now + 60 }).encode()
    await refused('oidc', name, none, { code: 'ERR_JOIN_JWT_INVALID', message: /algorithm "none" is not allowed/ })
    const hs = await new SignJWT({ ...claims, iss: issuer.url, iat: now, exp: now + 60 }).setProtectedHeader({ alg: 'HS256', kid: issuer.signingKey.kid })
      .sign(new TextEncoder().encode(publicPem(issuer.signingKey)))
    await refused('oidc', name, hs, { code: 'ERR_JOIN_JWT_INVALID', message: /algorithm "HS256" is not allowed/ })
    const stranger = await issuer.addKey('ES256', { publish: false })
    await refused('oidc', name, await issuer.mint(claims, { key: stranger }), { code: 'ERR_JOIN_JWT_INVALID', message: /no key of the issuer's JWKS matches/ })
    const good = await issuer.mint(claims)
    const [h, , s] = good.split('.') as [string, string, string]
    const forged = `${h}.${base64url.encode(JSON.stringify({ ...claims, sub: 'svc:admin', iss: issuer.url, iat: now, exp: now + 60 }))}.${s}`
    await refused('oidc', name, forged, { code: 'ERR_JOIN_JWT_INVALID', message: /signature does not verify/ })
    await refused('oidc', name, 'not-a-jwt', { code: 'ERR_JOIN_JWT_INVALID', message: /not a JWT/ })
    await refused('oidc', name, await issuer.mint({ ...claims, sub: 'user:mallory' }), { code: 'ERR_JOIN_RULE_MISMATCH', message: /claim sub/, claim: 'sub' })
  })

  test('ES256 and RS256, gitlab and oidc methods accepted; nested claims by dotted path', async () => {
    const gl = await addToken(['--join-method', 'gitlab', '--issuer', issuer.url, '--allow', 'project_path=acme/app,ref_protected=true'])
    await refused('gitlab', gl, await issuer.mint({ sub: 'project_path:acme/app:ref_type:branch:ref:main', project_path: 'acme/other', ref_protected: 'true', pipeline_id: '77', aud: CLUSTER }, { key: es }), { code: 'ERR_JOIN_RULE_MISMATCH', message: /project_path/, claim: 'project_path' })
    const id = await join('gitlab', gl, await issuer.mint({ sub: 'project_path:acme/app:ref_type:branch:ref:main', project_path: 'acme/app', ref_protected: 'true', pipeline_id: '77', aud: CLUSTER }, { key: es }))
    const inst = JSON.parse((await auth.cli(['get', `bot_instance/ci/${id.instanceId}`, '--format', 'json'])).stdout)
    assert.deepEqual(inst.claims, { project_path: 'acme/app', pipeline_id: '77' })
    const oi = await addToken(['--join-method', 'oidc', '--issuer', issuer.url, '--audience', 'builders', '--allow', 'sub=ci-?,org.team=platform'])
    await join('oidc', oi, await issuer.mint({ sub: 'ci-7', org: { team: 'platform' }, aud: ['other', 'builders'] }, { key: issuer.published[0] }))
  })

  test('kubernetes: --jwks-file from the real kubectl get --raw /openid/v1/jwks; a projected token joins, other service accounts and audiences do not', async () => {
    requireKubectl()
    const sa = new ServiceAccountIssuer()
    const clientCa = await createKubeClientCa()
    const kube: KubeApiServer = await startKubeApiServer({ clientCaPem: clientCa.certPem, serviceAccounts: sa })
    const home = kubectlHome()
    try {
      // kubectl authenticates as an administrator with a client certificate (test files in a private temp HOME).
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
      const leaf = await issueLeaf({ ca: clientCa, publicKey, commonName: 'admin', organizations: ['system:masters'], ttlMs: 3600_000, usage: 'client' })
      const f = (n: string, text: string) => {
        const p = path.join(home.home, n)
        writeFileSync(p, text, { mode: 0o600 })
        return p
      }
      const creds = ['--server', kube.url, '--certificate-authority', f('ca.pem', kube.caPem), '--client-certificate', f('admin.pem', leaf.pem),
        '--client-key', f('admin-key.pem', privateKey.export({ format: 'pem', type: 'pkcs8' }) as string)]
      const raw = await kubectl([...creds, 'get', '--raw', '/openid/v1/jwks'], { home: home.home })
      assert.equal(raw.code, 0, raw.stderr)
      const jwksFile = f('jwks.json', raw.stdout)
      const name = await addToken(['--join-method', 'kubernetes', '--issuer', sa.issuer, '--jwks-file', jwksFile, '--allow', 'sub=system:serviceaccount:ci:memid,kubernetes.io.namespace=ci'])
      const create = (account: string, audience: string) => sa.token({ namespace: 'ci', serviceAccount: account, audiences: [audience], expirationSeconds: 600, pod: 'runner-1' })
      const id = await join('kubernetes', name, await create('memid', CLUSTER))
      const inst = (await instances()).find((i) => i.id === id.instanceId)
      assert.deepEqual(inst.claims, { 'kubernetes.io.namespace': 'ci', 'kubernetes.io.serviceaccount.name': 'memid', 'kubernetes.io.pod.name': 'runner-1' })
      await refused('kubernetes', name, await create('default', CLUSTER), { code: 'ERR_JOIN_RULE_MISMATCH', message: /claim sub \("system:serviceaccount:ci:default"\)/, claim: 'sub' })
      await refused('kubernetes', name, await create('memid', 'https://kubernetes.default.svc.cluster.local'), { code: 'ERR_JOIN_WRONG_AUDIENCE', message: /expected "memid"/, claim: 'aud' })
      // A JWT signed by some other issuer's key never verifies against the cluster's JWKS.
      await refused('kubernetes', name, await issuer.mint({ sub: 'system:serviceaccount:ci:memid', iss: sa.issuer, aud: CLUSTER }), { code: 'ERR_JOIN_JWT_INVALID', message: /no key of the issuer's JWKS matches/ })
    } finally {
      home.cleanup()
      await kube.stop()
    }
  })

  test('a replayed JWT is refused, also after the auth service restarts', async () => {
    const name = await addToken(['--join-method', 'oidc', '--issuer', issuer.url, '--allow', 'sub=replay'])
    const withJti = await issuer.mint({ sub: 'replay', aud: CLUSTER, jti: 'run-1' })
    const withoutJti = await issuer.mint({ sub: 'replay', aud: CLUSTER })
    await join('oidc', name, withJti)
    await join('oidc', name, withoutJti)
    await refused('oidc', name, withJti, { code: 'ERR_JOIN_JWT_REPLAYED', message: /this JWT was already used to join/ })
    await refused('oidc', name, withoutJti, { code: 'ERR_JOIN_JWT_REPLAYED', message: /already used/ })
    c.close()
    await auth.restart()
    c = await client(auth)
    await refused('oidc', name, withJti, { code: 'ERR_JOIN_JWT_REPLAYED', message: /already used/ })
    await refused('oidc', name, withoutJti, { code: 'ERR_JOIN_JWT_REPLAYED', message: /already used/ })
  })

  test('issuer down: cached keys still verify; with nothing cached the error says so', async () => {
    const name = await addToken(['--join-method', 'oidc', '--issuer', issuer.url, '--allow', 'sub=down'])
    await join('oidc', name, await issuer.mint({ sub: 'down', aud: CLUSTER }))
    issuer.setDown(true)
    try {
      await join('oidc', name, await issuer.mint({ sub: 'down', aud: CLUSTER }))
    } finally {
      issuer.setDown(false)
    }
    const dead = await TestIssuer.start()
    const deadUrl = dead.url
    await dead.stop()
    const other = await addToken(['--join-method', 'oidc', '--issuer', deadUrl, '--allow', 'sub=down'])
    await refused('oidc', other, await issuer.mint({ sub: 'down', aud: CLUSTER, iss: deadUrl }), { code: 'ERR_JOIN_ISSUER_UNREACHABLE', message: new RegExp(`cannot get the signing keys of ${deadUrl.replace(/\./g, '\\.')}: GET .*openid-configuration: ECONNREFUSED`) })
  })
})
