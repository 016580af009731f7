/**
 * Throughput of memid's database tunnel versus stunnel (Debian stunnel4, client mode), on
 * the same run, carrying the same bytes to the same TLS server that requires a client
 * certificate. One connection, both directions (client→server like COPY FROM, server→client
 * like a big SELECT). Each party runs in its own process. Prints MB/s, CPU seconds per GB
 * of each tunnel, and the ratio (target: memid ≥ 1.2× stunnel).
 *
 * The tunnel runs with protocol `tls`: after PostgreSQL's startup phase the `postgres`
 * protocol uses the very same data path (two pipes), so this measures what a COPY does.
 *
 *   node bench/db-tunnel.ts [--seconds 3] [--rounds 3]
 *
 * To see where memid's time goes: MEMID_BENCH_CPU_PROF=DIR writes a V8 CPU profile of the
 * tunnel process; MEMID_BENCH_NODE_FLAGS="--trace-gc" passes Node flags to it.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const SELF = fileURLToPath(import.meta.url)
const CHUNK = Buffer.alloc(1024 * 1024, 'memid bench ')

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '3' },
    rounds: { type: 'string', default: '3' },
    role: { type: 'string' },
  },
})

interface Material {
  serverCaPem: string
  serverCertPem: string
  serverKeyPem: string
  clientCaPem: string
  certPem: string
  keyPem: string
  sinkPort?: number
}

if (args.role === 'sink') await serveSink()
else if (args.role === 'memid') await serveMemid()
else await main()

/**
 * Child: the TLS server both tunnels talk to. The first byte says what to do: 'U' read
 * and count until the end, then report; 'D' send for the given seconds, then end.
 */
async function serveSink(): Promise<void> {
  const tls = await import('node:tls')
  const m = await new Promise<Material>((resolve) => process.once('message', (msg) => resolve(msg as Material)))
  const server = tls.createServer({
    key: m.serverKeyPem, cert: m.serverCertPem, ca: m.clientCaPem, requestCert: true, rejectUnauthorized: true,
  }, (sock) => {
    sock.on('error', () => undefined)
    sock.once('data', (first: Buffer) => {
      if (first[0] === 0x55 /* U */) {
        let bytes = first.length - 1
        let start = 0
        sock.on('data', (d: Buffer) => {
          if (start === 0) start = performance.now()
          bytes += d.length
        })
        sock.once('end', () => {
          process.send?.({ upload: { bytes, ms: performance.now() - start } })
          sock.end()
        })
        return
      }
      const until = performance.now() + Number(first.subarray(1).toString()) * 1000
      const pump = () => {
        while (performance.now() < until) {
          if (!sock.write(CHUNK)) return void sock.once('drain', pump)
        }
        sock.end()
      }
      pump()
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  process.send?.({ port: (server.address() as net.AddressInfo).port })
  process.on('SIGTERM', () => process.exit(0))
}

/** Child: memid's tunnel with the credential the parent passes over IPC. */
async function serveMemid(): Promise<void> {
  const { createPrivateKey } = await import('node:crypto')
  const { Registry } = await import('prom-client')
  const { CredentialSource } = await import('../src/agent/credentials.ts')
  const { silentLogger } = await import('../src/core/log.ts')
  const { systemClock } = await import('../src/core/clock.ts')
  const { buildClientContext } = await import('../src/pki/tls-context.ts')
  const { certificateSerial } = await import('../src/pki/x509.ts')
  const { createDbTunnelService } = await import('../src/services/db-tunnel/index.ts')
  const m = await new Promise<Material>((resolve) => process.once('message', (msg) => resolve(msg as Material)))
  const privateKey = createPrivateKey(m.keyPem)
  const source = new CredentialSource<import('../src/agent/credentials.ts').TlsClientCredential>('bench')
  source.set({
    kind: 'db', privateKey, certificatePem: m.certPem, user: 'bench', groups: [],
    secureContext: buildClientContext({ key: privateKey, certPem: m.certPem, caPem: m.serverCaPem }),
    upstream: { name: 'bench', uri: `tls://127.0.0.1:${m.sinkPort}`, host: '127.0.0.1', port: m.sinkPort as number, caPem: m.serverCaPem },
    serial: certificateSerial(m.certPem), notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3600_000),
  })
  const svc = createDbTunnelService(
    { listen: '127.0.0.1:0', service: 'bench', username: 'bench', protocol: 'tls', maxConnections: 10, connectTimeoutMs: 5000 },
    { credentials: source, logger: silentLogger(), clock: systemClock, metrics: new Registry() },
  )
  await svc.start()
  process.send?.({ address: svc.address })
  process.on('SIGTERM', () => void svc.stop(100).then(() => process.exit(0)))
}

function fork(role: string): { child: ChildProcess; next(): Promise<Record<string, unknown>> } {
  const prof = role === 'memid' && process.env.MEMID_BENCH_CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.MEMID_BENCH_CPU_PROF] : []
  const flags = role === 'memid' && process.env.MEMID_BENCH_NODE_FLAGS ? process.env.MEMID_BENCH_NODE_FLAGS.split(' ') : []
  const child = spawn(process.execPath, [...prof, ...flags, SELF, '--role', role], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const queue: Record<string, unknown>[] = []
  const waiters: ((m: Record<string, unknown>) => void)[] = []
  child.on('message', (m) => {
    const w = waiters.shift()
    if (w) w(m as Record<string, unknown>)
    else queue.push(m as Record<string, unknown>)
  })
  child.once('exit', (code) => {
    if (code !== 0 && code !== null) console.error(`${role} exited (${code})`)
  })
  return {
    child,
    next: () => {
      const m = queue.shift()
      return m ? Promise.resolve(m) : new Promise((resolve) => waiters.push(resolve))
    },
  }
}

/** CPU seconds (user + system) a process has used so far, from /proc. */
function cpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return 0
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) / 100
  } catch {
    return 0
  }
}

