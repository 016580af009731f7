import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { statSync } from 'node:fs'
import https from 'node:https'
import tls from 'node:tls'
import path from 'node:path'
import { X509Certificate } from 'node:crypto'
import { AuthClient } from '../../src/agent/auth-client.ts'
import { MemidError } from '../../src/core/errors.ts'
import { startAuth, type AuthFixture } from '../fixtures/memid.ts'
import { asCaller, client, heartbeat, join, newKey, renew, type TestIdentity } from '../helpers/identity.ts'
import { startLossyProxy } from '../fixtures/lossy-proxy.ts'
import { withPrivateKeyPem } from '../../src/pki/pem.ts'

async function rejectsCode(p: Promise<unknown>, code: string): Promise<MemidError> {
  try {
    await p
  } catch (err) {
    assert.ok(err instanceof MemidError, `expected a MemidError, got ${String(err)}`)
    assert.equal(err.code, code, err.message)
    return err
  }
  assert.fail(`expected ${code}`)
}

/** The identity as a caller capped at TLS 1.2, which the lossy proxy needs. */
function tls12Caller(client: AuthClient, id: TestIdentity) {
  const ctx = withPrivateKeyPem(id.key, (key) => tls.createSecureContext({ key, cert: id.res.certificate, ca: client.cas.tls, maxVersion: 'TLSv1.2' }))
  return { agent: client.identityAgent(ctx) }
}

/** The bot id a bot identity certificate carries (its URI SAN). */
function botIdOf(pem: string): string | undefined {
  return /[?&]id=([0-9a-f-]+)/.exec(new X509Certificate(pem).subjectAltName ?? '')?.[1]
}

/** POSTs raw bytes to the API, for malformed-input tests. */
function rawPost(auth: AuthFixture, p: string, body: string | Buffer, headers: Record<string, string> = {}): Promise<{ status: number; body: any }> {
  const [host, port] = auth.addr.split(':') as [string, string]
  return new Promise((resolve, reject) => {
    const req = https.request({ host, port: Number(port), path: p, method: 'POST', rejectUnauthorized: false, headers: { 'content-type': 'application/json', ...headers } }, (res) => {
      let text = ''
      res.on('data', (d: Buffer) => (text += d.toString()))
      res.on('end', () => {
        let parsed: unknown = text
        try { parsed = JSON.parse(text) } catch { /* keep text */ }
        resolve({ status: res.statusCode ?? 0, body: parsed })
      })
    })
    req.on('error', reject)
    req.end(body)
  })
}

