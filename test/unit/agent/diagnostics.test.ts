import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { mkdtempSync, rmSync } from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { Registry } from 'prom-client'
import { DiagnosticsServer, type Readiness } from '../../../src/agent/diagnostics.ts'
import { parseListenAddress } from '../../../src/core/listener.ts'

const ready = (): Readiness => ({ status: 'ok', services: { 'kube-proxy:prod': { status: 'ok' } } })
const servers: DiagnosticsServer[] = []
const dirs: string[] = []
after(async () => {
  for (const s of servers) await s.stop()
  for (const d of dirs) rmSync(d, { recursive: true, force: true })
})

async function start(listen: string): Promise<DiagnosticsServer> {
  const registry = new Registry()
  const s = new DiagnosticsServer(parseListenAddress(listen), () => registry.metrics(), ready)
  await s.start()
  servers.push(s)
  return s
}

/** A GET with exactly this Host header (or none), over TCP or a unix socket. */
function get(target: { port: number } | { socketPath: string }, host: string | undefined, urlPath = '/readyz'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ ...('port' in target ? { host: '127.0.0.1', port: target.port } : { socketPath: target.socketPath }), path: urlPath, setHost: false, headers: host === undefined ? {} : { host } }, (res) => {
      let body = ''
      res.on('data', (d: Buffer) => (body += d.toString()))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

/** HTTP/1.0 without any Host header (HTTP/1.1 without one is already a 400). */
function getWithoutHost(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.write('GET /readyz HTTP/1.0\r\n\r\n'))
    let got = ''
    s.on('data', (d: Buffer) => (got += d.toString()))
    s.on('end', () => resolve(got.split('\r\n')[0] ?? ''))
    s.on('error', reject)
  })
}

describe('diagnostics: DNS rebinding', () => {
  it('bound to 127.0.0.1, a request with a foreign Host gets 403 and no readiness data', async () => {
    const port = Number((await start('127.0.0.1:0')).address.split(':').pop())
    for (const host of ['rebind.attacker.example', `rebind.attacker.example:${port}`, '127.0.0.1.nip.io', '10.0.0.5', '[fe80::1]', 'localhost.attacker.example']) {
      for (const p of ['/readyz', '/metrics', '/livez']) {
        const r = await get({ port }, host, p)
        assert.equal(r.status, 403, `${host} ${p}`)
        assert.doesNotMatch(r.body, /kube-proxy:prod/)
      }
    }
    assert.match(await getWithoutHost(port), /^HTTP\/1\.[01] 403/)
  })

  it('curl with a rebinding Host gets 403; curl as usual (Host 127.0.0.1:PORT) gets /readyz', async () => {
    const port = Number((await start('127.0.0.1:0')).address.split(':').pop())
    // Asynchronous: the server runs in this process.
    const code = async (args: string[]) => (await promisify(execFile)('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', ...args], { encoding: 'utf8' })).stdout
    assert.equal(await code(['-H', 'Host: rebind.attacker.example', `http://127.0.0.1:${port}/readyz`]), '403')
    assert.equal(await code([`http://127.0.0.1:${port}/readyz`]), '200')
  })

  it('loopback names and addresses, with or without a port, are answered', async () => {
    const port = Number((await start('127.0.0.1:0')).address.split(':').pop())
    for (const host of ['localhost', `localhost:${port}`, 'LOCALHOST', '127.0.0.1', `127.0.0.1:${port}`, '127.1.2.3', '[::1]', `[::1]:${port}`]) {
      const r = await get({ port }, host)
      assert.equal(r.status, 200, host)
      assert.match(r.body, /kube-proxy:prod/)
    }
  })

  it('bound to a non-loopback address (a pod IP for Prometheus), any Host is answered', async () => {
    const port = Number((await start('0.0.0.0:0')).address.split(':').pop())
    assert.equal((await get({ port }, '10.1.2.3:9090', '/metrics')).status, 200)
  })

  it('bound to a unix socket (0600), any Host is answered', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'memid-diag-'))
    dirs.push(dir)
    const socketPath = path.join(dir, 'run', 'diag.sock')
    await start(socketPath)
    assert.equal((await get({ socketPath }, 'whatever')).status, 200)
  })
})
