/**
 * Second figure, fixture upstream (a Node TLS sink, not native): Throughput of memid's database tunnel versus stunnel (Debian stunnel4, client mode), on
 * the same run, carrying the same bytes to the same TLS server that requires a client
 * certificate. One connection, both directions (client→server like COPY FROM, server→client
 * like a big SELECT). Each party runs in its own process. Prints MB/s each way, the CPU
 * seconds each tunnel process spent per GB carried, the TLS version and cipher each one
 * negotiated, and the ratios (target: memid ≥ 1.2× stunnel).
 *
 * The tunnel runs with protocol `tls`: after PostgreSQL's startup phase the `postgres`
 * protocol uses the very same data path (two pipes), so this measures what a COPY does.
 *
 *   node bench/db-tunnel.ts [--seconds 3] [--rounds 5] [--quiet-wait 60]
 *
 * Rounds alternate which tunnel goes first and start once the machine is otherwise idle
 * (waiting up to --quiet-wait seconds); medians are reported, and the ratio is the median
 * of the per-round ratios (each round compares the two under the same background load).
 */
import { spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import {
  alternateRounds, benchCa, benchLeaf, benchServiceDeps, cpuSeconds, firstMessage, ForeignLoad, machineLine, median, requireTool,
  startRole, withBenchDir, type ClientMaterial, type Role,
} from './_common.ts'

const SELF = fileURLToPath(import.meta.url)
const CHUNK = Buffer.alloc(1024 * 1024, 'memid bench ')

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '3' },
    rounds: { type: 'string', default: '5' },
    'quiet-wait': { type: 'string', default: '60' },
    role: { type: 'string' },
  },
})

interface SinkMaterial {
  serverCertPem: string
  serverKeyPem: string
  clientCaPem: string
}

if (args.role === 'sink') await serveSink()
else if (args.role === 'memid') await serveMemid()
else await main()

/**
 * Child: the TLS server both tunnels talk to. The first byte says what to do: 'U' read
 * and count until the end, then report (with the TLS version and cipher the tunnel
 * negotiated); 'D' send for the given seconds, then end.
 */
async function serveSink(): Promise<void> {
  const tls = await import('node:tls')
  const m = await firstMessage<SinkMaterial>()
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
          const tlsName = `${sock.getProtocol()} ${sock.getCipher().standardName}`
          process.send?.({ upload: { bytes, ms: performance.now() - start, tls: tlsName } })
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
  const { createDbTunnelService } = await import('../src/services/db-tunnel/index.ts')
  const m = await firstMessage<ClientMaterial>()
  const svc = createDbTunnelService(
    { listen: '127.0.0.1:0', service: 'bench', username: 'bench', protocol: 'tls', maxConnections: 10, connectTimeoutMs: 5000 },
    benchServiceDeps('db', 'bench', [], m),
  )
  await svc.start()
  process.send?.({ address: svc.address })
  process.on('SIGTERM', () => void svc.stop(100).then(() => process.exit(0)))
}

interface Transfer {
  bytes: number
  ms: number
  tls?: string
}

/** Pushes bytes through the tunnel for `seconds`; the sink reports what it received. */
async function upload(port: number, seconds: number, sink: Role): Promise<Transfer> {
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
  const report = (await sink.next()).upload as Transfer
  s.destroy()
  return report
}

/** Asks the sink to send for `seconds` and counts what arrives through the tunnel. */
async function download(port: number, seconds: number): Promise<Transfer> {
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

/** Starts stunnel4 in client mode towards the sink, with the same TLS floor and TCP_NODELAY as memid. */
async function startStunnel(dir: string, sinkPort: number, client: { certPem: string; keyPem: string }, serverCaPem: string) {
  // stunnel reads its key and certificate from files: that is the peer's requirement (and
  // this bench's private temp dir), not memid's.
  writeFileSync(path.join(dir, 'client.pem'), client.certPem + client.keyPem, { mode: 0o600 })
  writeFileSync(path.join(dir, 'server-ca.pem'), serverCaPem)
  const port = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port
      s.close(() => resolve(p))
    })
  })
  writeFileSync(path.join(dir, 'stunnel.conf'), [
    'foreground = yes', 'pid =', 'debug = 3', 'socket = l:TCP_NODELAY=1', 'socket = r:TCP_NODELAY=1',
    '[bench]', 'client = yes', `accept = 127.0.0.1:${port}`, `connect = 127.0.0.1:${sinkPort}`,
    `cert = ${path.join(dir, 'client.pem')}`, `CAfile = ${path.join(dir, 'server-ca.pem')}`,
    'verifyChain = yes', 'checkIP = 127.0.0.1', 'sslVersionMin = TLSv1.2', '',
  ].join('\n'))
  const child = spawn('stunnel4', [path.join(dir, 'stunnel.conf')], { stdio: ['ignore', 'ignore', 'pipe'] })
  await new Promise<void>((resolve, reject) => {
    let err = ''
    child.stderr.on('data', (d: Buffer) => (err += d.toString()))
    child.once('exit', (code) => reject(new Error(`stunnel4 exited (${code}): ${err}`)))
    const poll = () => {
      const c = net.connect(port, '127.0.0.1')
      c.once('connect', () => {
        c.destroy()
        resolve()
      })
      c.once('error', () => setTimeout(poll, 50))
    }
    poll()
  })
  return { child, port }
}

