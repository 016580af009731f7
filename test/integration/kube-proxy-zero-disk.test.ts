/**
 * Invariant 1 for the kube proxy: an agent that joins, serves kubectl (discovery, list, a
 * watch held open across renewals, exec over WebSocket and SPDY) through its kube proxy,
 * renews its kube certificate several times and shuts down, traced with `strace -f`,
 * opens no file for writing and creates none other than its unix sockets (and their 0700
 * directories). The proxy runs on two worker threads, which must not write either.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { startAuth, startAgent, eventually, tempDir, type AuthFixture, type AgentFixture } from '../fixtures/memid.ts'
import { startKubeApiServer, type KubeApiServer } from '../fixtures/kube-apiserver.ts'
import { kubectl, KubectlProcess, requireKubectl, type KubectlOptions } from '../fixtures/kube-client.ts'
import { diskWrites, requireStrace, signalTraced, straceArgs, traceSawRead } from '../fixtures/zero-disk.ts'

describe('zero disk: an agent serving the kube proxy writes nothing', () => {
  const strace = requireStrace()
  let auth: AuthFixture
  let agent: AgentFixture
  let srv: KubeApiServer
  let tmp: { dir: string; cleanup: () => void }
  let trace: string
  let k: KubectlOptions

  before(async () => {
    requireKubectl()
    tmp = tempDir('memid-kube-strace-')
    trace = path.join(tmp.dir, 'strace.txt')
    auth = await startAuth()
    srv = await startKubeApiServer({})
    srv.addPod('web-1')
    const caFile = path.join(tmp.dir, 'apiserver-ca.pem')
    writeFileSync(caFile, srv.caPem)
    assert.equal((await auth.cli(['kube', 'add', 'prod', '--server', srv.url, '--ca-file', caFile])).code, 0)
    // The API server trusts prod's own client CA, which `kube add` created.
    const exported = await auth.cli(['auth', 'export', '--kind', 'kube-client', '--cluster', 'prod'])
    assert.equal(exported.code, 0, exported.stderr)
    srv.setClientCa(exported.stdout)
    const token = await auth.bot('kbot', ['--kube-clusters', 'prod', '--kube-users', 'ci', '--kube-groups', 'deployers'])
    agent = startAgent({
      auth, token, dir: path.join(tmp.dir, 'agent'),
      args: ['--certificate-ttl', '6s', '--renewal-interval', '2s', '--workers', '2', '--kube-proxy', '127.0.0.1:0=prod'],
      wrap: straceArgs(strace, trace),
    })
    await agent.ready
    const kc = await agent.cli(['kubeconfig'])
    assert.equal(kc.code, 0, kc.stderr)
    // The test (a user), not the agent, saves the kubeconfig.
    const file = path.join(tmp.dir, 'kubeconfig')
    writeFileSync(file, kc.stdout)
    k = { home: path.join(tmp.dir, 'home'), env: { KUBECONFIG: file } }
  })

  after(async () => {
    if (agent) signalTraced(agent.process.proc, 'SIGKILL')
    await agent?.stop()
    await auth?.stop()
    await srv?.stop()
    tmp?.cleanup()
  })

  it('join, kubectl get/watch/exec, three renewals and SIGTERM leave no file written', async () => {
    const serial = async () => ((await agent.status()).services as Record<string, any>[]).find((s) => s.name === 'kube-proxy:prod')?.serial as string
    const proxy = ((await agent.status()).services as Record<string, any>[]).find((s) => s.name === 'kube-proxy:prod')
    assert.equal(proxy?.workers?.length, 2, 'the proxy runs on two worker threads')
    const watch = new KubectlProcess(['get', 'pods', '--watch'], k)
    try {
      await watch.waitFor(/^web-1\s/m, 30_000)
      const serials = new Set([await serial()])
      await eventually(async () => {
        serials.add(await serial())
        return serials.size >= 4
      }, 30_000, 'three kube certificate renewals')
      srv.addPod('late')
      await watch.waitFor(/^late\s/m)
    } finally {
      await watch.stop()
    }
    const ex = await kubectl(['exec', 'web-1', '--', 'echo', 'hi'], k)
    assert.equal(ex.stdout, 'hi\n', ex.stderr)
    const spdy = await kubectl(['exec', 'web-1', '--', 'echo', 'hi'], { ...k, env: { ...k.env, KUBECTL_REMOTE_COMMAND_WEBSOCKETS: 'false' } })
    assert.equal(spdy.stdout, 'hi\n', spdy.stderr)
    assert.ok(new Set(srv.requests.map((r) => r.serial)).size >= 2, 'requests were made with more than one certificate')

    assert.ok(signalTraced(agent.process.proc, 'SIGTERM'))
    assert.equal(await agent.process.exited, 0, 'agent (under strace) exits 0 on SIGTERM')

    assert.ok(traceSawRead(trace, path.join(agent.dir, 'token')), 'the trace captured the agent reading its token file (file opens are visible)')

    const offending = diskWrites(trace, [path.dirname(agent.controlSocket)])
    assert.deepEqual(offending, [], `the agent wrote to disk:\n${offending.join('\n')}`)
    const lines = readFileSync(trace, 'utf8').split('\n')
    assert.ok(lines.some((l) => /bind\(\d+, \{sa_family=AF_INET, sin_port=htons\(\d+\), sin_addr=inet_addr\("127\.0\.0\.1"\)\}/.test(l)), 'the trace saw the kube proxy bind')
  })
})