/** Pushes bytes through the tunnel for `seconds`; the sink reports what it received. */
async function upload(port: number, seconds: number, sink: ReturnType<typeof fork>): Promise<{ bytes: number; ms: number }> {
  const s = net.connect(port, '127.0.0.1')
  await new Promise((r) => s.once('connect', r))
  s.write('U')
  const until = performance.now() + seconds * 1000
  await new Promise<void>((resolve) => {
    const pump = () => {
      while (performance.now() < until) {
        if (!s.write(CHUNK)) return void s.once('drain', pump)
      }
      s.end()
      resolve()
    }
    pump()
  })
  s.resume()
  const report = (await sink.next()).upload as { bytes: number; ms: number }
  s.destroy()
  return report
}

/** Asks the sink to send for `seconds` and counts what arrives through the tunnel. */
async function download(port: number, seconds: number): Promise<{ bytes: number; ms: number }> {
  const s = net.connect(port, '127.0.0.1')
  await new Promise((r) => s.once('connect', r))
  s.write(`D${seconds}`)
  let bytes = 0
  let start = 0
  s.on('data', (d: Buffer) => {
    if (start === 0) start = performance.now()
    bytes += d.length
  })
  await new Promise((r) => s.once('end', r))
  const ms = performance.now() - start
  s.destroy()
  return { bytes, ms }
}

