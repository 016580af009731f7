import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPairSync, sign as cryptoSign } from 'node:crypto'
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { Registry } from 'prom-client'
import { CredentialSource, type SshCredential } from '../../../src/credentials/credentials.ts'
import type { Clock } from '../../../src/core/clock.ts'
import { createLogger } from '../../../src/core/log.ts'
import { ConfigError } from '../../../src/core/errors.ts'
import { parseSshPublicKeyBlob, sshPublicKeyBlob, sshSign, verifySshSignature } from '../../../src/pki/openssh.ts'
import { SshReader } from '../../../src/pki/ssh-wire.ts'
import { createSshAgentService } from '../../../src/services/ssh-agent/index.ts'
import { MAX_FRAME, MUTATING_REQUESTS } from '../../../src/services/ssh-agent/protocol.ts'
import type { Service } from '../../../src/services/service.ts'
import { issueTestSshCredential, type TestKeyType } from '../../fixtures/ssh-credentials.ts'
import { agentFrame, MSG, parseIdentities, RawAgentClient, sshStr, u32 } from '../../fixtures/ssh-agent-client.ts'

const { FAILURE, SUCCESS, IDENTITIES, IDENTITIES_ANSWER, SIGN, SIGN_RESPONSE, EXTENSION, EXTENSION_RESPONSE } = MSG

const ca = generateKeyPairSync('ed25519')

interface Harness {
  sock: string
  svc: Service
  source: CredentialSource<SshCredential>
  metrics: Registry
  logs: string[]
  clock: { now(): number; offset: number }
  stop(): Promise<void>
}

