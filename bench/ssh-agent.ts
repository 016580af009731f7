/**
 * Ed25519 signatures per second through memid's agent socket versus OpenSSH's
 * `ssh-agent`, measured on the same run with the same client, each agent in its own
 * process. Prints both rates and the ratio (target: memid ≥ 4× ssh-agent).
 *
 *   node bench/ssh-agent.ts [--seconds 3] [--connections 8] [--depth 4]
 *
 * `depth` is how many requests each connection keeps in flight; ssh itself uses 1.
 */
import { spawn, execFileSync } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { rmSync, existsSync } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { Registry } from 'prom-client'
import { requireTool, withBenchDir } from './_common.ts'

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '3' },
    connections: { type: 'string', default: '8' },
    depth: { type: 'string', default: '4' },
    serve: { type: 'string' },
  },
})

if (args.serve !== undefined) {
  await serveMemid(args.serve)
} else {
  await main()
}

/** Child mode: the memid ssh-agent service with a freshly issued certificate, until killed. */
async function serveMemid(sock: string): Promise<void> {
  const { CredentialSource } = await import('../src/credentials/credentials.ts')
  const { createSshAgentService } = await import('../src/services/ssh-agent/index.ts')
  const { silentLogger } = await import('../src/core/log.ts')
  const { systemClock } = await import('../src/core/clock.ts')
  const { signSshCertificate, sshCertificateLine } = await import('../src/pki/openssh.ts')
  const { sshCredential } = await import('../src/services/ssh-agent/credential.ts')
  const ca = generateKeyPairSync('ed25519')
  const key = generateKeyPairSync('ed25519')
  const now = Date.now()
  const blob = signSshCertificate({
    type: 'user', publicKey: key.publicKey, caKey: ca.privateKey, serial: 1n, keyId: 'bench',
    principals: ['deploy'], validAfter: new Date(now - 60_000), validBefore: new Date(now + 3_600_000),
  })
  const source = new CredentialSource<import('../src/credentials/credentials.ts').SshCredential>('ssh')
  source.set(sshCredential(key.privateKey, sshCertificateLine(blob)))
  const svc = createSshAgentService({ path: sock }, { credentials: source, logger: silentLogger(), clock: systemClock, metrics: new Registry() })
  await svc.start()
  process.stdout.write('ready\n')
  process.on('SIGTERM', () => void svc.stop(100).then(() => process.exit(0)))
}

function frame(type: number, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat([Buffer.of(type), ...parts])
  const len = Buffer.alloc(4)
  len.writeUInt32BE(body.length)
  return Buffer.concat([len, body])
}

function str(b: Buffer): Buffer {
  const len = Buffer.alloc(4)
  len.writeUInt32BE(b.length)
  return Buffer.concat([len, b])
}

/** Connects and returns the first identity's key blob (the certificate for memid). */
async function firstIdentity(sock: string): Promise<Buffer> {
  const s = net.connect(sock)
  await new Promise((r, j) => s.once('connect', r).once('error', j))
  s.write(frame(11))
  let buf = Buffer.alloc(0)
  for await (const chunk of s) {
    buf = Buffer.concat([buf, chunk as Buffer])
    if (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) break
  }
  s.destroy()
  if (buf[4] !== 12 || buf.readUInt32BE(5) < 1) throw new Error('agent has no identities')
  const len = buf.readUInt32BE(9)
  return Buffer.from(buf.subarray(13, 13 + len))
}

/** Signs for `seconds` over `connections` × `depth` in-flight requests; returns signatures/s. */
async function measure(sock: string, seconds: number, connections: number, depth: number): Promise<number> {
  const blob = await firstIdentity(sock)
  // A userauth-request-sized payload, like what ssh asks the agent to sign.
  const request = frame(13, str(blob), str(Buffer.alloc(160, 0x5a)), Buffer.alloc(4))
  let done = 0
  let running = true
  const until = performance.now() + seconds * 1000
  const conns = await Promise.all(Array.from({ length: connections }, () => new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect(sock)
    s.once('connect', () => resolve(s)).once('error', reject)
  })))
  await Promise.all(conns.map((s) => new Promise<void>((resolve) => {
    let pending: Buffer = Buffer.alloc(0)
    let inFlight = 0
    const pump = () => {
      while (running && inFlight < depth) {
        s.write(request)
        inFlight++
      }
      if (!running && inFlight === 0) {
        s.destroy()
        resolve()
      }
    }
    s.on('data', (chunk: Buffer) => {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk])
      let off = 0
      while (pending.length - off >= 4) {
        const len = pending.readUInt32BE(off)
        if (pending.length - off - 4 < len) break
        if (pending[off + 4] !== 14) throw new Error(`sign failed (type ${pending[off + 4]})`)
        off += 4 + len
        inFlight--
        done++
      }
      pending = pending.subarray(off)
      if (performance.now() >= until) running = false
      pump()
    })
    pump()
  })))
  return done / seconds
}

async function waitFor(check: () => boolean, what: string): Promise<void> {
  const until = Date.now() + 10_000
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

async function main(): Promise<void> {
  requireTool('ssh-agent', 'apt-get install -y openssh-client', ['-h'])
  const seconds = Number(args.seconds)
  const connections = Number(args.connections)
  const depth = Number(args.depth)
  await withBenchDir('memid-bench-ssh-', async (dir, own) => {
    // OpenSSH's ssh-agent, holding an Ed25519 key added the only way it accepts: from a file.
    const opensshSock = path.join(dir, 'openssh.sock')
    own(spawn('ssh-agent', ['-D', '-a', opensshSock], { stdio: 'ignore' }))
    await waitFor(() => existsSync(opensshSock), 'ssh-agent')
    const keyFile = path.join(dir, 'id_ed25519')
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', keyFile])
    execFileSync('ssh-add', ['-q', keyFile], { env: { ...process.env, SSH_AUTH_SOCK: opensshSock } })
    rmSync(keyFile)

    const memidSock = path.join(dir, 'memid', 'agent.sock')
    const memid = own(spawn(process.execPath, [new URL(import.meta.url).pathname, '--serve', memidSock], { stdio: ['ignore', 'pipe', 'inherit'] }))
    let out = ''
    memid.stdout?.on('data', (d: Buffer) => (out += d.toString()))
    await waitFor(() => out.includes('ready'), 'memid agent')

    // Warm both up (JIT, connection setup) before measuring.
    await measure(memidSock, 0.5, connections, depth)
    await measure(opensshSock, 0.5, connections, depth)
    const openssh = await measure(opensshSock, seconds, connections, depth)
    const ours = await measure(memidSock, seconds, connections, depth)
    const ratio = ours / openssh
    const result = {
      bench: 'ssh-agent ed25519 sign',
      connections, depth, seconds,
      memidSignsPerSec: Math.round(ours),
      opensshSignsPerSec: Math.round(openssh),
      ratio: Number(ratio.toFixed(2)),
      target: 4,
    }
    console.log(`memid ssh-agent:   ${result.memidSignsPerSec} signatures/s`)
    console.log(`OpenSSH ssh-agent: ${result.opensshSignsPerSec} signatures/s`)
    console.log(`ratio: ${result.ratio}x (target >= ${result.target}x)`)
    console.log(JSON.stringify(result))
  })
}
