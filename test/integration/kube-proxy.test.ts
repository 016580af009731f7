/**
 * Real kubectl through memid's kube proxy service to the Kubernetes-API test server, with
 * client certificates issued in the test from a test kube-client CA and held in a
 * CredentialSource, as the agent holds them. The end-to-end version through a real auth
 * service and agent is kube-proxy-e2e.test.ts.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { Registry } from 'prom-client'
import { CredentialSource, type TlsClientCredential } from '../../src/credentials/credentials.ts'
import type { Clock } from '../../src/core/clock.ts'
import { silentLogger } from '../../src/core/log.ts'
import type { X509Authority } from '../../src/pki/x509.ts'
import { createKubeProxyService } from '../../src/services/kube-proxy/index.ts'
import { renderKubeconfig } from '../../src/services/kube-proxy/kubeconfig.ts'
import type { Service } from '../../src/services/service.ts'
import { startKubeApiServer, type KubeApiServer } from '../fixtures/kube-apiserver.ts'
import {
  createKubeClientCa, issueKubeCredential, kubectl, kubectlHome, KubectlProcess, requireKubectl, type KubectlOptions,
} from '../fixtures/kube-client.ts'
import { eventually } from '../fixtures/memid.ts'

let ca: X509Authority
let srv: KubeApiServer
let svc: Service
let source: CredentialSource<TlsClientCredential>
const clock = { offset: 0, now() { return Date.now() + this.offset } }
let home: { home: string; cleanup: () => void }
let k: KubectlOptions

const renew = async () => {
  source.set(await issueKubeCredential({ ca, server: srv, user: 'bot-ci', groups: ['developers', 'deployers'] }))
  return (source.peek() as TlsClientCredential).serial
}

before(async () => {
  requireKubectl()
  ca = await createKubeClientCa()
  srv = await startKubeApiServer({ clientCaPem: ca.certPem })
  srv.addPod('p1')
  source = new CredentialSource<TlsClientCredential>('kube-proxy:test certificate', clock as Clock)
  await renew()
  svc = createKubeProxyService({ listen: '127.0.0.1:0', cluster: 'test' }, { credentials: source, clock, metrics: new Registry(), logger: silentLogger() })
  await svc.start()
  home = kubectlHome()
  k = { server: `http://${svc.address}`, home: home.home }
})

after(async () => {
  await svc?.stop(1000)
  await srv?.stop()
  home?.cleanup()
})

/** Connects to a port-forward's local port, sends `text`, and returns what comes back. */
function echoThrough(port: number, text: string, keepOpen = false): Promise<{ reply: string; socket: net.Socket }> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1')
    let got = ''
    s.on('error', reject)
    s.on('data', (d) => {
      got += d.toString()
      if (got.length >= text.length) {
        if (!keepOpen) s.end()
        resolve({ reply: got, socket: s })
      }
    })
    s.write(text)
  })
}