describe('auth service', () => {
  let auth: AuthFixture
  let c: AuthClient

  before(async () => {
    auth = await startAuth()
    c = await client(auth)
  })
  after(async () => {
    c?.close()
    assert.equal(await auth?.stop(), 0, 'SIGTERM: finish in-flight requests, close the store, exit 0')
  })

  test('data dir is 0700, store and admin socket are 0600; CAs export as documented', async () => {
    assert.equal(statSync(auth.dataDir).mode & 0o777, 0o700)
    assert.equal(statSync(path.join(auth.dataDir, 'memid.db')).mode & 0o777, 0o600)
    assert.equal(statSync(path.join(auth.dataDir, 'admin.sock')).mode & 0o777, 0o600)
    const pin = await auth.cli(['auth', 'ca-pin'])
    assert.equal(pin.stdout.trim(), auth.caPin)
    assert.match(auth.caPin, /^sha256:[0-9a-f]{64}$/)
    for (const kind of ['ssh-user', 'ssh-host']) {
      const r = await auth.cli(['auth', 'export', '--kind', kind])
      assert.equal(r.code, 0, r.stderr)
      assert.match(r.stdout, /^ssh-ed25519 AAAA\S+ /)
    }
    for (const kind of ['tls', 'bot']) {
      const r = await auth.cli(['auth', 'export', '--kind', kind])
      const cert = new X509Certificate(r.stdout)
      assert.equal(cert.ca, true, `${kind} is a CA certificate`)
    }
    const bad = await auth.cli(['auth', 'export', '--kind', 'nope'])
    assert.equal(bad.code, 2)
    assert.match(bad.stderr, /--kind: must be one of/)
  })

  test('roles, bots and tokens lifecycle through the CLI', async () => {
    assert.equal((await auth.cli(['roles', 'add', 'deployers', '--logins', 'deploy,ops', '--kube-clusters', '*'])).code, 0)
    const roles = JSON.parse((await auth.cli(['roles', 'ls', '--format', 'json'])).stdout)
    assert.deepEqual(roles.find((r: any) => r.name === 'deployers').logins, ['deploy', 'ops'])
    const text = (await auth.cli(['roles', 'ls'])).stdout
    assert.match(text, /^Name\s+Logins/m)

    const dup = await auth.cli(['roles', 'add', 'deployers'])
    assert.equal(dup.code, 1)
    assert.match(dup.stderr, /role "deployers" already exists/)

    const unknownRole = await auth.cli(['bots', 'add', 'b1', '--roles', 'ghost'])
    assert.equal(unknownRole.code, 1)
    assert.match(unknownRole.stderr, /role "ghost" does not exist/)

    const badName = await auth.cli(['bots', 'add', '../etc', '--roles', 'deployers'])
    assert.equal(badName.code, 1)
    assert.match(badName.stderr, /name: must be/)
    const ctrl = await auth.cli(['roles', 'add', 'x\u0007y'])
    assert.equal(ctrl.code, 1)

    const added = await auth.cli(['bots', 'add', 'b1', '--roles', 'deployers', '--max-ttl', '2h'])
    assert.equal(added.code, 0, added.stderr)
    assert.match(added.stdout, /bot "b1" created/)
    assert.match(added.stdout, /^tok-[0-9a-f]{12}\.[A-Za-z0-9_-]{43}$/m)

    const tok = await auth.cli(['tokens', 'add', '--bot', 'b1', '--ttl', '10m'])
    assert.equal(tok.code, 0)
    assert.match(tok.stdout, /^tok-[0-9a-f]{12}\.[A-Za-z0-9_-]{43}\n$/, 'tokens add prints only the token')
    const name = tok.stdout.split('.')[0] as string
    const ls = await auth.cli(['tokens', 'ls', '--format', 'json'])
    const listed = JSON.parse(ls.stdout).items
    assert.ok(listed.some((t: any) => t.name === name))
    assert.ok(!ls.stdout.includes(tok.stdout.trim().split('.')[1] as string), 'secret never listed')
    assert.ok(!ls.stdout.includes('secretHash'))
    assert.equal((await auth.cli(['tokens', 'rm', name])).code, 0)
    assert.equal((await auth.cli(['tokens', 'rm', name])).code, 1)

    const inUse = await auth.cli(['roles', 'rm', 'deployers'])
    assert.equal(inUse.code, 1)
    assert.match(inUse.stderr, /used by bot b1/)
    assert.equal((await auth.cli(['bots', 'rm', 'b1'])).code, 0)
    assert.equal((await auth.cli(['roles', 'rm', 'deployers'])).code, 0)
    const bots = JSON.parse((await auth.cli(['bots', 'ls', '--format', 'json'])).stdout).items
    assert.ok(!bots.some((b: any) => b.name === 'b1'))
  })

  test('join, renew with new keys and generations, token reuse and expiry refused', async () => {
    const token = await auth.bot('joiner')
    const id1 = await join(c, token)
    assert.equal(id1.res.bot, 'joiner')
    assert.equal(id1.res.generation, 1)
    const cert1 = new X509Certificate(id1.res.certificate)
    assert.match(cert1.subject, /CN=joiner/)
    assert.ok(cert1.verify(new X509Certificate((await auth.cli(['auth', 'export', '--kind', 'bot'])).stdout).publicKey))

    await rejectsCode(join(c, token), 'ERR_TOKEN_USED')

    await heartbeat(c, id1)
    const id2 = await renew(c, id1)
    assert.equal(id2.res.generation, 2)
    assert.notEqual(id2.res.serial, id1.res.serial)
    const k1 = new X509Certificate(id1.res.certificate).publicKey.export({ type: 'spki', format: 'der' })
    const k2 = new X509Certificate(id2.res.certificate).publicKey.export({ type: 'spki', format: 'der' })
    assert.ok(!k1.equals(k2), 'new key pair on renewal')
    await heartbeat(c, id2)
    const id3 = await renew(c, id2)
    assert.equal(id3.res.generation, 3)

    const short = (await auth.cli(['tokens', 'add', '--bot', 'joiner', '--ttl', '1s'])).stdout.trim()
    await new Promise((r) => setTimeout(r, 1500))
    await rejectsCode(join(c, short), 'ERR_TOKEN_EXPIRED')
    await rejectsCode(join(c, 'tok-000000000000.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'), 'ERR_TOKEN_INVALID')
    const fresh = (await auth.cli(['tokens', 'add', '--bot', 'joiner'])).stdout.trim()
    const wrongSecret = `${fresh.split('.')[0]}.${'B'.repeat(43)}`
    await rejectsCode(join(c, wrongSecret), 'ERR_TOKEN_INVALID')
    await join(c, fresh) // a wrong guess did not burn the real token

    const audit = JSON.parse((await auth.cli(['audit', '--format', 'json', '--bot', 'joiner'])).stdout).items as any[]
    const failed = JSON.parse((await auth.cli(['audit', '--format', 'json', '--type', 'join.failed'])).stdout).items as any[]
    assert.ok(audit.some((e) => e.type === 'join' && e.instance === id1.res.instanceId))
    assert.ok(audit.some((e) => e.type === 'renew' && e.fields.generation === 3))
    assert.ok(audit.some((e) => e.type === 'cert.issued' && e.fields.kind === 'bot' && e.fields.serial === id3.res.serial))
    assert.ok(failed.some((e) => e.code === 'ERR_TOKEN_USED'))
    assert.ok(failed.some((e) => e.code === 'ERR_TOKEN_EXPIRED'))
    const allAudit = (await auth.cli(['audit', '--format', 'json'])).stdout
    assert.ok(!allAudit.includes(token.split('.')[1] as string), 'no token secret in audit')
    assert.ok(!allAudit.includes(wrongSecret.split('.')[1] as string))
  })

  test('a stale generation (copied identity) locks the instance and is audited', async () => {
    const token = await auth.bot('copied')
    const original = await join(c, token)
    const copy = original // an attacker holding the same key and certificate
    const next = await renew(c, original)
    await heartbeat(c, next) // the real agent confirms generation 2
    const err = await rejectsCode(renew(c, copy), 'ERR_STALE_GENERATION')
    assert.match(err.message, /locked/)
    // The lock holds for every copy, including the legitimate newer generation.
    await rejectsCode(renew(c, next), 'ERR_LOCKED')
    const events = JSON.parse((await auth.cli(['audit', '--format', 'json', '--type', 'generation.mismatch'])).stdout).items as any[]
    assert.ok(events.some((e) => e.instance === original.res.instanceId && e.fields.presented === 1))
    const locks = JSON.parse((await auth.cli(['locks', 'ls', '--format', 'json'])).stdout) as any[]
    assert.ok(locks.some((l) => l.instance === original.res.instanceId))
  })

  test('a renewal retried with the same new key gets the same pending generation, any number of times', async () => {
    const token = await auth.bot('lossy')
    const id1 = await join(c, token)
    await heartbeat(c, id1)
    const k = newKey()
    const serials = new Set<string>()
    for (let i = 0; i < 6; i++) {
      // Every answer but the last "lost": the agent retries with the same new key.
      const res = await c.renew(id1.caller, { publicKey: k.publicKey, ttl: '1h' })
      assert.equal(res.generation, 2, `retry ${i} gets the pending generation back`)
      serials.add(res.serial)
    }
    const id2 = asCaller(c, k.key, await c.renew(id1.caller, { publicKey: k.publicKey, ttl: '1h' }))
    await heartbeat(c, id2) // confirms generation 2
    const id3 = await renew(c, id2)
    assert.equal(id3.res.generation, 3)
    const inst = JSON.parse((await auth.cli(['get', `bot_instance/lossy/${id1.res.instanceId}`, '--format', 'json'])).stdout)
    assert.equal(inst.generation, 2)
    assert.equal(inst.pendingGeneration, 3)
    const locks = JSON.parse((await auth.cli(['locks', 'ls', '--format', 'json'])).stdout) as any[]
    assert.ok(!locks.some((l) => l.instance === id1.res.instanceId), 'lost responses did not lock')
    // Once generation 2 is in use, generation 1 is old: whatever key it brings, that is a copy.
    await rejectsCode(c.renew(id1.caller, { publicKey: k.publicKey, ttl: '1h' }), 'ERR_STALE_GENERATION')
  })

  test('five renewal answers lost in a row (a proxy drops them): the sixth retry succeeds and nothing locks', async () => {
    const token = await auth.bot('partitioned')
    const id1 = await join(c, token)
    const proxy = await startLossyProxy(auth.addr)
    const lossy = new AuthClient({ server: proxy.addr, caPins: [auth.caPin], timeoutMs: 1000 })
    try {
      await lossy.bootstrap()
      const caller = tls12Caller(lossy, id1)
      const k = newKey()
      proxy.dropAnswers = 5
      for (let i = 0; i < 5; i++) await rejectsCode(lossy.renew(caller, { publicKey: k.publicKey, ttl: '1h' }), 'ERR_AUTH_TIMEOUT')
      assert.equal(proxy.dropped, 5, 'five answers were lost after the server had the request')
      const res = await c.renew(id1.caller, { publicKey: k.publicKey, ttl: '1h' })
      assert.equal(res.generation, 2)
      const id2 = asCaller(c, k.key, res)
      await heartbeat(c, id2)
      assert.equal((await renew(c, id2)).res.generation, 3)
      const renewals = JSON.parse((await auth.cli(['audit', '--format', 'json', '--type', 'renew', '--bot', 'partitioned'])).stdout).items as any[]
      assert.equal(renewals.filter((e) => e.fields.generation === 2).length, 6, 'the server answered every lost request')
      const locks = JSON.parse((await auth.cli(['locks', 'ls', '--format', 'json'])).stdout) as any[]
      assert.ok(!locks.some((l) => l.instance === id1.res.instanceId), 'no lock')
    } finally {
      lossy.close()
      await proxy.close()
    }
  })

  test('a copy renewing with another key while a renewal is outstanding is locked', async () => {
    const token = await auth.bot('stolen')
    const original = await join(c, token)
    const k = newKey()
    await c.renew(original.caller, { publicKey: k.publicKey, ttl: '1h' }) // the agent's renewal: generation 2 pending
    // The thief holds generation 1 too, but not the agent's new key pair.
    const err = await rejectsCode(renew(c, original), 'ERR_STALE_GENERATION')
    assert.match(err.message, /locked/)
    await rejectsCode(c.renew(original.caller, { publicKey: k.publicKey, ttl: '1h' }), 'ERR_LOCKED')
    const events = JSON.parse((await auth.cli(['audit', '--format', 'json', '--type', 'generation.mismatch'])).stdout).items as any[]
    assert.ok(events.some((e) => e.instance === original.res.instanceId))
    const locks = JSON.parse((await auth.cli(['locks', 'ls', '--format', 'json'])).stdout) as any[]
    assert.ok(locks.some((l) => l.instance === original.res.instanceId))
  })

  test('a deleted bot stays deleted: re-creating its name does not revive its identities', async () => {
    assert.equal((await auth.cli(['roles', 'add', 'revived-admin', '--logins', 'root'])).code, 0)
    const token = await auth.bot('revived')
    const old = await join(c, token)
    await heartbeat(c, old)
    assert.equal((await auth.cli(['bots', 'rm', 'revived'])).code, 0)
    const added = await auth.cli(['bots', 'add', 'revived', '--roles', 'revived-admin', '--format', 'json'])
    assert.equal(added.code, 0, added.stderr)
    // The old identity is refused everything, and never gets the new bot's roles.
    await rejectsCode(renew(c, old), 'ERR_BOT_NOT_FOUND')
    await rejectsCode(heartbeat(c, old), 'ERR_BOT_NOT_FOUND')
    await rejectsCode(c.issueSsh(old.caller, { publicKey: newKey().publicKey, principals: ['root'] }), 'ERR_BOT_NOT_FOUND')
    const inst = JSON.parse((await auth.cli(['get', `bot_instance/revived/${old.res.instanceId}`, '--format', 'json'])).stdout)
    assert.ok(inst.endedAt, 'the instance was ended with its bot')
    // The new bot is a new bot: its own id, and its own identities work.
    const fresh = await join(c, JSON.parse(added.stdout).token.token)
    assert.deepEqual((await c.issueSsh(fresh.caller, { publicKey: newKey().publicKey })).principals, ['root'])
    assert.notEqual(botIdOf(fresh.res.certificate), botIdOf(old.res.certificate))
    await rejectsCode(renew(c, old), 'ERR_BOT_NOT_FOUND')
  })

  test('locks and bot deletion refuse the very next request', async () => {
    const token = await auth.bot('lockme')
    const id = await join(c, token)
    const lock = await auth.cli(['locks', 'add', '--instance', id.res.instanceId, '--reason', 'runner compromised', '--format', 'json'])
    assert.equal(lock.code, 0, lock.stderr)
    const err = await rejectsCode(renew(c, id), 'ERR_LOCKED')
    assert.match(err.message, /runner compromised/)
    await rejectsCode(heartbeat(c, id), 'ERR_LOCKED')
    await rejectsCode(c.issueSsh(id.caller, { publicKey: newKey().publicKey }), 'ERR_LOCKED')
    const lockId = JSON.parse(lock.stdout).id as string
    assert.equal((await auth.cli(['locks', 'rm', lockId])).code, 0)
    const id2 = await renew(c, id)
    assert.equal(id2.res.generation, 2)

    const botLock = await auth.cli(['locks', 'add', '--bot', 'lockme'])
    assert.equal(botLock.code, 0)
    await rejectsCode(renew(c, id2), 'ERR_LOCKED')
    const both = await auth.cli(['locks', 'add'])
    assert.equal(both.code, 2)

    const token2 = await auth.bot('deleteme')
    const d = await join(c, token2)
    assert.equal((await auth.cli(['bots', 'rm', 'deleteme'])).code, 0)
    await rejectsCode(renew(c, d), 'ERR_BOT_NOT_FOUND')
    const audit = JSON.parse((await auth.cli(['audit', '--format', 'json', '--type', 'renew.failed'])).stdout).items as any[]
    assert.ok(audit.some((e) => e.code === 'ERR_LOCKED' && e.bot === 'lockme'))
    assert.ok(audit.some((e) => e.code === 'ERR_BOT_NOT_FOUND' && e.bot === 'deleteme'))
    const admin = JSON.parse((await auth.cli(['audit', '--format', 'json', '--type', 'bot.deleted'])).stdout).items as any[]
    assert.ok(admin.some((e) => e.bot === 'deleteme'))
  })

  test('service certificates only carry what the roles allow', async () => {
    const token = await auth.bot('scoped', ['--logins', 'deploy,ci'])
    const id = await join(c, token)
    const ssh = await c.issueSsh(id.caller, { publicKey: newKey().publicKey })
    assert.deepEqual(ssh.principals, ['ci', 'deploy'])
    await rejectsCode(c.issueSsh(id.caller, { publicKey: newKey().publicKey, principals: ['root'] }), 'ERR_ACCESS_DENIED')
    await rejectsCode(c.issueKube(id.caller, { publicKey: newKey().publicKey, cluster: 'nowhere' }), 'ERR_NOT_FOUND')
    const denied = JSON.parse((await auth.cli(['audit', '--format', 'json', '--type', 'cert.denied'])).stdout).items as any[]
    assert.ok(denied.some((e) => e.bot === 'scoped' && e.code === 'ERR_ACCESS_DENIED' && /root/.test(e.message)))
  })

  test('get bot_instance shows the fields of the contract', async () => {
    const token = await auth.bot('shown')
    const id = await join(c, token)
    await heartbeat(c, id)
    const list = await auth.cli(['get', 'bot_instance/shown'])
    assert.match(list.stdout, new RegExp(id.res.instanceId))
    const r = await auth.cli(['get', `bot_instance/shown/${id.res.instanceId}`, '--format', 'json'])
    const inst = JSON.parse(r.stdout)
    assert.equal(inst.bot, 'shown')
    assert.equal(inst.joinMethod, 'token')
    assert.match(inst.tokenName, /^tok-/)
    assert.ok(inst.createdAt)
    assert.deepEqual(Object.keys(inst.initialAuthentication).sort(), ['generation', 'joinMethod', 'remoteAddr', 'time'])
    assert.equal(inst.latestAuthentications.length, 1)
    const hb = inst.heartbeats[0]
    for (const k of ['time', 'hostname', 'version', 'os', 'arch', 'uptimeSeconds', 'services']) assert.ok(k in hb, `heartbeat.${k}`)
    const yaml = await auth.cli(['get', `bot_instance/shown/${id.res.instanceId}`, '--format', 'yaml'])
    assert.match(yaml.stdout, /^bot: shown$/m)
    const missing = await auth.cli(['get', 'bot_instance/shown/00000000-0000-0000-0000-000000000000'])
    assert.equal(missing.code, 1)
    const wrong = await auth.cli(['get', 'pods'])
    assert.equal(wrong.code, 2)
  })

  test('malformed input gets a specific error and changes nothing', async () => {
    const cases: [string, string | Buffer, number, string][] = [
      ['/v1/join', '{not json', 400, 'ERR_INVALID_JSON'],
      ['/v1/join', JSON.stringify({ joinMethod: 'token', token: 1, publicKey: 'x' }), 400, 'ERR_BAD_REQUEST'],
      ['/v1/join', JSON.stringify({ joinMethod: 'token', token: 'a', publicKey: 'x', extra: true }), 400, 'ERR_BAD_REQUEST'],
      ['/v1/join', JSON.stringify({ joinMethod: 'oidc', token: 'a', publicKey: 'x' }), 400, 'ERR_BAD_REQUEST'],
      ['/v1/join', Buffer.alloc(70 * 1024, 0x61), 413, 'ERR_BODY_TOO_LARGE'],
      ['/v1/renew', JSON.stringify({ publicKey: newKey().publicKey }), 401, 'ERR_UNAUTHENTICATED'],
      ['/v1/certs/ssh', JSON.stringify({ publicKey: newKey().publicKey }), 401, 'ERR_UNAUTHENTICATED'],
      ['/v1/nothing', '{}', 404, 'ERR_NOT_FOUND'],
    ]
    for (const [p, body, status, code] of cases) {
      const r = await rawPost(auth, p, body)
      assert.equal(r.status, status, `${p} ${String(body).slice(0, 40)}`)
      assert.equal(r.body.error.code, code)
      assert.equal(typeof r.body.error.message, 'string')
    }
    const unknownField = await rawPost(auth, '/v1/join', JSON.stringify({ joinMethod: 'token', token: 'a', publicKey: 'x', extra: true }))
    assert.match(unknownField.body.error.message, /unknown key "extra"/)
    const badKey = await rawPost(auth, '/v1/join', JSON.stringify({ joinMethod: 'token', token: 'tok-000000000000.' + 'A'.repeat(43), publicKey: 'not a key' }))
    assert.equal(badKey.body.error.code, 'ERR_BAD_REQUEST')
    assert.match(badKey.body.error.message, /publicKey/)
    // The server is still fine for everyone else.
    assert.equal((await c.bootstrap()).clusterName, 'memid')
  })

  test('a wrong CA pin is refused clearly', async () => {
    const wrong = new AuthClient({ server: auth.addr, caPins: [`sha256:${'0'.repeat(64)}`] })
    const err = await rejectsCode(wrong.bootstrap(), 'ERR_CA_PIN_MISMATCH')
    assert.match(err.message, /matches no --ca-pin/)
    wrong.close()
  })

  test('join attempts are rate limited per address', async () => {
    let limited = 0
    await Promise.all(Array.from({ length: 40 }, async () => {
      const r = await rawPost(auth, '/v1/join', JSON.stringify({ joinMethod: 'token', token: 'tok-000000000000.' + 'A'.repeat(43), publicKey: 'x' }))
      if (r.status === 429) limited++
    }))
    assert.ok(limited > 0, 'some attempts were refused with 429')
    await new Promise((r) => setTimeout(r, 2100))
  })

  test('a restart keeps CAs, bots and instances; agents renew across it', async () => {
    const token = await auth.bot('survivor')
    const id = await join(c, token)
    const pinBefore = auth.caPin
    await auth.restart()
    const c2 = await client(auth)
    try {
      assert.equal(auth.caPin, pinBefore)
      const next = await renew(c2, id)
      assert.equal(next.res.generation, 2)
      assert.equal(next.res.instanceId, id.res.instanceId)
      const bots = JSON.parse((await auth.cli(['bots', 'ls', '--format', 'json'])).stdout).items as any[]
      assert.ok(bots.some((b) => b.name === 'survivor'))
    } finally {
      c2.close()
    }
  })
})
