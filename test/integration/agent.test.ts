import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, statSync } from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import { eventually, runMemid, startAgent, startAuth, tempDir, type AuthFixture } from '../fixtures/memid.ts'

function get(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = ''
      res.on('data', (d: Buffer) => (body += d.toString()))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    }).on('error', reject)
  })
}

describe('agent (memid start)', () => {
  let auth: AuthFixture

  before(async () => {
    auth = await startAuth()
  })
  after(async () => {
    await auth?.stop()
  })

  test('joins, renews with new serials and generations, answers SIGHUP at once, drains on SIGTERM', async () => {
    const token = await auth.bot('renewer')
    const agent = startAgent({ auth, token, args: ['--certificate-ttl', '20s', '--renewal-interval', '5s', '--diag-addr', '127.0.0.1:0'] })
    try {
      const ready = await agent.ready
      const diag = String(ready.diagnostics)
      assert.equal(statSync(agent.controlSocket).mode & 0o777, 0o600)
      assert.equal(statSync(path.dirname(agent.controlSocket)).mode & 0o777, 0o700)
      const first = await agent.status()
      assert.equal(first.bot, 'renewer')
      assert.equal(first.generation, 1)
      assert.equal(first.identity.status, 'valid')
      assert.match(first.instanceId, /^[0-9a-f-]{36}$/)

      const seen = new Set<string>([first.identity.serial])
      const later = await eventually(async () => {
        const s = await agent.status()
        seen.add(s.identity.serial)
        return s.generation >= 3 ? s : undefined
      }, 20_000, 'two renewals')
      assert.ok(seen.size >= 3, 'each renewal has a new serial')
      assert.ok(later.renewal.succeeded >= 2)
      assert.ok(later.renewal.nextRunAt)

      const text = await agent.cli(['status'])
      assert.match(text.stdout, /^Bot:\s+renewer$/m)
      assert.match(text.stdout, /Identity:\s+valid \(serial [0-9a-f]+/)
      assert.ok(!/BEGIN|PRIVATE/.test(text.stdout + JSON.stringify(later)), 'status holds no key material')

      // Untimed: the renewal SIGHUP asks for is seen to come from the signal because it
      // finished before the scheduled run was due (the agent's own clock, ~5 s ahead).
      const before = await eventually(async () => {
        const s = await agent.status()
        return s.renewal.nextRunAt !== undefined ? s : undefined
      }, 20_000, 'a scheduled next renewal')
      agent.process.signal('SIGHUP')
      const after = await eventually(async () => {
        const s = await agent.status()
        return s.generation > before.generation ? s : undefined
      }, 30_000, 'renewal after SIGHUP')
      assert.ok(Date.parse(String(after.renewal.lastSuccess)) < Date.parse(String(before.renewal.nextRunAt)),
        `renewed at ${after.renewal.lastSuccess}, before the scheduled ${before.renewal.nextRunAt}`)

      assert.equal((await get(`http://${diag}/livez`)).status, 200)
      const ready200 = await get(`http://${diag}/readyz`)
      assert.equal(ready200.status, 200)
      assert.equal(JSON.parse(ready200.body).status, 'ok')
      const metrics = await get(`http://${diag}/metrics`)
      assert.match(metrics.body, /memid_renewals_total\{credential="bot-identity",result="success"\} \d+/)
      assert.match(metrics.body, /memid_identity_expiry_seconds \d/)

      const inst = JSON.parse((await auth.cli(['get', `bot_instance/renewer/${first.instanceId}`, '--format', 'json'])).stdout)
      assert.ok(inst.heartbeats.length >= 2, 'heartbeat at start and after renewals')
      assert.equal(inst.heartbeats.at(-1).version, '0.1.0')
    } finally {
      const code = await agent.process.stop()
      assert.equal(code, 0, 'SIGTERM exits 0')
      assert.ok(!existsSync(agent.controlSocket), 'socket files removed')
      await agent.stop()
    }
  })

  test('keeps serving while the auth service is briefly down, recovers when it returns', async () => {
    const token = await auth.bot('patient')
    const agent = startAgent({ auth, token, args: ['--certificate-ttl', '30s', '--renewal-interval', '3s', '--diag-addr', '127.0.0.1:0'] })
    try {
      const ready = await agent.ready
      const diag = String(ready.diagnostics)
      await auth.process.stop()
      await eventually(async () => (await agent.status()).renewal.consecutiveFailures >= 1, 15_000, 'a failed renewal')
      const during = await agent.status()
      assert.equal(during.identity.status, 'valid', 'the current identity is still served')
      assert.equal((await get(`http://${diag}/readyz`)).status, 200)
      assert.match(during.renewal.lastError, /cannot reach the auth server/)
      const gen = during.generation
      await auth.restart()
      const recovered = await eventually(async () => {
        const s = await agent.status()
        return s.generation > gen && s.renewal.consecutiveFailures === 0 ? s : undefined
      }, 20_000, 'recovery')
      assert.equal(recovered.identity.status, 'valid')
    } finally {
      await agent.stop()
      if (auth.process.proc.exitCode !== null) await auth.restart()
    }
  })

  test('past expiry with the auth service down: /readyz is 503 and status says expired', async () => {
    const token = await auth.bot('stranded')
    const agent = startAgent({ auth, token, args: ['--certificate-ttl', '6s', '--renewal-interval', '4s', '--diag-addr', '127.0.0.1:0'] })
    try {
      const ready = await agent.ready
      const diag = String(ready.diagnostics)
      await auth.process.stop()
      const s = await eventually(async () => {
        const st = await agent.status()
        return st.identity.status === 'expired' ? st : undefined
      }, 20_000, 'expiry')
      assert.match(s.identity.lastError ?? '', /auth server/)
      const r = await get(`http://${diag}/readyz`)
      assert.equal(r.status, 503)
      const body = JSON.parse(r.body)
      assert.equal(body.status, 'unavailable')
      assert.equal(body.services.identity.status, 'expired')
      const text = await agent.cli(['status'])
      assert.match(text.stdout, /Identity:\s+expired/)
    } finally {
      await agent.stop()
      await auth.restart()
    }
  })

  test('a lock stops the agent with exit code 3 and a one-line reason', async () => {
    const token = await auth.bot('doomed')
    const agent = startAgent({ auth, token, args: ['--certificate-ttl', '20s', '--renewal-interval', '2s'] })
    try {
      await agent.ready
      assert.equal((await auth.cli(['locks', 'add', '--bot', 'doomed', '--reason', 'leaked runner'])).code, 0)
      const code = await agent.process.exited
      assert.equal(code, 3)
      assert.match(agent.process.stderr, /^memid: .*locked: leaked runner$/m)
      assert.ok(!existsSync(agent.controlSocket))
    } finally {
      await agent.stop()
    }
  })

  test('bad config, wrong pin, used token and unreachable auth fail clearly', async () => {
    const { dir, cleanup } = tempDir()
    try {
      const base = ['start', '--auth-server', auth.addr, '--ca-pin', auth.caPin, '--control-socket', path.join(dir, 'c.sock')]
      const interval = await runMemid([...base, '--token', 'x', '--certificate-ttl', '10m', '--renewal-interval', '20m'])
      assert.equal(interval.code, 2)
      assert.match(interval.stderr, /^memid: --renewal-interval: \(20m\) must be shorter than --certificate-ttl \(10m\)\n$/)

      const noToken = await runMemid(base, { env: { MEMID_TOKEN: '' } })
      assert.equal(noToken.code, 2)
      assert.match(noToken.stderr, /no join token/)

      const badKube = await runMemid([...base, '--token', 'x', '--kube-proxy', 'nonsense'])
      assert.equal(badKube.code, 2)
      assert.match(badKube.stderr, /--kube-proxy\[0\]: must be LISTEN=CLUSTER/)

      const token = await auth.bot('once')
      const wrongPin = await runMemid(['start', '--auth-server', auth.addr, '--ca-pin', `sha256:${'1'.repeat(64)}`, '--token-file', '-', '--control-socket', path.join(dir, 'c.sock')], { input: token })
      assert.equal(wrongPin.code, 1)
      assert.match(wrongPin.stderr, /matches no --ca-pin; refusing to trust it/)
      assert.equal(wrongPin.stderr.trim().split('\n').length, 1)

      // The token from stdin works once, and the token never appears in any output.
      const first = startAgent({ auth, token, dir: path.join(dir, 'a1') })
      await first.ready
      await first.stop()
      const used = await runMemid([...base, '--token-file', '-'], { input: token })
      assert.equal(used.code, 1)
      assert.match(used.stderr, /join: join token tok-[0-9a-f]+ was already used/)
      assert.ok(!used.stderr.includes(token.split('.')[1] as string))
      assert.ok(!first.process.stderr.includes(token.split('.')[1] as string))

      const t0 = Date.now()
      const unreachable = await runMemid(['start', '--auth-server', '127.0.0.1:1', '--ca-pin', auth.caPin, '--token', 'x', '--control-socket', path.join(dir, 'c.sock')])
      assert.equal(unreachable.code, 1)
      assert.match(unreachable.stderr, /cannot reach the auth server at 127.0.0.1:1 \(ECONNREFUSED\)/)
      assert.match(unreachable.stderr, /argv, which every user on this host can read/)
      assert.ok(Date.now() - t0 < 15_000)
    } finally {
      cleanup()
    }
  })

  test('an auth server that hangs or answers garbage is a bounded, clear error', async () => {
    const { dir, cleanup } = tempDir()
    const net = await import('node:net')
    const sockets: import('node:net').Socket[] = []
    const hang = net.createServer((s) => sockets.push(s))
    const garbage = net.createServer((s) => s.end('HTTP/1.1 200 OK\r\n\r\nnot tls at all'))
    await new Promise<void>((r) => hang.listen(0, '127.0.0.1', r))
    await new Promise<void>((r) => garbage.listen(0, '127.0.0.1', r))
    try {
      const args = (port: number) => ['start', '--auth-server', `127.0.0.1:${port}`, '--ca-pin', auth.caPin, '--control-socket', path.join(dir, 'c.sock')]
      const h = await runMemid(args((hang.address() as import('node:net').AddressInfo).port), { env: { MEMID_TOKEN: 'tok-000000000000.' + 'A'.repeat(43) }, timeoutMs: 30_000 })
      assert.equal(h.code, 1)
      assert.match(h.stderr, /did not answer within 10s/)
      const g = await runMemid(args((garbage.address() as import('node:net').AddressInfo).port), { env: { MEMID_TOKEN: 'tok-000000000000.' + 'A'.repeat(43) } })
      assert.equal(g.code, 1)
      assert.match(g.stderr, /^memid: bootstrap: 127\.0\.0\.1:\d+ did not answer as a memid auth service over TLS/)
      assert.equal(g.stderr.trim().split('\n').length, 1)
    } finally {
      for (const s of sockets) s.destroy()
      hang.close()
      garbage.close()
      cleanup()
    }
  })
})
