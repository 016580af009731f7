import { after, before, beforeEach, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { CredentialSource, type TlsClientCredential } from '../../src/credentials/credentials.ts'
import { createDbTunnelService } from '../../src/services/db-tunnel/index.ts'
import type { Service } from '../../src/services/service.ts'
import type { X509Authority } from '../../src/pki/x509.ts'
import { dbCredential, freePort, requireBinary, run, serverCertificate, testCa, TestClock, tunnelDeps } from '../fixtures/db-tunnel.ts'

/**
 * The generic `tls` protocol against a real server that requires client certificates:
 * Debian's redis-server with `tls-auth-clients yes` and no plaintext port.
 */
describe('db-tunnel (tls) against redis-server requiring client certificates', () => {
  let dir: string
  let redis: ChildProcess
  let redisPort: number
  let clientCa: X509Authority
  let serverCaPem: string
  const clock = new TestClock()
  let source: CredentialSource<TlsClientCredential>
  let deps: ReturnType<typeof tunnelDeps>
  const services: Service[] = []
  const issue = (ca = clientCa) => dbCredential({ clientCa: ca, serverCaPem, user: 'cache', host: '127.0.0.1', port: redisPort, service: 'cache' })
  const tunnel = async (src: CredentialSource<TlsClientCredential>, cfg: { maxConnections?: number } = {}) => {
    const s = createDbTunnelService({
      listen: '127.0.0.1:0', service: 'cache', username: 'cache', protocol: 'tls',
      maxConnections: cfg.maxConnections ?? 20, connectTimeoutMs: 5000,
    }, { ...deps, credentials: src })
    await s.start()
    services.push(s)
    return { service: s, port: Number(s.address.split(':').pop()) }
  }
  const cli = (port: number, args: string[], input?: string) =>
    run('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], input !== undefined ? { input } : {})

  const requireRedis = () => {
    requireBinary('/usr/bin/redis-server', 'redis-server')
    requireBinary('/usr/bin/redis-cli', 'redis-tools')
  }
  // A throwing `before` only cancels the tests; a throwing `beforeEach` fails each one
  // with the install command (STYLE.md: a missing binary fails, never skips).
  beforeEach(requireRedis)

  before(async () => {
    if (!existsSync('/usr/bin/redis-server') || !existsSync('/usr/bin/redis-cli')) return
    dir = mkdtempSync(path.join(os.tmpdir(), 'memid-redis-'))
    clientCa = await testCa('test db-client CA')
    const serverCa = await testCa('test redis server CA')
    serverCaPem = serverCa.certPem
    const server = await serverCertificate(serverCa)
    writeFileSync(path.join(dir, 'server.crt'), server.certPem)
    writeFileSync(path.join(dir, 'server.key'), server.keyPem, { mode: 0o600 })
    writeFileSync(path.join(dir, 'client-ca.crt'), clientCa.certPem)
    writeFileSync(path.join(dir, 'server-ca.crt'), serverCa.certPem)
    redisPort = await freePort()
    redis = spawn('redis-server', [
      '--port', '0', '--tls-port', String(redisPort), '--bind', '127.0.0.1',
      '--tls-cert-file', path.join(dir, 'server.crt'), '--tls-key-file', path.join(dir, 'server.key'),
      '--tls-ca-cert-file', path.join(dir, 'client-ca.crt'), '--tls-auth-clients', 'yes',
      '--save', '', '--appendonly', 'no', '--dir', dir,
    ], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`redis-server did not start: ${out}`)), 10_000)
      redis.stdout!.on('data', (d: Buffer) => {
        out += d.toString()
        if (out.includes('Ready to accept connections')) {
          clearTimeout(t)
          resolve()
        }
      })
      redis.once('exit', (code) => reject(new Error(`redis-server exited ${code}: ${out}`)))
    })
    source = new CredentialSource<TlsClientCredential>('database cache', clock)
    source.set(await issue())
    deps = tunnelDeps(source, clock)
  })

  after(async () => {
    for (const s of services.reverse()) await s.stop(1000)
    if (redis && redis.exitCode === null) {
      const exited = new Promise((r) => redis.once('exit', r))
      redis.kill('SIGTERM')
      await exited
    }
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  test('the server really requires a client certificate', async () => {
    const r = await run('redis-cli', ['--tls', '--cacert', path.join(dir, 'server-ca.crt'), '-h', '127.0.0.1', '-p', String(redisPort), 'PING'])
    assert.notEqual(r.stdout.trim(), 'PONG')
  })

  test('redis-cli without TLS talks to the TLS-only server through the tunnel', async () => {
    const { port } = await tunnel(source)
    const ping = await cli(port, ['PING'])
    assert.equal(ping.stdout.trim(), 'PONG', ping.stderr)
    // A 2 MB value both ways: the pipe carries it intact.
    const value = Buffer.alloc(2 * 1024 * 1024, 'memid-').toString()
    const set = await cli(port, ['-x', 'SET', 'big'], value)
    assert.equal(set.stdout.trim(), 'OK', set.stderr)
    const get = await cli(port, ['STRLEN', 'big'])
    assert.equal(get.stdout.trim(), String(value.length))
  })

  test('renewal: new connections use the new certificate', async () => {
    const { port } = await tunnel(source)
    for (let i = 0; i < 3; i++) {
      source.set(await issue())
      const r = await cli(port, ['INCR', 'renewals'])
      assert.match(r.stdout.trim(), /^\d+$/, r.stderr)
    }
  })

  test('a client certificate from another CA is refused by the server; other tunnels are unaffected', async () => {
    const rogue = new CredentialSource<TlsClientCredential>('database cache', clock)
    rogue.set(await issue(await testCa('rogue CA')))
    const bad = await tunnel(rogue)
    const r = await cli(bad.port, ['PING'])
    assert.notEqual(r.stdout.trim(), 'PONG')
    const good = await tunnel(source)
    assert.equal((await cli(good.port, ['PING'])).stdout.trim(), 'PONG')
  })

  test('an expired identity: the connection is closed and the refusal counted', async () => {
    const src = new CredentialSource<TlsClientCredential>('database cache', clock)
    src.set(await issue())
    src.fail(new Error('auth service unreachable'))
    const { port, service } = await tunnel(src)
    clock.offsetMs = 2 * 3600_000
    try {
      const r = await cli(port, ['PING'])
      assert.notEqual(r.stdout.trim(), 'PONG')
      assert.equal(service.health().status, 'failed')
    } finally {
      clock.offsetMs = 0
    }
    assert.match(await deps.metrics.metrics(), /memid_db_tunnel_connection_errors_total\{service="cache",reason="identity_expired"\} 1/)
  })

  test('max_connections: the extra connection is closed, the first keeps working', async () => {
    const { port } = await tunnel(source, { maxConnections: 1 })
    const first = net.connect(port, '127.0.0.1')
    await new Promise((r) => first.once('connect', r))
    first.write('PING\r\n')
    await new Promise((r) => first.once('data', r))
    const r = await cli(port, ['PING'])
    assert.notEqual(r.stdout.trim(), 'PONG')
    first.write('PING\r\n')
    const again = await new Promise<Buffer>((resolve) => first.once('data', resolve))
    assert.equal(again.toString(), '+PONG\r\n')
    first.destroy()
  })
})
