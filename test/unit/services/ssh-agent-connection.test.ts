// One agent connection driven directly, with the service's parts replaced where a test
// needs to see inside: the server side of the socket (paused? destroyed?), a keyring that
// fails, a count of signatures made. The service-level tests are in ssh-agent.test.ts.
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { Registry } from 'prom-client'
import { createLogger } from '../../../src/core/log.ts'
import { sshFingerprint, sshPublicKeyBlob, sshSign } from '../../../src/pki/openssh.ts'
import { AgentConnection, type AgentContext } from '../../../src/services/ssh-agent/connection.ts'
import { Keyring } from '../../../src/services/ssh-agent/keyring.ts'
import { sshAgentMetrics } from '../../../src/services/ssh-agent/metrics.ts'
import { FrameReader, MAX_FRAME } from '../../../src/services/ssh-agent/protocol.ts'
import { issueTestSshCredential } from '../../fixtures/ssh-credentials.ts'
import { agentFrame, MSG, RawAgentClient, sshStr, u32 } from '../../fixtures/ssh-agent-client.ts'

const { FAILURE, SUCCESS, IDENTITIES, IDENTITIES_ANSWER, SIGN, SIGN_RESPONSE, EXTENSION } = MSG

const ca = generateKeyPairSync('ed25519')
const cred = issueTestSshCredential({ caKey: ca.privateKey })
const ring = new Keyring(cred, { plainKey: true })

/** The agent side of one connection, with what a test may look at. */
interface Conn {
  server: net.Socket
  client: RawAgentClient
  signs: () => number
}

let dir: string
let listener: net.Server
const accepted: ((s: net.Socket) => void)[] = []
const logs: string[] = []
const metrics = new Registry()
const m = sshAgentMetrics(metrics)

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'memid-agent-conn-'))
  listener = net.createServer((s) => accepted.shift()?.(s))
  await new Promise<void>((resolve) => listener.listen(path.join(dir, 'agent.sock'), resolve))
})
after(async () => {
  for (const c of clients) c.destroy()
  await new Promise((resolve) => listener.close(resolve))
  rmSync(dir, { recursive: true, force: true })
})

/** What a test replaces in the keyring; the rest is the real test keyring's. */
interface RingParts {
  identities?: Buffer
  signFrame?: (data: Buffer, flags: number) => Buffer
}

const clients: net.Socket[] = []

/** A connection served by AgentConnection over the test keyring, with `parts` replaced. */
async function connect(parts: RingParts = {}, opts: { allowHalfOpen?: boolean } = {}): Promise<Conn & { raw: net.Socket }> {
  let signs = 0
  const server = new Promise<net.Socket>((resolve) => accepted.push(resolve))
  const raw = net.connect({ path: path.join(dir, 'agent.sock'), allowHalfOpen: opts.allowHalfOpen ?? false })
  clients.push(raw)
  await new Promise<void>((resolve, reject) => raw.once('connect', resolve).once('error', reject))
  const s = await server
  const keyring = {
    identities: parts.identities ?? ring.identities,
    has: (b: Buffer, start: number, end: number) => ring.has(b, start, end),
    signFrame: (data: Buffer, flags: number) => {
      signs++
      return (parts.signFrame ?? ((d: Buffer, f: number) => ring.signFrame(d, f)))(data, flags)
    },
  } as unknown as Keyring
  const ctx: AgentContext = {
    keyring: () => keyring,
    previous: () => undefined,
    metrics: m,
    logger: createLogger({ level: 'debug', sink: { write: (l) => void logs.push(l) } }),
  }
  new AgentConnection(s, ctx)
  return { server: s, client: RawAgentClient.wrap(raw), signs: () => signs, raw }
}

