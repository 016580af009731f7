/**
 * memid's database tunnel versus stunnel (Debian stunnel4, client mode) against a native
 * upstream: nginx (one worker, `stream` TLS server requiring a client certificate, session
 * cache and tickets on) in front of a native echo server, driven by a native load client
 * (bench/native/tunnel-load.c, compiled here with cc), so the tunnel under test is what
 * sets the pace. Per test it prints memid, stunnel, the direct-to-upstream limit, the
 * ratio, p50/p99 and the tunnel's CPU per connection or per GB.
 *
 *   node bench/db-tunnel.ts [--seconds 5] [--rounds 3] [--threads 8] [--pings 5000] [--quiet-wait 10] [--tests conn,bulk,ping]
 *
 * Tests: new connections/s (connect, 64 B round trip, close, `--threads` client threads),
 * bulk MB/s (one connection, the client sends and reads the echo at once; MB/s is one
 * direction), 64 B ping-pong RTT on one connection. "direct" is the same client speaking
 * TLS with a client certificate to nginx itself (full handshake every time) for the
 * connection and ping tests, and plain TCP to the echo server for bulk (there is no
 * TLS-less figure to beat there; it is the ceiling of this machine's loopback).
 *
 * The fixture-based figure (a Node TLS sink) stays in bench/db-tunnel-node-sink.ts.
 * memid runs under the Node flags `memid start` runs with (`AGENT_NODE_FLAGS`).
 */
import { execFileSync, spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { defaultWorkers } from '../src/config/agent.ts'
import { AGENT_NODE_FLAGS } from '../src/core/gc.ts'
import { fileURLToPath } from 'node:url'
import { sharedPeerOwners } from '../src/core/peer-owner.ts'
import {
  benchCa, benchLeaf, benchService, benchServiceDeps, compileNative, startAllThreads, cpuSeconds, ensurePackages, NGINX_PACKAGES, firstMessage, ForeignLoad, freePort, keyValues,
  machineLine, median, nginxVersion, startNginx, startRole, waitForPort, quietRounds, withBenchDir, writePem, type ClientMaterial,
} from './_common.ts'

const SELF = fileURLToPath(import.meta.url)

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '5' },
    rounds: { type: 'string', default: '3' },
    threads: { type: 'string', default: '8' },
    pings: { type: 'string', default: '5000' },
    'quiet-wait': { type: 'string', default: '10' },
    role: { type: 'string' },
    'peer-check': { type: 'string', default: 'on' },
    /** Which tests to run (all by default), e.g. `--tests ping` while profiling one. */
    tests: { type: 'string', default: 'conn,bulk,ping' },
    /** memid's worker threads, as `memid start --workers` (default: the agent's default). */
    workers: { type: 'string' },
  },
})

if (args.role === 'memid') await serveMemid()
else await main()

/**
 * Child: memid's tunnel with the credential the parent passes over IPC. `--peer-check off`
 * runs it with `allowed_users: ['*']` (no lookup of the connecting user), to price the check.
 */
async function serveMemid(): Promise<void> {
  const { dbTunnel } = await import('../src/services/db-tunnel/definition.ts')
  const m = await firstMessage<ClientMaterial>()
  const resolved = dbTunnel.fromOptions({
    type: 'database-tunnel', listen: '127.0.0.1:0', service: 'bench', username: 'bench', protocol: 'tls', maxConnections: 256, connectTimeoutMs: 5000,
    ...(args['peer-check'] === 'off' ? { allowedUsers: ['*'] } : {}),
  }, 'bench')
  const svc = await benchService(resolved, benchServiceDeps('db', 'bench', [], m), Number(args.workers))
  await startAllThreads(svc)
  process.send?.({ address: svc.address })
  process.on('SIGTERM', () => void svc.stop(100).then(() => process.exit(0)))
}

type Party = 'memid' | 'stunnel' | 'direct' | 'memid-nocheck'
interface Sample { rate: number; p50: number; p99: number; cpu: number }