async function main(): Promise<void> {
  requireTool('stunnel4', 'apt-get install -y stunnel4', ['-version'])
  const seconds = Number(args.seconds)
  const rounds = Number(args.rounds)
  const quietWaitMs = Number(args['quiet-wait']) * 1000
  const serverCa = await benchCa('bench server CA')
  const clientCa = await benchCa('bench db-client CA')
  const server = await benchLeaf(serverCa, 'localhost', 'server', { ipAddresses: ['127.0.0.1'] })
  const memidClient = await benchLeaf(clientCa, 'bench', 'client')
  const stunnelClient = await benchLeaf(clientCa, 'bench', 'client')

  await withBenchDir('memid-bench-db-', async (dir, own) => {
    const sink = startRole(SELF, 'sink')
    own(sink.child)
    sink.child.send({ serverCertPem: server.certPem, serverKeyPem: server.keyPem, clientCaPem: clientCa.certPem } satisfies SinkMaterial)
    const sinkPort = (await sink.next()).port as number

    const memid = startRole(SELF, 'memid')
    own(memid.child)
    memid.child.send({
      ...memidClient, serverCaPem: serverCa.certPem, uri: `tls://127.0.0.1:${sinkPort}`, host: '127.0.0.1', port: sinkPort,
    } satisfies ClientMaterial)
    const memidPort = Number(String((await memid.next()).address).split(':').pop())
    const st = await startStunnel(dir, sinkPort, stunnelClient, serverCa.certPem)
    own(st.child)

    const parties = {
      memid: { port: memidPort, pid: memid.child.pid, up: [] as number[], down: [] as number[], cpuUp: [] as number[], cpuDown: [] as number[], tls: '' },
      stunnel: { port: st.port, pid: st.child.pid, up: [] as number[], down: [] as number[], cpuUp: [] as number[], cpuDown: [] as number[], tls: '' },
    }
    // Warm both (handshakes, JIT, TCP windows) before measuring; the sink names the TLS each negotiated.
    parties.memid.tls = (await upload(memidPort, 1, sink)).tls ?? '?'
    parties.stunnel.tls = (await upload(st.port, 1, sink)).tls ?? '?'
    await download(memidPort, 1)
    await download(st.port, 1)

    const foreign = new ForeignLoad(() => [sink.child.pid, memid.child.pid, st.child.pid])
    const ratios = { up: [] as number[], down: [] as number[], cpuUp: [] as number[], cpuDown: [] as number[] }
    const measure = async (who: 'memid' | 'stunnel') => {
      const p = parties[who]
      const c0 = cpuSeconds(p.pid)
      const up = await upload(p.port, seconds, sink)
      const c1 = cpuSeconds(p.pid)
      const down = await download(p.port, seconds)
      p.cpuUp.push((c1 - c0) / (up.bytes / 1e9))
      p.cpuDown.push((cpuSeconds(p.pid) - c1) / (down.bytes / 1e9))
      p.up.push(up.bytes / 1e6 / (up.ms / 1000))
      p.down.push(down.bytes / 1e6 / (down.ms / 1000))
    }
    const waited = await alternateRounds({
      rounds, quietWaitMs, parties: ['memid', 'stunnel'], foreign, measure,
      measured() {
        const m = parties.memid
        const s = parties.stunnel
        ratios.up.push((m.up.at(-1) as number) / (s.up.at(-1) as number))
        ratios.down.push((m.down.at(-1) as number) / (s.down.at(-1) as number))
        ratios.cpuUp.push((m.cpuUp.at(-1) as number) / (s.cpuUp.at(-1) as number))
        ratios.cpuDown.push((m.cpuDown.at(-1) as number) / (s.cpuDown.at(-1) as number))
      },
    })
    const list = (xs: number[], digits = 0) => xs.map((x) => x.toFixed(digits)).join(', ')
    const line = (who: 'memid' | 'stunnel') => {
      const p = parties[who]
      return `${who.padEnd(7)} client→server ${median(p.up).toFixed(0)} MB/s (${list(p.up)}) CPU ${median(p.cpuUp).toFixed(2)} s/GB (${list(p.cpuUp, 2)})\n` +
        `${''.padEnd(7)} server→client ${median(p.down).toFixed(0)} MB/s (${list(p.down)}) CPU ${median(p.cpuDown).toFixed(2)} s/GB (${list(p.cpuDown, 2)})   ${p.tls}`
    }
    console.log(`[fixture upstream, second figure] ${machineLine()}; one connection, ${seconds}s per direction × ${rounds} rounds, TLS to a server requiring client certificates`)
    console.log(line('memid'))
    console.log(line('stunnel'))
    console.log(`other load on the machine during the rounds: ${(foreign.share * 100).toFixed(0)}% (waited ${waited.toFixed(0)} s for quiet)`)
    const r = (xs: number[]) => `${median(xs).toFixed(2)}×`
    console.log(`ratio memid/stunnel (median of rounds): MB/s client→server ${r(ratios.up)}, server→client ${r(ratios.down)} (target ≥ 1.2×); ` +
      `CPU per GB ${r(ratios.cpuUp)}, ${r(ratios.cpuDown)} (lower is better)`)
  })
}