function signRequest(data = 'x'): Buffer {
  return agentFrame(SIGN, sshStr(cred.certificateBlob), sshStr(data), u32(0))
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function counter(name: string, label: string): Promise<number> {
  return Number(new RegExp(`${name}\\{${label}\\} (\\d+)`).exec(await metrics.metrics())?.[1] ?? 0)
}

describe('ssh-agent connection: after a protocol error nothing more is served', () => {
  it('a valid sign request in the same write as a malformed one is not signed', async () => {
    const c = await connect()
    c.client.writeRaw(Buffer.concat([agentFrame(SIGN, u32(0x7fffffff)), signRequest()]))
    await assert.rejects(c.client.next(2000), /closed the connection/)
    assert.equal(c.signs(), 0)
    c.raw.destroy()
  })

  it('a client that keeps writing after the agent closed its side gets nothing signed', async () => {
    const c = await connect({}, { allowHalfOpen: true })
    const ended = new Promise((r) => c.raw.once('end', r))
    c.client.writeRaw(u32(0))
    await ended
    c.client.writeRaw(signRequest())
    c.client.writeRaw(signRequest())
    await sleep(200)
    assert.equal(c.signs(), 0)
    c.raw.destroy()
  })

  it('a client that never closes its side is cut off 2 s after the agent closed', async () => {
    const c = await connect({}, { allowHalfOpen: true })
    const ended = new Promise((r) => c.raw.once('end', r))
    c.client.writeRaw(agentFrame(SIGN))
    await ended
    assert.equal(c.server.destroyed, false, 'half-closed first, so answers already written are delivered')
    await sleep(2500)
    assert.equal(c.server.destroyed, true)
    c.raw.destroy()
  })

  it('each close is counted by its reason and logged with why', async () => {
    const cases: [string, Buffer, string][] = [
      ['oversized', u32(MAX_FRAME + 1), 'oversized frame'],
      ['empty', u32(0), 'empty frame'],
      ['malformed', agentFrame(SIGN, u32(3)), 'malformed message of type 13'],
    ]
    for (const [reason, bytes, why] of cases) {
      const from = logs.length
      const before = await counter('memid_ssh_agent_protocol_errors_total', `reason="${reason}"`)
      const c = await connect()
      c.client.writeRaw(bytes)
      await assert.rejects(c.client.next(2000), /closed the connection/, reason)
      assert.equal(await counter('memid_ssh_agent_protocol_errors_total', `reason="${reason}"`), before + 1, reason)
      assert.ok(logs.slice(from).some((l) => l.includes('closing ssh-agent connection') && l.includes(`"reason":"${why}"`)), why)
    }
  })
})

describe('ssh-agent connection: failures inside the agent', () => {
  it('a signer that throws answers FAILURE, logs the error without the data, and the requests after it are answered', async () => {
    const c = await connect({
      signFrame: () => {
        throw new Error('signer exploded')
      },
    })
    // The request after it, in the same write, is still answered.
    c.client.writeRaw(Buffer.concat([agentFrame(SIGN, sshStr(cred.certificateBlob), sshStr('secret-to-be-signed'), u32(0)), agentFrame(IDENTITIES)]))
    assert.equal((await c.client.next(2000)).type, FAILURE)
    assert.equal((await c.client.next(2000)).type, IDENTITIES_ANSWER)
    assert.equal((await c.client.request(IDENTITIES)).type, IDENTITIES_ANSWER)
    const line = logs.find((l) => l.includes('ssh-agent request failed'))
    assert.ok(line, 'logged')
    assert.match(line, /"err":"signer exploded"/)
    assert.match(line, /"type":13/)
    assert.ok(!logs.join('\n').includes('secret-to-be-signed'))
    c.raw.destroy()
  })
})

describe('ssh-agent connection: a client that does not read its answers', () => {
  it('is paused once 1 MiB of answers wait, and served again when it reads', async () => {
    // 64 KiB answers: 40 requests in one write put ~2.5 MiB behind a client that is not reading.
    const big = agentFrame(IDENTITIES_ANSWER, Buffer.alloc(64 * 1024))
    const c = await connect({ identities: big })
    c.raw.pause()
    c.client.writeRaw(Buffer.concat(Array.from({ length: 40 }, () => agentFrame(IDENTITIES))))
    for (let i = 0; i < 100 && !c.server.isPaused(); i++) await sleep(20)
    assert.equal(c.server.isPaused(), true, 'the agent stops reading from it')
    c.client.writeRaw(agentFrame(IDENTITIES))
    c.raw.resume()
    for (let i = 0; i < 41; i++) assert.equal((await c.client.next(5000)).type, IDENTITIES_ANSWER, `answer ${i + 1}`)
    c.raw.destroy()
  })
})

describe('ssh-agent connection: a client that hangs up', () => {
  it('with answers still being written does not take the agent down', async () => {
    const big = agentFrame(IDENTITIES_ANSWER, Buffer.alloc(64 * 1024))
    const c = await connect({ identities: big })
    const closed = new Promise((r) => c.server.once('close', r))
    c.raw.end(Buffer.concat(Array.from({ length: 40 }, () => agentFrame(IDENTITIES))))
    c.raw.destroy()
    await closed
    const next = await connect()
    assert.equal((await next.client.request(IDENTITIES)).type, IDENTITIES_ANSWER, 'the agent still serves')
    next.raw.destroy()
  })
})

describe('ssh-agent connection: session-bind', () => {
  const host = generateKeyPairSync('ed25519')
  const sid = Buffer.from('0123456789abcdef0123456789abcdef')
  const bind = (hostKey: Buffer, sig: Buffer) => [sshStr('session-bind@openssh.com'), sshStr(hostKey), sshStr(sid), sshStr(sig), Buffer.of(0)]

  it('a host key that does not parse is refused and logged, and the connection may still bind properly', async () => {
    const c = await connect()
    const good = sshSign(host.privateKey, sid, 0)
    // Names a key type memid does not parse; the signature is a real one over the session id.
    const dss = Buffer.concat([sshStr('ssh-dss'), sshStr(Buffer.alloc(32))])
    const shortEd = Buffer.concat([sshStr('ssh-ed25519'), sshStr(Buffer.alloc(31))])
    for (const key of [dss, shortEd]) {
      assert.equal((await c.client.request(EXTENSION, ...bind(key, good))).type, FAILURE)
    }
    assert.ok(logs.some((l) => l.includes('session-bind with a bad host signature refused')))
    assert.equal((await c.client.request(EXTENSION, ...bind(sshPublicKeyBlob(host.publicKey), good))).type, SUCCESS, 'refusals did not use up the bind')
    c.raw.destroy()
  })

  it('a bind is logged with the host key\'s fingerprint, not the key', async () => {
    const c = await connect()
    const blob = sshPublicKeyBlob(host.publicKey)
    assert.equal((await c.client.request(EXTENSION, ...bind(blob, sshSign(host.privateKey, sid, 0)))).type, SUCCESS)
    const line = logs.find((l) => l.includes('ssh-agent connection bound to a session'))
    assert.ok(line)
    assert.ok(line.includes(`"hostKey":"${sshFingerprint(blob)}"`), line)
    assert.ok(line.includes('"forwarding":false'), line)
    assert.equal((await c.client.request(SIGN, sshStr(cred.certificateBlob), sshStr('x'), u32(0))).type, SIGN_RESPONSE)
    c.raw.destroy()
  })
})

describe('FrameReader', () => {
  it('holds back only the partial frame, and nothing once it is complete', () => {
    const seen: string[] = []
    const reader = new FrameReader((buf, start, end) => {
      seen.push(buf.subarray(start, end).toString())
      return true
    })
    assert.equal(reader.buffered, 0)
    const f = agentFrame(0x41, Buffer.from('bc'))
    assert.equal(reader.push(Buffer.concat([f, f.subarray(0, 5)])), undefined)
    assert.deepEqual(seen, ['Abc'])
    assert.equal(reader.buffered, 5)
    assert.equal(reader.push(f.subarray(5)), undefined)
    assert.deepEqual(seen, ['Abc', 'Abc'])
    assert.equal(reader.buffered, 0)
    // A frame's length is checked against what is left after the frames before it.
    const two = Buffer.concat([f, f, f.subarray(0, 6)])
    assert.equal(reader.push(two), undefined)
    assert.deepEqual(seen, ['Abc', 'Abc', 'Abc', 'Abc'])
    assert.equal(reader.buffered, 6)
  })
})
