/**
 * Issue 10 item 1: the CA bundle at bootstrap is authenticated. A man-in-the-middle that
 * answers the agent's first (unverified) connection with the genuine TLS CA and its own
 * ssh-host CA, and passes every later connection through untouched, must not get its CA
 * served by `memid known-hosts`.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import https from 'node:https'
import net from 'node:net'
import path from 'node:path'
import { startAuth, startAgent, tempDir, type AgentFixture, type AuthFixture } from '../fixtures/memid.ts'
import { createCaCertificate } from '../../src/pki/x509.ts'
import { sshPublicKeyLine } from '../../src/pki/openssh.ts'

interface Mitm {
  addr: string
  /** How many connections it terminated itself (TLS with its own certificate). */
  intercepted: number
  close(): Promise<void>
}

/**
 * A TCP proxy to `upstream` that terminates TLS on its first connection with its own
 * self-signed certificate and rewrites `sshHost` in a `/v1/cas` answer; later connections
 * are spliced through byte for byte (so verified connections reach the real service).
 */
async function startMitm(upstream: string, attackerSshHostLine: string): Promise<Mitm> {
  const [upHost, upPort] = [upstream.slice(0, upstream.lastIndexOf(':')), Number(upstream.slice(upstream.lastIndexOf(':') + 1))]
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const cert = await createCaCertificate(key.privateKey, key.publicKey, 'memid-auth', 3_600_000)
  const forward = (req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const up = https.request({ host: upHost, port: upPort, method: req.method, path: req.url, headers: req.headers, rejectUnauthorized: false, servername: 'memid-auth' }, (ur) => {
        const body: Buffer[] = []
        ur.on('data', (c: Buffer) => body.push(c))
        ur.on('end', () => {
          let out = Buffer.concat(body)
          if (req.url === '/v1/cas' && ur.statusCode === 200) {
            const cas = JSON.parse(out.toString('utf8')) as Record<string, string>
            out = Buffer.from(JSON.stringify({ ...cas, sshHost: attackerSshHostLine }))
          }
          res.writeHead(ur.statusCode ?? 502, { 'content-type': 'application/json', 'content-length': out.length })
          res.end(out)
        })
      })
      up.on('error', () => res.destroy())
      up.end(Buffer.concat(chunks))
    })
  }
  const terminator = https.createServer({ key: key.privateKey.export({ type: 'pkcs8', format: 'pem' }), cert }, forward)
  const open = new Set<net.Socket>()
  const mitm: Mitm = { addr: '', intercepted: 0, close: async () => undefined }
  const server = net.createServer((client) => {
    open.add(client)
    client.on('close', () => open.delete(client))
    client.on('error', () => client.destroy())
    if (mitm.intercepted === 0) {
      mitm.intercepted++
      terminator.emit('connection', client)
      return
    }
    const up = net.connect(upPort, upHost)
    open.add(up)
    up.on('close', () => open.delete(up))
    up.on('error', () => client.destroy())
    client.on('close', () => up.destroy())
    up.on('close', () => client.destroy())
    client.pipe(up).pipe(client)
  })
  await new Promise<void>((resolve, reject) => server.listen(0, '127.0.0.1', resolve).once('error', reject))
  mitm.addr = `127.0.0.1:${(server.address() as net.AddressInfo).port}`
  mitm.close = async () => {
    for (const s of open) s.destroy()
    await new Promise((r) => server.close(r))
  }
  return mitm
}

describe('bootstrap trusts CA material only from a connection verified against the pin', () => {
  let auth: AuthFixture
  let mitm: Mitm
  let agent: AgentFixture | undefined
  let tmp: { dir: string; cleanup: () => void }
  const attackerLine = sshPublicKeyLine(generateKeyPairSync('ed25519').publicKey, 'attacker-ssh-host-ca')

  before(async () => {
    auth = await startAuth()
    mitm = await startMitm(auth.addr, attackerLine)
    tmp = tempDir('memid-mitm-')
  })

  after(async () => {
    await agent?.stop()
    await mitm?.close()
    await auth?.stop()
    tmp?.cleanup()
  })

  it('a man-in-the-middle on the first bootstrap connection cannot make memid known-hosts serve its ssh-host CA', async () => {
    const token = await auth.bot('mitm')
    const genuine = await auth.cli(['auth', 'export', '--kind', 'ssh-host'])
    assert.equal(genuine.code, 0, genuine.stderr)
    agent = startAgent({ auth: { addr: mitm.addr, caPin: auth.caPin }, token, dir: path.join(tmp.dir, 'agent') })
    const outcome = await Promise.race([agent.ready.then(() => 'ready'), agent.process.exited.then(() => 'exited')])
    assert.equal(mitm.intercepted, 1, 'the first connection went through the man-in-the-middle')
    const attackerKey = attackerLine.split(' ')[1] as string
    if (outcome === 'ready') {
      const kh = await agent.cli(['known-hosts'])
      assert.equal(kh.code, 0, kh.stderr)
      assert.ok(!kh.stdout.includes(attackerKey), `known-hosts serves the attacker's CA:\n${kh.stdout}`)
      assert.ok(kh.stdout.includes(genuine.stdout.trim().split(' ')[1] as string), `known-hosts serves the genuine ssh-host CA:\n${kh.stdout}`)
    }
    assert.ok(!agent.process.stderr.includes(attackerKey))
  })
})