describe('kubectl through the kube proxy', () => {
  it('kubectl auth whoami shows the certificate\'s user and groups', async () => {
    const r = await kubectl(['auth', 'whoami'], k)
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /Username\s+bot-ci/)
    assert.match(r.stdout, /Groups\s+\[developers deployers system:authenticated\]/)
  })

  it('kubectl get pods lists', async () => {
    const r = await kubectl(['get', 'pods'], k)
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /^NAME\s+READY\s+STATUS/)
    assert.match(r.stdout, /^p1\s+1\/1\s+Running/m)
  })

  it('kubectl get pods --watch receives events and keeps receiving across a renewal; new requests carry the new serial', async () => {
    const before = (source.peek() as TlsClientCredential).serial
    const watch = new KubectlProcess(['get', 'pods', '--watch'], k)
    try {
      await watch.waitFor(/^p1\s/m)
      // kubectl prints the list before it opens the watch; a pod added in between is in
      // no watch (the fixture does not replay from a resourceVersion).
      await eventually(() => srv.activeWatches > 0, 10_000, 'the watch open at the API server')
      srv.addPod('watched-1')
      await watch.waitFor(/^watched-1\s/m)
      const after = await renew()
      assert.notEqual(after, before)
      srv.addPod('watched-2')
      await watch.waitFor(/^watched-2\s/m)
      const r = await kubectl(['get', 'pod', 'watched-2', '-o', 'name'], k)
      assert.equal(r.code, 0, r.stderr)
      assert.equal(r.stdout.trim(), 'pod/watched-2')
      assert.equal(srv.requests.at(-1)?.serial, after)
      assert.equal(srv.requests.find((x) => x.path.includes('watch=true'))?.serial, before)
      assert.equal(watch.child.exitCode, null, 'the watch is still running')
    } finally {
      await watch.stop()
    }
  })

  it('kubectl logs -f streams as lines arrive; stopping kubectl ends the upstream request', async () => {
    const logs = new KubectlProcess(['logs', '-f', 'p1'], k)
    try {
      await logs.waitFor(/p1 log line 5\n/)
      assert.equal(srv.activeLogFollows, 1)
    } finally {
      await logs.stop()
    }
    const follows = () => srv.activeLogFollows
    const until = Date.now() + 3000
    while (follows() !== 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20))
    assert.equal(follows(), 0, 'the API server still streams to a client that left')
  })

  it('kubectl exec POD -- echo hi prints hi, over WebSocket and over SPDY', async () => {
    const ws = await kubectl(['exec', 'p1', '--', 'echo', 'hi'], k)
    assert.equal(ws.code, 0, ws.stderr)
    assert.equal(ws.stdout, 'hi\n')
    assert.equal(srv.requests.at(-1)?.upgrade, 'websocket')
    const spdy = await kubectl(['exec', 'p1', '--', 'echo', 'hi'], { ...k, env: { KUBECTL_REMOTE_COMMAND_WEBSOCKETS: 'false' } })
    assert.equal(spdy.code, 0, spdy.stderr)
    assert.equal(spdy.stdout, 'hi\n')
    assert.equal(srv.requests.at(-1)?.upgrade, 'SPDY/3.1')
  })

  it('kubectl exec passes stdin and the exit code', async () => {
    const cat = await kubectl(['exec', '-i', 'p1', '--', 'cat'], { ...k, input: 'line one\nline two\n' })
    assert.equal(cat.code, 0, cat.stderr)
    assert.equal(cat.stdout, 'line one\nline two\n')
    const failed = await kubectl(['exec', 'p1', '--', 'sh', '-c', 'exit 3'], k)
    assert.equal(failed.code, 3)
    const spdyCat = await kubectl(['exec', '-i', 'p1', '--', 'cat'], { ...k, input: 'over spdy\n', env: { KUBECTL_REMOTE_COMMAND_WEBSOCKETS: 'false' } })
    assert.equal(spdyCat.stdout, 'over spdy\n', spdyCat.stderr)
  })

  for (const [label, env] of [['WebSocket tunnel', {}], ['SPDY', { KUBECTL_PORT_FORWARD_WEBSOCKETS: 'false' }]] as const) {
    it(`kubectl port-forward works (${label}), and an open forward survives a renewal`, async () => {
      const pf = new KubectlProcess(['port-forward', 'pod/p1', ':80'], { ...k, env })
      try {
        const port = Number((await pf.waitFor(/Forwarding from 127\.0\.0\.1:(\d+)/))[1])
        assert.equal((await echoThrough(port, 'hello pod\n')).reply, 'hello pod\n')
        const open = await echoThrough(port, 'first\n', true)
        await renew()
        const again = new Promise<string>((resolve) => open.socket.once('data', (d) => resolve(d.toString())))
        open.socket.write('second\n')
        assert.equal(await again, 'second\n')
        open.socket.end()
        assert.equal((await echoThrough(port, 'after renewal\n')).reply, 'after renewal\n')
      } finally {
        await pf.stop()
      }
    })
  }

  it('kubectl works with a kubeconfig from renderKubeconfig saved to a file', async () => {
    const file = path.join(home.home, 'memid.kubeconfig')
    writeFileSync(file, renderKubeconfig([{ name: 'test', cluster: 'test', server: `http://${svc.address}` }]))
    const r = await kubectl(['--kubeconfig', file, 'get', 'pods', '-o', 'name'], { home: home.home })
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /^pod\/p1$/m)
  })

  it('after expiry kubectl shows the proxy\'s 503 Status message', async () => {
    source.fail(new Error('auth service unreachable (ECONNREFUSED)'))
    clock.offset = 2 * 3600_000
    try {
      const r = await kubectl(['get', 'pods'], k)
      assert.equal(r.code, 1)
      assert.match(r.stderr, /Error from server \(ServiceUnavailable\): memid: the kube-proxy:test certificate (?:certificate )?expired at \S+ and could not be renewed: auth service unreachable \(ECONNREFUSED\)/)
      const ex = await kubectl(['exec', 'p1', '--', 'echo', 'hi'], k)
      assert.notEqual(ex.code, 0)
    } finally {
      clock.offset = 0
    }
    assert.equal((await kubectl(['get', 'pods', '-o', 'name'], k)).code, 0)
  })
})