async function main(): Promise<void> {
  try {
    execFileSync('stunnel4', ['-version'], { stdio: 'ignore' })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error('stunnel4 is required: apt-get install -y stunnel4')
  }
  const seconds = Number(args.seconds)
  const rounds = Number(args.rounds)
  const { generateKeyPairSync } = await import('node:crypto')
  const { createCaCertificate, issueLeaf } = await import('../src/pki/x509.ts')
  const ca = async (name: string) => {
    const k = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    return { key: k.privateKey, certPem: await createCaCertificate(k.privateKey, k.publicKey, name, 3600_000) }
  }
  const leaf = async (authority: Awaited<ReturnType<typeof ca>>, cn: string, usage: 'client' | 'server') => {
    const k = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const l = await issueLeaf({ ca: authority, publicKey: k.publicKey, commonName: cn, ipAddresses: usage === 'server' ? ['127.0.0.1'] : [], ttlMs: 3600_000, usage })
    return { certPem: l.pem, keyPem: k.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string }
  }
  const serverCa = await ca('bench server CA')
  const clientCa = await ca('bench db-client CA')
  const server = await leaf(serverCa, 'localhost', 'server')
  const memidClient = await leaf(clientCa, 'bench', 'client')
  const stunnelClient = await leaf(clientCa, 'bench', 'client')

  const dir = mkdtempSync(path.join(tmpdir(), 'memid-bench-db-'))
  chmodSync(dir, 0o700)
  const children: ChildProcess[] = []
  try {
    const sink = fork('sink')
    children.push(sink.child)
    sink.child.send({ serverCaPem: serverCa.certPem, serverCertPem: server.certPem, serverKeyPem: server.keyPem, clientCaPem: clientCa.certPem })
    const sinkPort = (await sink.next()).port as number

    const memid = fork('memid')
    children.push(memid.child)
    memid.child.send({ serverCaPem: serverCa.certPem, certPem: memidClient.certPem, keyPem: memidClient.keyPem, sinkPort })
    const memidPort = Number(String((await memid.next()).address).split(':').pop())

    // stunnel reads its key and certificate from files: that is the peer's requirement (and
    // this bench's private temp dir), not memid's. Same TLS floor and TCP_NODELAY as memid.
    writeFileSync(path.join(dir, 'client.pem'), stunnelClient.certPem + stunnelClient.keyPem, { mode: 0o600 })
    writeFileSync(path.join(dir, 'server-ca.pem'), serverCa.certPem)
    const stunnelPort = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port
        s.close(() => resolve(p))
      })
    })
    writeFileSync(path.join(dir, 'stunnel.conf'), [
      'foreground = yes', 'pid =', 'debug = 3', 'socket = l:TCP_NODELAY=1', 'socket = r:TCP_NODELAY=1',
      '[bench]', 'client = yes', `accept = 127.0.0.1:${stunnelPort}`, `connect = 127.0.0.1:${sinkPort}`,
      `cert = ${path.join(dir, 'client.pem')}`, `CAfile = ${path.join(dir, 'server-ca.pem')}`,
      'verifyChain = yes', 'checkIP = 127.0.0.1', 'sslVersionMin = TLSv1.2', '',
    ].join('\n'))
    const st = spawn('stunnel4', [path.join(dir, 'stunnel.conf')], { stdio: ['ignore', 'ignore', 'pipe'] })
    children.push(st)
    await new Promise<void>((resolve, reject) => {
      let err = ''
      st.stderr.on('data', (d: Buffer) => (err += d.toString()))
      st.once('exit', (code) => reject(new Error(`stunnel4 exited (${code}): ${err}`)))
      const poll = () => {
        const c = net.connect(stunnelPort, '127.0.0.1')
        c.once('connect', () => {
          c.destroy()
          resolve()
        })
        c.once('error', () => setTimeout(poll, 50))
      }
      poll()
    })

    // Warm both (handshakes, JIT) before measuring.
    await upload(memidPort, 0.5, sink)
    await upload(stunnelPort, 0.5, sink)
    const results = { memid: { up: [] as number[], down: [] as number[], cpu: 0, bytes: 0 }, stunnel: { up: [] as number[], down: [] as number[], cpu: 0, bytes: 0 } }
    const measure = async (who: 'memid' | 'stunnel', port: number, pid: number | undefined) => {
      const c0 = cpuSeconds(pid)
      const up = await upload(port, seconds, sink)
      const down = await download(port, seconds)
      results[who].cpu += cpuSeconds(pid) - c0
      results[who].bytes += up.bytes + down.bytes
      results[who].up.push(up.bytes / 1e6 / (up.ms / 1000))
      results[who].down.push(down.bytes / 1e6 / (down.ms / 1000))
    }
    // Rounds alternate between the two so background load hits both alike; medians are reported.
    for (let r = 0; r < rounds; r++) {
      await measure('memid', memidPort, memid.child.pid)
      await measure('stunnel', stunnelPort, st.pid)
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number
    const fmt = (xs: number[]) => `${median(xs).toFixed(0)} MB/s (rounds: ${xs.map((x) => x.toFixed(0)).join(', ')})`
    const perGb = (who: 'memid' | 'stunnel') => (results[who].cpu / (results[who].bytes / 1e9)).toFixed(2)
    console.log(`one connection, ${seconds}s per direction × ${rounds} rounds, TLS to a server requiring client certificates`)
    console.log(`memid   client→server ${fmt(results.memid.up)}   server→client ${fmt(results.memid.down)}   CPU ${perGb('memid')} s/GB`)
    console.log(`stunnel client→server ${fmt(results.stunnel.up)}   server→client ${fmt(results.stunnel.down)}   CPU ${perGb('stunnel')} s/GB`)
    const upRatio = median(results.memid.up) / median(results.stunnel.up)
    const downRatio = median(results.memid.down) / median(results.stunnel.down)
    console.log(`ratio memid/stunnel: client→server ${upRatio.toFixed(2)}×, server→client ${downRatio.toFixed(2)}×  (target ≥ 1.2×)`)
  } finally {
    for (const c of children) c.kill('SIGTERM')
    rmSync(dir, { recursive: true, force: true })
  }
}
