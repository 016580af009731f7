/**
 * Second figure, fixture upstream (a Node stand-in, not native; bench/kube-proxy.ts is the
 * main figure against nginx). Requests per second through memid's kube proxy versus `kubectl proxy`, on the same run,
 * against the same Kubernetes-API stand-in (`bench/_kube-apiserver.ts`: mutual TLS, HTTP/2
 * offered), with the same load generator (wrk). Each party runs in its own process. Prints both rates, the CPU
 * time each proxy (and the API server behind it) spent per request, and the ratio
 * (target: memid ≥ 1.2× kubectl proxy).
 *
 *   node bench/kube-proxy-fixture.ts [--seconds 5] [--connections 16] [--rounds 5] [--quiet-wait 60]
 *                            [--path /api/v1/namespaces/default/pods/p1] [--pods 1]
 *
 * `--pods 3000 --path /api/v1/namespaces/default/pods --connections 4` measures big list
 * responses (~1.5 MB each) instead of small GETs.
 *
 * Rounds alternate which proxy goes first and start once the machine is otherwise idle
 * (waiting up to --quiet-wait seconds); medians are reported, and the ratio is the median
 * of the per-round ratios (each round compares the two under the same background load).
 */
import { execFileSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import {
  alternateRounds, benchCa, benchLeaf, benchServiceDeps, cpuSeconds, firstMessage, ForeignLoad, machineLine, median, requireTool,
  startKubectlProxy, startRole, withBenchDir, type ClientMaterial,
} from './_common.ts'

const SELF = fileURLToPath(import.meta.url)

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '5' },
    connections: { type: 'string', default: '16' },
    rounds: { type: 'string', default: '5' },
    'quiet-wait': { type: 'string', default: '60' },
    path: { type: 'string', default: '/api/v1/namespaces/default/pods/p1' },
    pods: { type: 'string', default: '1' },
    role: { type: 'string' },
  },
})

if (args.role === 'apiserver') await serveApiServer()
else if (args.role === 'memid') await serveMemid()
else await main()

/** Child: the test API server, plus two client certificates (one per proxy) sent to the parent. */
async function serveApiServer(): Promise<void> {
  const { startBenchApiServer } = await import('./_kube-apiserver.ts')
  const ca = await benchCa('bench kube-client CA')
  const srv = await startBenchApiServer(ca.certPem, Number(args.pods))
  const issue = async (user: string): Promise<ClientMaterial> => ({
    ...await benchLeaf(ca, user, 'client', { organizations: ['bench'] }),
    serverCaPem: srv.caPem, uri: srv.url, host: srv.host, port: srv.port,
  })
  process.send?.({ memid: await issue('bench-memid'), kubectl: await issue('bench-kubectl') })
  process.on('SIGTERM', () => void srv.stop().then(() => process.exit(0)))
}

/** Child: memid's kube proxy with the credential the parent passes over IPC. */
async function serveMemid(): Promise<void> {
  const { createKubeProxyService } = await import('../src/services/kube-proxy/index.ts')
  const m = await firstMessage<ClientMaterial>()
  const svc = createKubeProxyService(
    { listen: '127.0.0.1:0', cluster: 'bench' },
    benchServiceDeps('kube', 'bench-memid', ['bench'], m),
  )
  await svc.start()
  process.send?.({ address: svc.address })
  process.on('SIGTERM', () => void svc.stop(100).then(() => process.exit(0)))
}

/** One wrk run; returns requests per second (non-2xx answers make the run fail). */
function wrk(url: string, seconds: number, connections: number): number {
  const out = execFileSync('wrk', ['-t', '1', '-c', String(connections), '-d', `${seconds}s`, '--latency', url], { encoding: 'utf8' })
  if (/Non-2xx or 3xx responses/.test(out)) throw new Error(`errors during the run against ${url}:\n${out}`)
  const m = /Requests\/sec:\s+([\d.]+)/.exec(out)
  if (m === null) throw new Error(`cannot read wrk output:\n${out}`)
  return Number(m[1])
}

