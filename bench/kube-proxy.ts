/**
 * memid's kube proxy versus `kubectl proxy` against a native upstream: nginx (one worker,
 * mutual TLS, HTTP/2 and HTTP/1.1 offered over ALPN as a kube-apiserver does), with wrk as
 * the load generator, so the proxy under test is what sets the pace. Per test it prints
 * memid, kubectl proxy, the direct-to-upstream limit (wrk to the same nginx locations over
 * plain HTTP: wrk cannot present a client certificate), the ratio, p50/p99 and the CPU
 * each proxy spent per request.
 *
 *   node bench/kube-proxy.ts [--seconds 5] [--connections 32] [--rounds 3] [--quiet-wait 10] [--workers N] [--tests small,stream]
 *
 * Tests: small GET (a ~1 KB PodList, one response body), and stream (a chunked response
 * of 32 × 1 KB chunks, each flushed on its own by nginx's echo module, as a watch delivers
 * events). The fixture-based figure (the Node test API server) stays in
 * bench/kube-proxy-fixture.ts.
 *
 * memid runs under the Node flags `memid start` runs with (`AGENT_NODE_FLAGS`: the small
 * young generation changes how often and how long the threads pause to collect), and each
 * memid row is followed by how wrk's connections were spread over memid's threads in each
 * round (the kernel hashes each new connection to one thread's listener).
 */
import { execFileSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { parseArgs } from 'node:util'
import { defaultWorkers } from '../src/config/agent.ts'
import { AGENT_NODE_FLAGS } from '../src/core/gc.ts'
import {
  acceptedSince, answerAccepted, benchCa, benchLeaf, benchService, benchServiceDeps, cpuSeconds, ensurePackages, NGINX_PACKAGES, firstMessage, ForeignLoad, freePort, machineLine, median, nginxVersion, startAllThreads,
  requireTool, startKubectlProxy, startNginx, startRole, quietRounds, withBenchDir, writePem, wrkLatencies, type ClientMaterial,
} from './_common.ts'

const SELF = fileURLToPath(import.meta.url)

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '5' },
    connections: { type: 'string', default: '32' },
    rounds: { type: 'string', default: '3' },
    'quiet-wait': { type: 'string', default: '10' },
    role: { type: 'string' },
    /** memid's worker threads, as `memid start --workers` (default: the agent's default). */
    workers: { type: 'string' },
    /** Which tests to run (a profile of one of them: MEMID_BENCH_CPU_PROF=DIR … --tests stream). */
    tests: { type: 'string', default: 'small,stream' },
  },
})

const SMALL_PATH = '/api/v1/namespaces/default/pods/p1'
const STREAM_PATH = '/api/v1/namespaces/default/pods?watch=true'
const TESTS = (['small', 'stream'] as const).filter((t) => (args.tests ?? '').split(',').includes(t))

if (args.role === 'memid') await serveMemid()
else await main()

/** Child: memid's kube proxy with the credential the parent passes over IPC. */
async function serveMemid(): Promise<void> {
  const { kubeProxy } = await import('../src/services/kube-proxy/definition.ts')
  const m = await firstMessage<ClientMaterial>()
  const resolved = kubeProxy.fromOptions({ type: 'kube-proxy', listen: '127.0.0.1:0', cluster: 'bench' }, 'bench')
  const svc = await benchService(resolved, benchServiceDeps('kube', 'bench-memid', ['bench'], m), Number(args.workers))
  await startAllThreads(svc)
  answerAccepted(svc)
  // MEMID_BENCH_ELD=1: how late the event loop ran over the whole bench (one loop: --workers 1).
  const eld = process.env.MEMID_BENCH_ELD ? monitorEventLoopDelay({ resolution: 1 }) : undefined
  eld?.enable()
  process.send?.({ address: svc.address })
  process.on('SIGTERM', () => {
    const ms = (ns: number) => (ns / 1e6).toFixed(1)
    if (eld) console.error(`memid event-loop delay: p50 ${ms(eld.percentile(50))} ms, p99 ${ms(eld.percentile(99))} ms, max ${ms(eld.max)} ms`)
    void svc.stop(100).then(() => process.exit(0))
  })
}

