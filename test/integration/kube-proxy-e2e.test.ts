/**
 * Issue 6, end to end: a real `memid auth start` with the test API server registered by
 * `memid kube add` (the server trusts `memid auth export --kind kube-client --cluster prod`), a real
 * `memid start --kube-proxy` joined to it, `memid kubeconfig` saved to a file, and the real
 * kubectl: no kubeconfig secret anywhere on the client side.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import path from 'node:path'
import { parse } from 'yaml'
import { startAuth, startAgent, eventually, tempDir, type AuthFixture, type AgentFixture } from '../fixtures/memid.ts'
import { startKubeApiServer, type KubeApiServer } from '../fixtures/kube-apiserver.ts'
import { kubectl, KubectlProcess, requireKubectl, type KubectlOptions } from '../fixtures/kube-client.ts'

/** Short enough that renewals and expiry happen within the test, long enough for slow CI. */
const TTL = '10s'
const RENEWAL = '3s'

describe('kubectl through the memid agent, end to end', () => {
  let auth: AuthFixture
  let agent: AgentFixture
  let srv: KubeApiServer
  let tmp: { dir: string; cleanup: () => void }
  let k: KubectlOptions
  let proxyUrl: URL

  const kubeStatus = async () => ((await agent.status()).services as Record<string, any>[]).find((s) => s.name === 'kube-proxy:prod') as Record<string, any>

  before(async () => {
    requireKubectl()
    auth = await startAuth()
    srv = await startKubeApiServer({})
    srv.addPod('web-1')
    tmp = tempDir('memid-kube-e2e-')
    const caFile = path.join(tmp.dir, 'apiserver-ca.pem')
    writeFileSync(caFile, srv.caPem)
    const added = await auth.cli(['kube', 'add', 'prod', '--server', srv.url, '--ca-file', caFile])
    assert.equal(added.code, 0, added.stderr)
    // The API server trusts prod's own client CA, which `kube add` created.
    const exported = await auth.cli(['auth', 'export', '--kind', 'kube-client', '--cluster', 'prod'])
    assert.equal(exported.code, 0, exported.stderr)
    srv.setClientCa(exported.stdout)
    const token = await auth.bot('kbot', ['--kube-clusters', 'prod', '--kube-users', 'ci-deployer', '--kube-groups', 'deployers,viewers'])
    agent = startAgent({
      auth, token, dir: path.join(tmp.dir, 'agent'),
      args: ['--certificate-ttl', TTL, '--renewal-interval', RENEWAL, '--kube-proxy', '127.0.0.1:0=prod'],
    })
    await agent.ready
    const kc = await agent.cli(['kubeconfig'])
    assert.equal(kc.code, 0, kc.stderr)
    const file = path.join(tmp.dir, 'memid.kubeconfig')
    writeFileSync(file, kc.stdout)
    const home = path.join(tmp.dir, 'home')
    k = { home, env: { KUBECONFIG: file } }
    proxyUrl = new URL((parse(kc.stdout) as any).clusters[0].cluster.server)
  })

  after(async () => {
    await agent?.stop()
    await auth?.stop()
    await srv?.stop()
    tmp?.cleanup()
  })

  it('memid kubeconfig names the local proxy and carries no secret', async () => {
    const kc = await agent.cli(['kubeconfig'])
    const doc = parse(kc.stdout) as any
    assert.equal(doc['current-context'], 'prod')
    assert.match(doc.clusters[0].cluster.server, /^http:\/\/127\.0\.0\.1:\d+$/)
    assert.doesNotMatch(kc.stdout, /BEGIN|certificate-authority-data|client-key|token/i)
  })

  it('kubectl auth whoami shows the bot\'s kube user and groups from the roles', async () => {
    const r = await kubectl(['auth', 'whoami'], k)
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /Username\s+ci-deployer/)
    assert.match(r.stdout, /Groups\s+\[deployers viewers system:authenticated\]/)
    // A renewal (every 3 s) may land while kubectl runs: the serial the server saw is one
    // the agent was issued, not necessarily the one it holds now.
    const issued = agent.process.stderr.split('\n').filter((l) => l.includes('"service certificate issued"') && l.includes('kube-proxy:prod'))
      .map((l) => BigInt(`0x${(JSON.parse(l) as { serial: string }).serial}`))
    assert.ok(issued.includes(BigInt(`0x${srv.requests.at(-1)?.serial}`)), 'the serial the API server saw is one the agent was issued')
  })

  it('kubectl get pods lists', async () => {
    const r = await kubectl(['get', 'pods'], k)
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /^web-1\s+1\/1\s+Running/m)
  })

  it('kubectl exec POD -- echo hi prints hi', async () => {
    const r = await kubectl(['exec', 'web-1', '--', 'echo', 'hi'], k)
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.stdout, 'hi\n')
  })

  it('kubectl get pods --watch keeps receiving across a renewal, and new requests carry the new serial', async () => {
    const watch = new KubectlProcess(['get', 'pods', '--watch'], k)
    try {
      await watch.waitFor(/^web-1\s/m)
      const before = (await kubeStatus()).serial as string
      // kubectl prints the list before it opens the watch: add the pod once the watch is open.
      await eventually(() => srv.activeWatches > 0, 10_000, 'the watch open at the API server')
      srv.addPod('before-renewal')
      await watch.waitFor(/^before-renewal\s/m)
      const renewed = await eventually(async () => {
        const s = (await kubeStatus()).serial as string
        return s !== before ? s : undefined
      }, 20_000, 'a kube certificate renewal')
      srv.addPod('after-renewal')
      await watch.waitFor(/^after-renewal\s/m)
      assert.equal(watch.child.exitCode, null)
      const r = await kubectl(['get', 'pod', 'after-renewal', '-o', 'name'], k)
      assert.equal(r.code, 0, r.stderr)
      const last = srv.requests.at(-1)
      assert.equal(last?.path, '/api/v1/namespaces/default/pods/after-renewal')
      // Renewals continue in the background; the request used the renewed certificate or a later one.
      assert.notEqual(last?.serial, before)
      assert.ok(srv.connectionSerials.includes(renewed))
    } finally {
      await watch.stop()
    }
  })

  it('refuses a foreign Host header; oversized headers and garbage bytes never crash the agent', async () => {
    const foreign = await new Promise<number>((resolve, reject) => {
      http.get({ host: proxyUrl.hostname, port: proxyUrl.port, path: '/api/v1/namespaces/default/pods', headers: { host: 'rebind.attacker.test' }, agent: false }, (res) => {
        res.resume()
        resolve(res.statusCode ?? 0)
      }).on('error', reject)
    })
    assert.equal(foreign, 403)
    const send = (bytes: string | Buffer) => new Promise<string>((resolve) => {
      const s = net.connect(Number(proxyUrl.port), proxyUrl.hostname)
      let out = ''
      s.on('data', (d) => (out += d.toString('latin1')))
      s.on('error', () => undefined)
      s.on('close', () => resolve(out))
      s.write(bytes)
      setTimeout(() => s.destroy(), 3000).unref()
    })
    assert.match(await send(`GET /api HTTP/1.1\r\nHost: localhost\r\nX-Big: ${'x'.repeat(64 * 1024)}\r\n\r\n`), /^HTTP\/1\.1 431 /)
    await Promise.all(Array.from({ length: 10 }, (_, i) => send(Buffer.from(Array.from({ length: 200 + i * 100 }, (_, j) => (j * 13 + i) % 256)))))
    assert.match(await send('POST /api HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n'), /^HTTP\/1\.1 (400|502) |^$/)
    assert.equal(agent.process.proc.exitCode, null, 'the agent is still running')
    const r = await kubectl(['get', 'pods', '-o', 'name'], k)
    assert.equal(r.code, 0, r.stderr)
  })

  it('after expiry with the auth service down, kubectl shows the 503 Status message', async () => {
    await auth.stop()
    await eventually(async () => ((await kubeStatus()).status !== 'ok' ? true : undefined), 30_000, 'the kube proxy to fail closed')
    const seen = srv.requests.length
    const r = await kubectl(['get', 'pods'], k)
    assert.equal(r.code, 1)
    assert.match(r.stderr, /Error from server \(ServiceUnavailable\): memid: .*expired at \S+ and could not be renewed/)
    // With kubectl's discovery cache cold, the cause arrives as a warning on the discovery request.
    const cold = await kubectl(['get', 'pods'], { ...k, home: path.join(tmp.dir, 'cold-home') })
    assert.equal(cold.code, 1)
    assert.match(cold.stderr, /Warning: memid: .*expired at \S+ and could not be renewed/)
    assert.equal(srv.requests.length, seen, 'no request reached the API server')
  })
})