async function main(): Promise<void> {
  ensurePackages([
    ...NGINX_PACKAGES,
    { cmd: 'stunnel4', pkg: 'stunnel4' },
    { cmd: 'cc', pkg: 'gcc' },
    { cmd: 'cc', pkg: 'libssl-dev', file: '/usr/include/openssl/ssl.h' },
  ])
  const seconds = Number(args.seconds)
  const rounds = Number(args.rounds)
  const threads = Number(args.threads)
  const pings = Number(args.pings)
  const quietWaitMs = Number(args['quiet-wait']) * 1000
  const serverCa = await benchCa('bench server CA')
  const clientCa = await benchCa('bench db-client CA')
  const server = await benchLeaf(serverCa, 'localhost', 'server', { ipAddresses: ['127.0.0.1'] })
  const memidClient = await benchLeaf(clientCa, 'bench', 'client')
  const stunnelClient = await benchLeaf(clientCa, 'bench', 'client')
  const directClient = await benchLeaf(clientCa, 'bench', 'client')

  await withBenchDir('memid-bench-db-', async (dir, own) => {
    const load = compileNative(dir, 'tunnel-load', ['-lssl', '-lcrypto'])
    // The native peers read keys from files: that is their requirement (in this private dir), not memid's.
    const f = writePem(dir, {
      'server.crt': server.certPem, 'server.key': server.keyPem, 'client-ca.pem': clientCa.certPem, 'server-ca.pem': serverCa.certPem,
      'stunnel-client.pem': stunnelClient.certPem + stunnelClient.keyPem, 'direct.crt': directClient.certPem, 'direct.key': directClient.keyPem,
    })

    const echoPort = await freePort()
    const echo = own(spawn(load, ['echo', String(echoPort)], { stdio: ['ignore', 'ignore', 'pipe'] }))
    await waitForPort(echoPort, echo, 'echo server')
    const tlsPort = await freePort()
    const nginx = own(await startNginx(dir, 'nginx-db', [
      'stream {', "  log_format resumed '$ssl_session_reused';", `  access_log ${path.join(dir, 'stream-access.log')} resumed;`, '  server {', `    listen 127.0.0.1:${tlsPort} ssl;`, '    tcp_nodelay on;',
      `    ssl_certificate ${f['server.crt']};`, `    ssl_certificate_key ${f['server.key']};`,
      `    ssl_client_certificate ${f['client-ca.pem']};`, '    ssl_verify_client on;', '    ssl_protocols TLSv1.2 TLSv1.3;',
      '    ssl_session_cache shared:memid:10m;', '    ssl_session_tickets on;', '    proxy_half_close on;', `    proxy_pass 127.0.0.1:${echoPort};`, '  }', '}',
    ].join('\n'), tlsPort))

    // memid's tunnel in its own process, given the client credential over IPC; resolves to it and its port.
    const workers = args.workers ?? String(defaultWorkers())
    const startMemid = async (extra: string[] = []) => {
      const role = startRole(SELF, 'memid', ['--workers', workers, ...extra], AGENT_NODE_FLAGS)
      own(role.child)
      role.child.send({
        ...memidClient, serverCaPem: serverCa.certPem, uri: `tls://127.0.0.1:${tlsPort}`, host: '127.0.0.1', port: tlsPort,
      } satisfies ClientMaterial)
      return { memid: role, port: Number(String((await role.next()).address).split(':').pop()) }
    }
    const { memid, port: memidPort } = await startMemid()
    // The same tunnel without the connecting-user check, to show what the check costs.
    const { memid: nocheck, port: nocheckPort } = await startMemid(['--peer-check', 'off'])

    const stunnelPort = await freePort()
    const stunnelConf = writePem(dir, {
      'stunnel.conf': [
        'foreground = yes', 'pid =', 'debug = 3', 'socket = l:TCP_NODELAY=1', 'socket = r:TCP_NODELAY=1',
        '[bench]', 'client = yes', `accept = 127.0.0.1:${stunnelPort}`, `connect = 127.0.0.1:${tlsPort}`,
        `cert = ${f['stunnel-client.pem']}`, `CAfile = ${f['server-ca.pem']}`,
        'verifyChain = yes', 'checkIP = 127.0.0.1', 'sslVersionMin = TLSv1.2', '',
      ].join('\n'),
    })['stunnel.conf'] as string
    const stunnel = own(spawn('stunnel4', [stunnelConf], { stdio: ['ignore', 'ignore', 'pipe'] }))
    await waitForPort(stunnelPort, stunnel, 'stunnel4')

    const tlsEnv = { ...process.env, MEMID_TLS_CA: f['server-ca.pem'], MEMID_TLS_CERT: f['direct.crt'], MEMID_TLS_KEY: f['direct.key'] }
    const port: Record<Party, number> = { memid: memidPort, stunnel: stunnelPort, direct: tlsPort, 'memid-nocheck': nocheckPort }
    const pid: Record<Party, number | undefined> = { memid: memid.child.pid, stunnel: stunnel.pid, direct: nginx.pid, 'memid-nocheck': nocheck.child.pid }
    const run = (who: Party, mode: string, ...rest: string[]) => {
      const directPort = who === 'direct' && mode === 'bulk' ? echoPort : port[who]
      const env = who === 'direct' && mode !== 'bulk' ? tlsEnv : process.env
      return keyValues(execFileSync(load, [mode, String(directPort), ...rest], { encoding: 'utf8', env, timeout: (seconds + 60) * 1000 }))
    }
    const tests = {
      conn: (who: Party): Sample => {
        const c0 = cpuSeconds(pid[who])
        const r = run(who, 'conn', String(threads), String(seconds))
        return { rate: r.rate ?? 0, p50: (r.p50_us ?? 0) / 1000, p99: (r.p99_us ?? 0) / 1000, cpu: ((cpuSeconds(pid[who]) - c0) / (r.count ?? 1)) * 1e6 }
      },
      bulk: (who: Party): Sample => {
        const c0 = cpuSeconds(pid[who])
        const r = run(who, 'bulk', String(seconds))
        // Each byte crosses the tunnel twice (there and echoed back): CPU per GB carried counts both.
        return { rate: r.mb_s ?? 0, p50: NaN, p99: NaN, cpu: (cpuSeconds(pid[who]) - c0) / (((r.received ?? 0) * 2) / 1e9) }
      },
      ping: (who: Party): Sample => {
        const c0 = cpuSeconds(pid[who])
        const r = run(who, 'ping', String(pings))
        return { rate: NaN, p50: (r.p50_us ?? 0) / 1000, p99: (r.p99_us ?? 0) / 1000, cpu: ((cpuSeconds(pid[who]) - c0) / pings) * 1e6 }
      },
    }
    // Warm up (handshakes, JIT, session caches), and read from nginx's log which share of
    // each party's upstream handshakes resumed a TLS session ('r' per resumed connection).
    const accessLog = path.join(dir, 'stream-access.log')
    const logLines = () => (existsSync(accessLog) ? readFileSync(accessLog, 'utf8').split('\n').filter(Boolean) : [])
    const resumed: Partial<Record<Party, string>> = {}
    for (const who of ['memid', 'stunnel', 'direct', 'memid-nocheck'] as const) {
      const before = logLines().length
      tests.conn(who)
      const lines = logLines().slice(before)
      resumed[who] = `${((lines.filter((l) => l === 'r').length / Math.max(1, lines.length)) * 100).toFixed(0)}% of ${lines.length}`
      tests.ping(who)
    }

    const chosen = (['conn', 'bulk', 'ping'] as const).filter((t) => args.tests.split(',').includes(t))
    const samples: Record<keyof typeof tests, Record<Party, Sample[]>> = {
      conn: { memid: [], stunnel: [], direct: [], 'memid-nocheck': [] }, bulk: { memid: [], stunnel: [], direct: [], 'memid-nocheck': [] },
      ping: { memid: [], stunnel: [], direct: [], 'memid-nocheck': [] },
    }
    const checkPair: { on: Sample[]; off: Sample[] } = { on: [], off: [] }
    const foreign = new ForeignLoad(() => [memid.child.pid, nocheck.child.pid, stunnel.pid, nginx.pid, echo.pid])
    // memid and stunnel take turns going first; direct, the limit, always goes last.
    const waited = await quietRounds({
      rounds, quietWaitMs, foreign,
      round(r) {
        const order: Party[] = r % 2 === 0 ? ['memid', 'stunnel', 'direct'] : ['stunnel', 'memid', 'direct']
        for (const test of chosen) for (const who of order) samples[test][who].push(tests[test](who))
        // The check's price: on and off measured next to each other (on, off, off, on), so
        // that load from outside moves both alike; the ratio is taken per pair.
        if (chosen.includes('conn')) for (const who of ['memid', 'memid-nocheck', 'memid-nocheck', 'memid'] as const) checkPair[who === 'memid' ? 'on' : 'off'].push(tests.conn(who))
      },
    })

    const ms = (x: number) => (Number.isNaN(x) ? '–' : x < 1 ? `${(x * 1000).toFixed(0)} µs` : `${x.toFixed(1)} ms`)
    const show = (test: keyof typeof tests, title: string, unit: string, cpuUnit: string, directNote: string, target: string, higher: 'rate' | 'p50') => {
      console.log(`\n${title}`)
      const med: Partial<Record<Party, Sample>> = {}
      for (const who of ['memid', 'stunnel', 'direct'] as const) {
        const xs = samples[test][who]
        const m: Sample = { rate: median(xs.map((x) => x.rate)), p50: median(xs.map((x) => x.p50)), p99: median(xs.map((x) => x.p99)), cpu: median(xs.map((x) => x.cpu)) }
        med[who] = m
        const rate = Number.isNaN(m.rate) ? '' : `${m.rate.toFixed(0)} ${unit} (${xs.map((x) => x.rate.toFixed(0)).join(', ')})  `
        const cpu = who === 'direct' ? '' : `  ${who} CPU ${m.cpu.toFixed(test === 'bulk' ? 2 : 0)} ${cpuUnit}`
        const res = test === 'conn' ? `  upstream handshakes resumed in warm-up: ${resumed[who]}` : ''
        console.log(`  ${who.padEnd(8)} ${rate}p50 ${ms(m.p50)} p99 ${ms(m.p99)}${cpu}${who === 'direct' ? `   ${directNote}` : ''}${res}`)
      }
      const a = med.memid as Sample
      const b = med.stunnel as Sample
      const ratio = higher === 'rate' ? a.rate / b.rate : a.p50 / b.p50
      console.log(`  ratio memid/stunnel ${ratio.toFixed(2)}× ${higher === 'rate' ? unit : 'p50 RTT'} (${target}); CPU ${(a.cpu / b.cpu).toFixed(2)}× (lower is better)`)
    }
    console.log(`${machineLine()}; memid --workers ${workers}; nginx ${nginxVersion()} stream TLS (client cert required) → native echo; ${seconds}s per test × ${rounds} rounds, medians (per-round values in brackets)`)
    if (chosen.includes('conn')) show('conn', `new connections/s (connect, 64 B round trip, close; ${threads} client threads)`, 'conn/s', 'µs/conn', '(C client, TLS straight to nginx, full handshake each time)', 'target ≥ 1.0×', 'rate')
    const on = checkPair.on.map((x) => x.rate)
    const off = checkPair.off.map((x) => x.rate)
    const pairRatios = on.map((x, i) => x / (off[i] as number))
    if (chosen.includes('conn')) console.log(`  connecting-user check (peer lookup: ${sharedPeerOwners.method}), measured on/off/off/on each round: on ${median(on).toFixed(0)} conn/s (${on.map((x) => x.toFixed(0)).join(', ')}), ` +
      `off (allowed_users: ['*']) ${median(off).toFixed(0)} conn/s (${off.map((x) => x.toFixed(0)).join(', ')}); on/off ${median(pairRatios).toFixed(3)}× (target ≥ 0.95×); ` +
      `memid CPU on ${median(checkPair.on.map((x) => x.cpu)).toFixed(0)} µs/conn, off ${median(checkPair.off.map((x) => x.cpu)).toFixed(0)} µs/conn`)
    if (chosen.includes('bulk')) show('bulk', 'bulk MB/s each way (one connection, echo)', 'MB/s', 's/GB', '(plain TCP to the echo server: loopback ceiling, no TLS)', 'target ≥ 1.2×', 'rate')
    if (chosen.includes('ping')) show('ping', `64 B ping-pong on one connection (${pings} round trips)`, '', 'µs/round trip', '(C client, TLS straight to nginx)', 'target ≤ 1.0×, lower is better', 'p50')
    console.log(`\nother load on the machine during the rounds: ${(foreign.share * 100).toFixed(0)}% of both cores (waited ${waited.toFixed(0)} s for quiet)`)
  })
}
