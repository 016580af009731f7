/**
 * Requests per second through memid's kube proxy versus `kubectl proxy`, on the same run,
 * against the same Kubernetes-API test server (mutual TLS, HTTP/2 offered), with the same
 * load generator (wrk). Each party runs in its own process. Prints both rates and the ratio
 * (target: memid ≥ 1.2× kubectl proxy).
 *
 *   node bench/kube-proxy.ts [--seconds 5] [--connections 16] [--rounds 3] [--path /api/v1/namespaces/default/pods/p1]
 *                            [--upstream auto|http/1.1]
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const SELF = fileURLToPath(import.meta.url)

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '5' },
    connections: { type: 'string', default: '16' },
    rounds: { type: 'string', default: '3' },
    path: { type: 'string', default: '/api/v1/namespaces/default/pods/p1' },
    upstream: { type: 'string', default: 'auto' },
    role: { type: 'string' },
  },
})

interface ClientMaterial {
  url: string
  host: string
  port: number
  serverCaPem: string
  certPem: string
  keyPem: string
}

if (args.role === 'apiserver') await serveApiServer()
else if (args.role === 'memid') await serveMemid()
else await main()

/** Child: the test API server, plus two client certificates (one per proxy) sent to the parent. */
async function serveApiServer(): Promise<void> {
  const { generateKeyPairSync } = await import('node:crypto')
  const { createCaCertificate, issueLeaf } = await import('../src/pki/x509.ts')
  const { startKubeApiServer } = await import('../test/fixtures/kube-apiserver.ts')
  const ca = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const caPem = await createCaCertificate(ca.privateKey, ca.publicKey, 'bench kube-client CA', 3600_000)
  const srv = await startKubeApiServer({ clientCaPem: caPem })
  srv.addPod('p1')
  const issue = async (user: string): Promise<ClientMaterial> => {
    const k = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const leaf = await issueLeaf({ ca: { key: ca.privateKey, certPem: caPem }, publicKey: k.publicKey, commonName: user, organizations: ['bench'], ttlMs: 3600_000, usage: 'client' })
    return { url: srv.url, host: srv.host, port: srv.port, serverCaPem: srv.caPem, certPem: leaf.pem, keyPem: k.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string }
  }
  process.send?.({ memid: await issue('bench-memid'), kubectl: await issue('bench-kubectl') })
  process.on('SIGTERM', () => void srv.stop().then(() => process.exit(0)))
}

/** Child: memid's kube proxy with the credential the parent passes over IPC. */
async function serveMemid(): Promise<void> {
  const { createPrivateKey } = await import('node:crypto')
  const { Registry } = await import('prom-client')
  const { CredentialSource } = await import('../src/agent/credentials.ts')
  const { silentLogger } = await import('../src/core/log.ts')
  const { systemClock } = await import('../src/core/clock.ts')
  const { buildClientContext } = await import('../src/pki/tls-context.ts')
  const { certificateSerial } = await import('../src/pki/x509.ts')
  const { createKubeProxyService } = await import('../src/services/kube-proxy/index.ts')
  const m = await new Promise<ClientMaterial>((resolve) => process.once('message', (msg) => resolve(msg as ClientMaterial)))
  const privateKey = createPrivateKey(m.keyPem)
  const source = new CredentialSource<import('../src/agent/credentials.ts').TlsClientCredential>('bench')
  source.set({
    kind: 'kube', privateKey, certificatePem: m.certPem, user: 'bench-memid', groups: ['bench'],
    secureContext: buildClientContext({ key: privateKey, certPem: m.certPem, caPem: m.serverCaPem }),
    upstream: { name: 'bench', uri: m.url, host: m.host, port: m.port, caPem: m.serverCaPem },
    serial: certificateSerial(m.certPem), notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3600_000),
  })
  const svc = createKubeProxyService(
    { listen: '127.0.0.1:0', cluster: 'bench', upstreamProtocol: args.upstream === 'http/1.1' ? 'http/1.1' : 'auto' },
    { credentials: source, logger: silentLogger(), clock: systemClock, metrics: new Registry() },
  )
  await svc.start()
  process.send?.({ address: svc.address })
  process.on('SIGTERM', () => void svc.stop(100).then(() => process.exit(0)))
}

function fork(role: string, extra: string[] = []): { child: ChildProcess; message: Promise<unknown> } {
  const prof = role === 'memid' && process.env.MEMID_BENCH_CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.MEMID_BENCH_CPU_PROF] : []
  const child = spawn(process.execPath, [...prof, SELF, '--role', role, ...extra], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const message = new Promise<unknown>((resolve, reject) => {
    child.once('message', resolve)
    child.once('exit', (code) => reject(new Error(`${role} exited early (${code})`)))
  })
  return { child, message }
}