async function harness(opts: { plainKey?: boolean; keyType?: TestKeyType } = {}): Promise<Harness> {
  const dir = mkdtempSync(path.join(tmpdir(), 'memid-agent-unit-'))
  const sock = path.join(dir, 'run', 'agent.sock')
  const clock = { offset: 0, now() { return Date.now() + this.offset } }
  const source = new CredentialSource<SshCredential>('ssh', clock as Clock)
  source.set(issueTestSshCredential({ caKey: ca.privateKey, principals: ['deploy', 'ops'], ...(opts.keyType ? { keyType: opts.keyType } : {}) }))
  const logs: string[] = []
  const metrics = new Registry()
  const svc = createSshAgentService({ path: sock, ...(opts.plainKey !== undefined ? { plainKey: opts.plainKey } : {}) }, {
    credentials: source, clock, metrics,
    logger: createLogger({ level: 'debug', sink: { write: (l) => void logs.push(l) } }),
  })
  await svc.start()
  return {
    sock, svc, source, metrics, logs, clock,
    async stop() {
      await svc.stop(500)
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

function signatureOf(payload: Buffer): Buffer {
  return new SshReader(payload, 'sign response').string()
}

describe('ssh-agent service (protocol level)', () => {
  let h: Harness
  before(async () => {
    h = await harness()
  })
  after(() => h.stop())

  it('binds a 0600 socket in a 0700 directory and reports healthy', () => {
    assert.equal(statSync(h.sock).mode & 0o777, 0o600)
    assert.equal(statSync(path.dirname(h.sock)).mode & 0o777, 0o700)
    assert.equal(h.svc.name, 'ssh-agent')
    assert.equal(h.svc.address, h.sock)
    assert.deepEqual(h.svc.health(), { status: 'ok' })
    const d = h.svc.describe?.() ?? {}
    assert.deepEqual(d.principals, ['deploy', 'ops'])
    assert.equal(d.serial, h.source.current().serial)
    assert.ok(!JSON.stringify(d).includes('AAAA'), 'describe() carries no certificate data')
  })

  it('lists the certificate first, then the plain key, with the key id as comment', async () => {
    const c = await RawAgentClient.connect(h.sock)
    const r = await c.request(IDENTITIES)
    assert.equal(r.type, IDENTITIES_ANSWER)
    const ids = parseIdentities(r.payload)
    const cred = h.source.current()
    assert.equal(ids.length, 2)
    assert.ok(ids[0]?.blob.equals(cred.certificateBlob))
    assert.ok(ids[1]?.blob.equals(cred.publicKeyBlob))
    assert.equal(ids[0]?.comment, cred.keyId)
    c.close()
  })

  it('signs for the certificate and for the plain key; the signature verifies', async () => {
    const c = await RawAgentClient.connect(h.sock)
    const cred = h.source.current()
    const data = Buffer.from('session-id and userauth request')
    for (const blob of [cred.certificateBlob, cred.publicKeyBlob]) {
      const r = await c.request(SIGN, sshStr(blob), sshStr(data), u32(0))
      assert.equal(r.type, SIGN_RESPONSE)
      const sig = signatureOf(r.payload)
      assert.equal(new SshReader(sig).text(), 'ssh-ed25519')
      assert.ok(verifySshSignature(parseSshPublicKeyBlob(cred.publicKeyBlob), sig, data))
      assert.ok(sig.equals(sshSign(cred.privateKey, data, 0)), 'Ed25519 fast path is byte-identical to the general encoder')
    }
    const other = sshPublicKeyBlob(generateKeyPairSync('ed25519').publicKey)
    assert.equal((await c.request(SIGN, sshStr(other), sshStr(data), u32(0))).type, FAILURE, 'an unknown key gets FAILURE')
    assert.equal((await c.request(IDENTITIES)).type, IDENTITIES_ANSWER, 'and the connection stays usable')
    c.close()
  })

  it('answers pipelined requests in order, also when frames arrive a byte at a time', async () => {
    const c = await RawAgentClient.connect(h.sock)
    const cred = h.source.current()
    const frames = Buffer.concat([
      agentFrame(IDENTITIES),
      agentFrame(SIGN, sshStr(cred.certificateBlob), sshStr('a'), u32(0)),
      agentFrame(19),
      agentFrame(SIGN, sshStr(cred.certificateBlob), sshStr('b'), u32(0)),
    ])
    for (const byte of frames) {
      c.writeRaw(Buffer.of(byte))
      await new Promise((r) => setImmediate(r))
    }
    c.writeRaw(frames)
    for (let round = 0; round < 2; round++) {
      assert.equal((await c.next()).type, IDENTITIES_ANSWER)
      const a = await c.next()
      assert.ok(verifySshSignature(parseSshPublicKeyBlob(cred.publicKeyBlob), signatureOf(a.payload), Buffer.from('a')))
      assert.equal((await c.next()).type, FAILURE)
      const b = await c.next()
      assert.ok(verifySshSignature(parseSshPublicKeyBlob(cred.publicKeyBlob), signatureOf(b.payload), Buffer.from('b')))
    }
    c.close()
  })

  it('refuses every request that would add, remove or lock keys, including protocol 1', async () => {
    const c = await RawAgentClient.connect(h.sock)
    const cred = h.source.current()
    const bodies: Record<number, Buffer[]> = {
      17: [sshStr('ssh-ed25519'), sshStr(Buffer.alloc(32)), sshStr(Buffer.alloc(64)), sshStr('x')],
      18: [sshStr(cred.certificateBlob)],
      22: [sshStr('passphrase')],
      23: [sshStr('passphrase')],
    }
    for (const type of MUTATING_REQUESTS.keys()) {
      const r = await c.request(type, ...(bodies[type] ?? []))
      assert.equal(r.type, FAILURE, `type ${type}`)
    }
    const ids = parseIdentities((await c.request(IDENTITIES)).payload)
    assert.equal(ids.length, 2, 'nothing was removed')
    assert.equal((await c.request(SIGN, sshStr(cred.certificateBlob), sshStr('x'), u32(0))).type, SIGN_RESPONSE, 'lock did not lock')
    assert.match(await h.metrics.metrics(), /memid_ssh_agent_refused_requests_total\{request="lock"\} 1/)
    assert.equal((await c.request(200)).type, FAILURE, 'unknown message types get FAILURE')
    c.close()
  })

  it('counts and logs each refused change by its name (a fixed list, not read from the code)', async () => {
    const names: [number, string][] = [
      [1, 'request-rsa-identities'], [3, 'rsa-challenge'], [7, 'add-rsa-identity'], [8, 'remove-rsa-identity'], [9, 'remove-all-rsa-identities'],
      [17, 'add-identity'], [18, 'remove-identity'], [19, 'remove-all-identities'], [20, 'add-smartcard-key'], [21, 'remove-smartcard-key'],
      [22, 'lock'], [23, 'unlock'], [24, 'add-rsa-id-constrained'], [25, 'add-id-constrained'], [26, 'add-smartcard-key-constrained'],
    ]
    const before = await h.metrics.getSingleMetricAsString('memid_ssh_agent_refused_requests_total')
    const count = (text: string, name: string) => Number(new RegExp(`request="${name}"\\} (\\d+)`).exec(text)?.[1] ?? 0)
    const c = await RawAgentClient.connect(h.sock)
    for (const [type] of names) assert.equal((await c.request(type)).type, FAILURE, `type ${type}`)
    c.close()
    const after = await h.metrics.getSingleMetricAsString('memid_ssh_agent_refused_requests_total')
    for (const [type, name] of names) {
      assert.equal(count(after, name) - count(before, name), 1, `${type} counted as ${name}`)
      assert.ok(h.logs.some((l) => l.includes('"request":"' + name + '"') && l.includes('the memid ssh agent is read-only')), `${name} logged`)
    }
  })

  it('sign requests: short payloads close the connection; unknown keys and signatures are counted', async () => {
    const cred = h.source.current()
    const count = async (result: string) => Number(new RegExp(`result="${result}"\\} (\\d+)`).exec(await h.metrics.metrics())?.[1] ?? 0)
    for (const [name, payload] of [['empty', []], ['only a key', [sshStr(cred.certificateBlob)]]] as [string, Buffer[]][]) {
      const c = await RawAgentClient.connect(h.sock)
      c.writeRaw(agentFrame(SIGN, ...payload))
      await assert.rejects(c.next(2000), /closed the connection/, name)
    }
    assert.match(await h.metrics.metrics(), /memid_ssh_agent_protocol_errors_total\{reason="malformed"\} [1-9]/)
    const ok0 = await count('ok')
    const unknown0 = await count('unknown_key')
    const c = await RawAgentClient.connect(h.sock)
    assert.equal((await c.request(SIGN, sshStr(sshPublicKeyBlob(generateKeyPairSync('ed25519').publicKey)), sshStr('x'), u32(0))).type, FAILURE)
    assert.equal((await c.request(SIGN, sshStr(cred.certificateBlob), sshStr('x'), u32(0))).type, SIGN_RESPONSE)
    assert.equal(await count('unknown_key'), unknown0 + 1)
    assert.equal(await count('ok'), ok0 + 1)
    // Pipelined after an extension, in one write: both answered.
    c.writeRaw(Buffer.concat([agentFrame(EXTENSION, sshStr('query')), agentFrame(IDENTITIES)]))
    assert.equal((await c.next()).type, EXTENSION_RESPONSE)
    assert.equal((await c.next()).type, IDENTITIES_ANSWER)
    // An unknown message type is not logged as a refused change.
    const refusedLines = h.logs.filter((l) => l.includes('the memid ssh agent is read-only')).length
    assert.equal((await c.request(200)).type, FAILURE)
    assert.equal(h.logs.filter((l) => l.includes('the memid ssh agent is read-only')).length, refusedLines)
    c.close()
  })

  it('answers the query extension and refuses unknown extensions', async () => {
    const c = await RawAgentClient.connect(h.sock)
    const q = await c.request(EXTENSION, sshStr('query'))
    assert.equal(q.type, EXTENSION_RESPONSE)
    const r = new SshReader(q.payload)
    assert.equal(r.text(), 'query')
    const names: string[] = []
    while (r.remaining > 0) names.push(r.text())
    assert.deepEqual(names, ['query', 'session-bind@openssh.com'])
    assert.equal((await c.request(EXTENSION, sshStr('no-such@example.com'), sshStr('x'))).type, FAILURE)
    c.close()
  })

  it('session-bind: a valid host signature binds; a bad one is refused; forwarded connections may not sign', async () => {
    const host = generateKeyPairSync('ed25519')
    const hostBlob = sshPublicKeyBlob(host.publicKey)
    const sid = Buffer.from('0123456789abcdef0123456789abcdef')
    const good = sshSign(host.privateKey, sid, 0)
    const bad = sshSign(host.privateKey, Buffer.from('another session'), 0)
    const bind = (sig: Buffer, fwd: boolean) => [sshStr('session-bind@openssh.com'), sshStr(hostBlob), sshStr(sid), sshStr(sig), Buffer.of(fwd ? 1 : 0)]
    const cred = h.source.current()

    const auth = await RawAgentClient.connect(h.sock)
    assert.equal((await auth.request(EXTENSION, ...bind(bad, false))).type, FAILURE)
    assert.equal((await auth.request(EXTENSION, ...bind(good, false))).type, SUCCESS)
    assert.equal((await auth.request(EXTENSION, ...bind(good, false))).type, FAILURE, 'an authentication connection binds once')
    assert.equal((await auth.request(SIGN, sshStr(cred.certificateBlob), sshStr('x'), u32(0))).type, SIGN_RESPONSE)
    auth.close()

    const fwd = await RawAgentClient.connect(h.sock)
    assert.equal((await fwd.request(EXTENSION, ...bind(good, true))).type, SUCCESS)
    assert.equal((await fwd.request(SIGN, sshStr(cred.certificateBlob), sshStr('x'), u32(0))).type, FAILURE)
    assert.match(await h.metrics.metrics(), /memid_ssh_agent_sign_requests_total\{result="forwarded"\} 1/)
    assert.ok(h.logs.some((l) => l.includes('refused to sign on a forwarded agent connection')), 'the refusal is logged with its reason')
    fwd.close()
  })

  it('session-bind: a connection binds at most 16 sessions (as OpenSSH), and an authentication bind is the last', async () => {
    const host = generateKeyPairSync('ed25519')
    const hostBlob = sshPublicKeyBlob(host.publicKey)
    const bind = (fwd: boolean, i: number) => {
      const sid = Buffer.from(`session ${i}`.padEnd(32, '.'))
      return [sshStr('session-bind@openssh.com'), sshStr(hostBlob), sshStr(sid), sshStr(sshSign(host.privateKey, sid, 0)), Buffer.of(fwd ? 1 : 0)]
    }
    const hops = await RawAgentClient.connect(h.sock)
    for (let i = 0; i < 16; i++) assert.equal((await hops.request(EXTENSION, ...bind(true, i))).type, SUCCESS, `forwarding hop ${i + 1}`)
    assert.equal((await hops.request(EXTENSION, ...bind(true, 16))).type, FAILURE, 'the 17th bind')
    hops.close()
    const auth = await RawAgentClient.connect(h.sock)
    assert.equal((await auth.request(EXTENSION, ...bind(false, 0))).type, SUCCESS)
    assert.equal((await auth.request(EXTENSION, ...bind(true, 1))).type, FAILURE, 'no forwarding bind after the authentication bind')
    auth.close()
  })

  it('closes a connection on an oversized, empty or truncated frame; other connections carry on', async () => {
    const cred = h.source.current()
    const bystander = await RawAgentClient.connect(h.sock)
    const cases: [string, Buffer][] = [
      ['oversized', u32(MAX_FRAME + 1)],
      ['huge', Buffer.concat([u32(0xffffffff), Buffer.alloc(10)])],
      ['empty', u32(0)],
      ['truncated sign request', agentFrame(SIGN, sshStr(cred.certificateBlob), u32(1000), Buffer.from('short'))],
      ['key length past the end', agentFrame(SIGN, u32(0x7fffffff))],
      ['sign request without flags', agentFrame(SIGN, sshStr(cred.certificateBlob), sshStr('x'))],
      ['truncated extension', agentFrame(EXTENSION, u32(50), Buffer.from('query'))],
      ['truncated session-bind', agentFrame(EXTENSION, sshStr('session-bind@openssh.com'), sshStr('x'))],
    ]
    for (const [name, bytes] of cases) {
      const c = await RawAgentClient.connect(h.sock)
      c.writeRaw(bytes)
      await assert.rejects(c.next(2000), /closed the connection/, name)
      assert.equal((await bystander.request(IDENTITIES)).type, IDENTITIES_ANSWER, `bystander after ${name}`)
    }
    const atCap = await RawAgentClient.connect(h.sock)
    const data = Buffer.alloc(MAX_FRAME - 1 - (4 + cred.certificateBlob.length) - 4 - 4, 7)
    const r = await atCap.request(SIGN, sshStr(cred.certificateBlob), sshStr(data), u32(0))
    assert.equal(r.type, SIGN_RESPONSE, 'a frame of exactly 256 KiB is served')
    atCap.close()
    bystander.close()
    assert.equal(h.svc.health().status, 'ok')
  })

  it('serves many concurrent clients', async () => {
    const cred = h.source.current()
    const pub = parseSshPublicKeyBlob(cred.publicKeyBlob)
    const clients = await Promise.all(Array.from({ length: 64 }, () => RawAgentClient.connect(h.sock)))
    await Promise.all(clients.map(async (c, i) => {
      for (let j = 0; j < 20; j++) {
        const data = Buffer.from(`client ${i} request ${j}`)
        const r = await c.request(SIGN, sshStr(cred.certificateBlob), sshStr(data), u32(0))
        assert.ok(verifySshSignature(pub, signatureOf(r.payload), data))
      }
      c.close()
    }))
  })

  it('renewal: new requests use the new pair at once; the previous certificate signs briefly', async () => {
    const old = h.source.current()
    const c = await RawAgentClient.connect(h.sock)
    assert.ok(parseIdentities((await c.request(IDENTITIES)).payload)[0]?.blob.equals(old.certificateBlob))
    const next = issueTestSshCredential({ caKey: ca.privateKey, principals: ['deploy'] })
    h.source.set(next)
    const ids = parseIdentities((await c.request(IDENTITIES)).payload)
    assert.ok(ids[0]?.blob.equals(next.certificateBlob))
    const s = await c.request(SIGN, sshStr(next.certificateBlob), sshStr('n'), u32(0))
    assert.ok(verifySshSignature(parseSshPublicKeyBlob(next.publicKeyBlob), signatureOf(s.payload), Buffer.from('n')))
    // ssh may have listed the old certificate just before the renewal.
    const o = await c.request(SIGN, sshStr(old.certificateBlob), sshStr('o'), u32(0))
    assert.equal(o.type, SIGN_RESPONSE)
    assert.ok(verifySshSignature(parseSshPublicKeyBlob(old.publicKeyBlob), signatureOf(o.payload), Buffer.from('o')))
    h.clock.offset = 61_000
    assert.equal((await c.request(SIGN, sshStr(old.certificateBlob), sshStr('o'), u32(0))).type, FAILURE, 'not after the grace period')
    h.clock.offset = 0
    assert.ok(h.logs.some((l) => l.includes('ssh agent serving a new certificate') && l.includes(next.serial)))
    c.close()
  })

  it('fails closed when the identity expired: empty list, FAILURE, health failed; recovers on renewal', async () => {
    const cred = h.source.current()
    const c = await RawAgentClient.connect(h.sock)
    h.clock.offset = cred.notAfter.getTime() - Date.now() + 1000
    const ids = await c.request(IDENTITIES)
    assert.equal(ids.type, IDENTITIES_ANSWER)
    assert.equal(parseIdentities(ids.payload).length, 0)
    assert.equal((await c.request(SIGN, sshStr(cred.certificateBlob), sshStr('x'), u32(0))).type, FAILURE)
    const health = h.svc.health()
    assert.equal(health.status, 'failed')
    assert.match(health.reason ?? '', /expired/)
    assert.match(await h.metrics.metrics(), /memid_ssh_agent_sign_requests_total\{result="expired"\} 1/)
    assert.equal(h.logs.filter((l) => l.includes('failing closed')).length, 1, 'logged once, not per request')
    h.clock.offset = 0
    assert.equal(parseIdentities((await c.request(IDENTITIES)).payload).length, 2)
    assert.ok(h.logs.some((l) => l.includes('serving again')))
    c.close()
  })

  it('never logs key or certificate material', () => {
    const all = h.logs.join('\n')
    assert.ok(!/AAAA[A-Za-z0-9+/]{20}/.test(all))
    assert.ok(!all.includes('PRIVATE KEY'))
  })
})

describe('ssh-agent service options and key types', () => {
  it('plainKey: false lists only the certificate and refuses the plain key', async () => {
    const h = await harness({ plainKey: false })
    try {
      const c = await RawAgentClient.connect(h.sock)
      const ids = parseIdentities((await c.request(IDENTITIES)).payload)
      assert.equal(ids.length, 1)
      assert.match(ids[0]?.blob.subarray(4, 40).toString() ?? '', /cert-v01@openssh.com/)
      const cred = h.source.current()
      assert.equal((await c.request(SIGN, sshStr(cred.publicKeyBlob), sshStr('x'), u32(0))).type, FAILURE)
      c.close()
    } finally {
      await h.stop()
    }
  })

  for (const keyType of ['ecdsa', 'rsa'] as const) {
    it(`serves ${keyType} keys${keyType === 'rsa' ? ', honouring rsa-sha2-256/512 flags' : ''}`, async () => {
      const h = await harness({ keyType })
      try {
        const c = await RawAgentClient.connect(h.sock)
        const cred = h.source.current()
        const pub = parseSshPublicKeyBlob(cred.publicKeyBlob)
        const flagsToAlg: [number, string][] = keyType === 'rsa'
          ? [[0, 'ssh-rsa'], [2, 'rsa-sha2-256'], [4, 'rsa-sha2-512']]
          : [[0, 'ecdsa-sha2-nistp256']]
        for (const [flags, alg] of flagsToAlg) {
          const r = await c.request(SIGN, sshStr(cred.certificateBlob), sshStr('data'), u32(flags))
          const sig = signatureOf(r.payload)
          assert.equal(new SshReader(sig).text(), alg)
          assert.ok(verifySshSignature(pub, sig, Buffer.from('data')))
        }
        c.close()
      } finally {
        await h.stop()
      }
    })
  }

  it('stop() drains, closes open connections at the deadline and removes the socket', async () => {
    const h = await harness()
    const c = await RawAgentClient.connect(h.sock)
    const t0 = Date.now()
    await h.svc.stop(300)
    assert.ok(Date.now() - t0 < 2000)
    await c.closed
    assert.equal(existsSync(h.sock), false)
    assert.equal(h.svc.health().status, 'stopped')
    await h.stop()
  })

  it('rejects a socket path that is not absolute', () => {
    const source = new CredentialSource<SshCredential>('ssh')
    const deps = { credentials: source, clock: { now: () => Date.now() }, metrics: new Registry(), logger: createLogger({ sink: { write() {} } }) }
    assert.throws(() => createSshAgentService({ path: 'agent.sock' }, deps), ConfigError)
    assert.throws(() => createSshAgentService({ path: '127.0.0.1:22' }, deps), /absolute unix socket path/)
  })

  it('the Ed25519 fast path matches crypto.sign exactly', () => {
    const cred = issueTestSshCredential({ caKey: ca.privateKey })
    const data = Buffer.from('abc')
    const blob = sshSign(cred.privateKey, data, 0)
    const r = new SshReader(blob)
    assert.equal(r.text(), 'ssh-ed25519')
    assert.ok(r.string().equals(cryptoSign(null, data, cred.privateKey)))
  })
})