/** A ~1 KB PodList, the body of the small GET. */
function podList(): string {
  const item = (i: number) => ({ metadata: { name: `p${i}`, namespace: 'default', uid: `00000000-0000-0000-0000-00000000000${i}`, resourceVersion: '1' }, spec: { containers: [{ name: 'c', image: 'busybox' }] } })
  return JSON.stringify({ kind: 'PodList', apiVersion: 'v1', metadata: { resourceVersion: '1' }, items: [1, 2, 3, 4, 5].map(item) })
}

/** The nginx locations both the mTLS and the plain listener serve. */
function locations(dir: string): string {
  writeFileSync(path.join(dir, 'podlist.json'), podList())
  // 1023 characters and echo's newline: one 1 KB watch event per chunk.
  const event = `{"type":"MODIFIED","object":{"kind":"Pod","metadata":{"name":"p1","pad":"${'x'.repeat(1023 - 63)}"}}}`
  return [
    `    location = ${SMALL_PATH} { default_type application/json; alias ${path.join(dir, 'podlist.json')}; }`,
    `    location = /api/v1/namespaces/default/pods { default_type application/json; ${`echo '${event}'; echo_flush; `.repeat(32)}}`,
  ].join('\n')
}

async function main(): Promise<void> {
  ensurePackages([
    ...NGINX_PACKAGES,
    { cmd: 'wrk', pkg: 'wrk' },
  ])
  requireTool('kubectl', 'install kubectl >= 1.30 into /usr/bin/kubectl', ['version', '--client'])
  const seconds = Number(args.seconds)
  const connections = Number(args.connections)
  const rounds = Number(args.rounds)
  const quietWaitMs = Number(args['quiet-wait']) * 1000
  const serverCa = await benchCa('bench server CA')
  const clientCa = await benchCa('bench kube-client CA')
  const server = await benchLeaf(serverCa, 'localhost', 'server', { ipAddresses: ['127.0.0.1'] })

  await withBenchDir('memid-bench-kube-', async (dir, own) => {
    const f = writePem(dir, { 'server.crt': server.certPem, 'server.key': server.keyPem, 'client-ca.pem': clientCa.certPem })
    const tlsPort = await freePort()
    const plainPort = await freePort()
    const nginx = own(await startNginx(dir, 'nginx-kube', [
      'http {', '  access_log off;', `  client_body_temp_path ${dir};`, '  keepalive_requests 1000000;', '  tcp_nodelay on;',
      '  server {', `    listen 127.0.0.1:${tlsPort} ssl http2;`,
      `    ssl_certificate ${f['server.crt']};`, `    ssl_certificate_key ${f['server.key']};`,
      `    ssl_client_certificate ${f['client-ca.pem']};`, '    ssl_verify_client on;', '    ssl_protocols TLSv1.2 TLSv1.3;',
      '    http2_max_requests 1000000;', locations(dir), '  }',
      '  server {', `    listen 127.0.0.1:${plainPort};`, locations(dir), '  }', '}',
    ].join('\n'), tlsPort))
    const uri = `https://127.0.0.1:${tlsPort}`
    const material = async (user: string): Promise<ClientMaterial> => ({
      ...await benchLeaf(clientCa, user, 'client', { organizations: ['bench'] }), serverCaPem: serverCa.certPem, uri, host: '127.0.0.1', port: tlsPort,
    })

    const workers = args.workers ?? String(defaultWorkers())
    const memid = startRole(SELF, 'memid', ['--workers', workers], AGENT_NODE_FLAGS)
    own(memid.child)
    memid.child.send(await material('bench-memid'))
    const memidBase = `http://${String((await memid.next()).address)}`
    const kp = await startKubectlProxy(dir, await material('bench-kubectl'))
    own(kp.child)

    type Party = 'memid' | 'kubectl' | 'direct'
    const base: Record<Party, string> = { memid: memidBase, kubectl: kp.url, direct: `http://127.0.0.1:${plainPort}` }
    const pid: Record<Party, number | undefined> = { memid: memid.child.pid, kubectl: kp.child.pid, direct: nginx.pid }
    interface Sample { rate: number; p50: number; p99: number; cpu: number; split?: string }
    const tests = { small: SMALL_PATH, stream: STREAM_PATH }
    const samples: Record<keyof typeof tests, Record<Party, Sample[]>> = {
      small: { memid: [], kubectl: [], direct: [] }, stream: { memid: [], kubectl: [], direct: [] },
    }
    let accepted: number[] = []
    const measure = (test: keyof typeof tests, who: Party, secs = seconds): Sample => {
      const c0 = cpuSeconds(pid[who])
      const out = wrk(`${base[who]}${tests[test]}`, secs, connections)
      return { ...out, cpu: ((cpuSeconds(pid[who]) - c0) / (out.rate * secs)) * 1e6 }
    }
    /** memid's run, with how its threads shared wrk's connections. */
    const measureMemid = async (test: keyof typeof tests, secs = seconds): Promise<Sample> => {
      const sample = measure(test, 'memid', secs)
      const { now, split } = await acceptedSince(memid, accepted)
      accepted = now
      return { ...sample, split }
    }
    // Warm up: TLS handshakes, upstream connections, JIT.
    for (const who of ['memid', 'kubectl', 'direct'] as const) for (const test of TESTS) measure(test, who, 1)
    accepted = (await acceptedSince(memid, [])).now

    const foreign = new ForeignLoad(() => [memid.child.pid, kp.child.pid, nginx.pid])
    // memid and kubectl proxy take turns going first; direct, the limit, always goes last.
    const waited = await quietRounds({
      rounds, quietWaitMs, foreign,
      async round(r) {
        const order: Party[] = r % 2 === 0 ? ['memid', 'kubectl', 'direct'] : ['kubectl', 'memid', 'direct']
        for (const test of TESTS) for (const who of order) samples[test][who].push(who === 'memid' ? await measureMemid(test) : measure(test, who))
      },
    })

    console.log(`${machineLine()}; memid --workers ${workers}; nginx ${nginxVersion()} (mTLS, h2 + http/1.1 offered); wrk -t1 -c${connections} -d${seconds}s × ${rounds} rounds, medians (per-round values in brackets)`)
    const titles = { small: `small GET ${SMALL_PATH} (~1 KB PodList)`, stream: `stream ${STREAM_PATH} (32 × 1 KB chunks per response)` }
    for (const test of TESTS) {
      console.log(`\n${titles[test]}`)
      const med: Partial<Record<Party, Sample>> = {}
      for (const who of ['memid', 'kubectl', 'direct'] as const) {
        const xs = samples[test][who]
        const m = { rate: median(xs.map((x) => x.rate)), p50: median(xs.map((x) => x.p50)), p99: median(xs.map((x) => x.p99)), cpu: median(xs.map((x) => x.cpu)) }
        med[who] = m
        const cpu = who === 'direct' ? '   (wrk straight to nginx over plain HTTP: the upstream limit)' : `  CPU ${m.cpu.toFixed(0)} µs/request`
        console.log(`  ${who.padEnd(8)} ${m.rate.toFixed(0)} req/s (${xs.map((x) => x.rate.toFixed(0)).join(', ')})  p50 ${m.p50.toFixed(2)} ms p99 ${m.p99.toFixed(2)} ms (${xs.map((x) => x.p99.toFixed(1)).join(', ')})${cpu}`)
        if (who === 'memid' && xs[0]?.split?.includes('/')) console.log(`           wrk's connections per memid thread: ${xs.map((x) => x.split).join(', ')}`)
      }
      const a = med.memid as Sample
      const b = med.kubectl as Sample
      console.log(`  ratio memid/kubectl ${(a.rate / b.rate).toFixed(2)}× req/s (target ${test === 'small' ? '≥ 1.2×' : '≥ 1.0×'}), p99 ${(a.p99 / b.p99).toFixed(2)}× (target ≤ 1.0×), CPU per request ${(a.cpu / b.cpu).toFixed(2)}×`)
    }
    console.log(`\nother load on the machine during the rounds: ${(foreign.share * 100).toFixed(0)}% of both cores (waited ${waited.toFixed(0)} s for quiet)`)
  })
}

/** One wrk run: requests per second and latency percentiles (non-2xx answers make the run fail). */
function wrk(url: string, seconds: number, connections: number): { rate: number; p50: number; p99: number } {
  const out = execFileSync('wrk', ['-t', '1', '-c', String(connections), '-d', `${seconds}s`, '--latency', url], { encoding: 'utf8' })
  if (/Non-2xx or 3xx responses/.test(out)) throw new Error(`errors during the run against ${url}:\n${out}`)
  const m = /Requests\/sec:\s+([\d.]+)/.exec(out)
  if (m === null) throw new Error(`cannot read wrk output:\n${out}`)
  return { rate: Number(m[1]), ...wrkLatencies(out) }
}