function requireTool(cmd: string, install: string): void {
  try {
    execFileSync(cmd, ['--version'], { stdio: 'ignore' })
  } catch (err) {
    // wrk --version exits 1 after printing; only a missing binary matters.
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`${cmd} is required: ${install}`)
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
  requireTool('kubectl', 'install kubectl >= 1.30 into /usr/bin/kubectl')
  const seconds = Number(args.seconds)
  const connections = Number(args.connections)
  const rounds = Number(args.rounds)
  const dir = mkdtempSync(path.join(tmpdir(), 'memid-bench-kube-'))
  chmodSync(dir, 0o700)
  const children: ChildProcess[] = []
  try {
    const api = fork('apiserver')
    children.push(api.child)
    const material = (await api.message) as { memid: ClientMaterial; kubectl: ClientMaterial }

    const memid = fork('memid', ['--upstream', String(args.upstream)])
    children.push(memid.child)
    memid.child.send(material.memid)
    const memidUrl = `http://${((await memid.message) as { address: string }).address}${args.path}`

    // kubectl proxy reads its client certificate from a kubeconfig: that file is the peer's
    // requirement (and this bench's temp dir), not memid's.
    const k = material.kubectl
    const b64 = (s: string) => Buffer.from(s).toString('base64')
    const kubeconfig = path.join(dir, 'kubeconfig')
    writeFileSync(kubeconfig, [
      'apiVersion: v1', 'kind: Config', 'current-context: bench',
      `clusters: [{name: bench, cluster: {server: "${k.url}", certificate-authority-data: ${b64(k.serverCaPem)}}}]`,
      `users: [{name: bench, user: {client-certificate-data: ${b64(k.certPem)}, client-key-data: ${b64(k.keyPem)}}}]`,
      'contexts: [{name: bench, context: {cluster: bench, user: bench}}]', '',
    ].join('\n'), { mode: 0o600 })
    const kp = spawn('kubectl', ['proxy', '--port=0', '--kubeconfig', kubeconfig], { env: { PATH: process.env.PATH, HOME: dir }, stdio: ['ignore', 'pipe', 'ignore'] })
    children.push(kp)
    const kubectlUrl = await new Promise<string>((resolve, reject) => {
      let out = ''
      kp.stdout.on('data', (d: Buffer) => {
        out += d.toString()
        const m = /Starting to serve on ([\d.:[\]]+)/.exec(out)
        if (m) resolve(`http://${m[1]}${args.path}`)
      })
      kp.once('exit', (code) => reject(new Error(`kubectl proxy exited (${code}): ${out}`)))
    })

    // Warm both (TLS handshakes, h2 sessions, JIT) before measuring.
    wrk(memidUrl, 1, connections)
    wrk(kubectlUrl, 1, connections)
    const memidRates: number[] = []
    const kubectlRates: number[] = []
    // CPU per request of the proxy and of the API server behind it, summed over the rounds.
    const cpu = { memid: 0, memidApi: 0, memidReqs: 0, kubectl: 0, kubectlApi: 0, kubectlReqs: 0 }
    const run = (url: string, proxyPid: number | undefined, key: 'memid' | 'kubectl') => {
      const p0 = cpuSeconds(proxyPid)
      const a0 = cpuSeconds(api.child.pid)
      const rate = wrk(url, seconds, connections)
      cpu[key] += cpuSeconds(proxyPid) - p0
      cpu[`${key}Api`] += cpuSeconds(api.child.pid) - a0
      cpu[`${key}Reqs`] += rate * seconds
      return rate
    }
    for (let r = 0; r < rounds; r++) {
      memidRates.push(run(memidUrl, memid.child.pid, 'memid'))
      kubectlRates.push(run(kubectlUrl, kp.pid, 'kubectl'))
    }
    // Rounds alternate between the two so background load hits both alike; the median is reported.
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number
    const m = median(memidRates)
    const kc = median(kubectlRates)
    console.log(`path ${args.path}, ${connections} connections, ${seconds}s × ${rounds} rounds, memid upstream ${args.upstream}`)
    console.log(`memid kube proxy : ${m.toFixed(0)} req/s median (rounds: ${memidRates.map((x) => x.toFixed(0)).join(', ')})`)
    console.log(`kubectl proxy    : ${kc.toFixed(0)} req/s median (rounds: ${kubectlRates.map((x) => x.toFixed(0)).join(', ')})`)
    const us = (sec: number, n: number) => `${((sec / n) * 1e6).toFixed(0)} µs`
    console.log(`CPU per request  : memid ${us(cpu.memid, cpu.memidReqs)} (API server behind it ${us(cpu.memidApi, cpu.memidReqs)}), ` +
      `kubectl proxy ${us(cpu.kubectl, cpu.kubectlReqs)} (API server behind it ${us(cpu.kubectlApi, cpu.kubectlReqs)})`)
    console.log(`ratio memid/kubectl: ${(m / kc).toFixed(2)}×  (target ≥ 1.2×)`)
  } finally {
    for (const c of children) c.kill('SIGTERM')
    rmSync(dir, { recursive: true, force: true })
  }
}