async function main(): Promise<void> {
  requireTool('wrk', 'apt-get install -y wrk')
  requireTool('kubectl', 'install kubectl >= 1.30 into /usr/bin/kubectl', ['version', '--client'])
  const seconds = Number(args.seconds)
  const connections = Number(args.connections)
  const rounds = Number(args.rounds)
  const quietWaitMs = Number(args['quiet-wait']) * 1000

  await withBenchDir('memid-bench-kube-', async (dir, own) => {
    const api = startRole(SELF, 'apiserver', ['--pods', String(args.pods)])
    own(api.child)
    const material = (await api.next()) as unknown as { memid: ClientMaterial; kubectl: ClientMaterial }

    const memid = startRole(SELF, 'memid', [])
    own(memid.child)
    memid.child.send(material.memid)
    const memidUrl = `http://${String((await memid.next()).address)}${args.path}`
    const kp = await startKubectlProxy(dir, material.kubectl)
    own(kp.child)
    const kubectlUrl = `${kp.url}${args.path}`

    // Warm both (TLS handshakes, h2 sessions, JIT) before measuring.
    wrk(memidUrl, 1, connections)
    wrk(kubectlUrl, 1, connections)
    const parties = {
      memid: { url: memidUrl, pid: memid.child.pid, rates: [] as number[], usPerReq: [] as number[], apiUsPerReq: [] as number[] },
      kubectl: { url: kubectlUrl, pid: kp.child.pid, rates: [] as number[], usPerReq: [] as number[], apiUsPerReq: [] as number[] },
    }
    const run = (who: 'memid' | 'kubectl') => {
      const p = parties[who]
      const p0 = cpuSeconds(p.pid)
      const a0 = cpuSeconds(api.child.pid)
      const rate = wrk(p.url, seconds, connections)
      p.rates.push(rate)
      p.usPerReq.push(((cpuSeconds(p.pid) - p0) / (rate * seconds)) * 1e6)
      p.apiUsPerReq.push(((cpuSeconds(api.child.pid) - a0) / (rate * seconds)) * 1e6)
    }
    const foreign = new ForeignLoad(() => [api.child.pid, memid.child.pid, kp.child.pid])
    const ratios = { rate: [] as number[], cpu: [] as number[] }
    const waited = await alternateRounds({
      rounds, quietWaitMs, parties: ['memid', 'kubectl'], foreign, measure: run,
      measured() {
        ratios.rate.push((parties.memid.rates.at(-1) as number) / (parties.kubectl.rates.at(-1) as number))
        ratios.cpu.push((parties.memid.usPerReq.at(-1) as number) / (parties.kubectl.usPerReq.at(-1) as number))
      },
    })
    const list = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(', ')
    const line = (who: 'memid' | 'kubectl') => {
      const p = parties[who]
      return `${(who === 'memid' ? 'memid kube proxy' : 'kubectl proxy').padEnd(16)} ${median(p.rates).toFixed(0)} req/s (${list(p.rates)})   ` +
        `CPU ${median(p.usPerReq).toFixed(0)} µs/request (${list(p.usPerReq)}), API server behind it ${median(p.apiUsPerReq).toFixed(0)} µs/request`
    }
    console.log(`${machineLine()}; path ${args.path}, ${connections} connections, ${seconds}s × ${rounds} rounds`)
    console.log(line('memid'))
    console.log(line('kubectl'))
    console.log(`other load on the machine during the rounds: ${(foreign.share * 100).toFixed(0)}% (waited ${waited.toFixed(0)} s for quiet)`)
    console.log(`ratio memid/kubectl (median of rounds): ${median(ratios.rate).toFixed(2)}× req/s (target ≥ 1.2×); CPU per request ${median(ratios.cpu).toFixed(2)}× (lower is better)`)
  })
}
