import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { endianness, tmpdir } from 'node:os'
import path from 'node:path'
import { Registry } from 'prom-client'
import { ConfigError } from '../../../src/core/errors.ts'
import { LocalAccess, parseListenAddress, resolveExposure, type LocalExposureConfig } from '../../../src/core/listener.ts'
import { createLogger } from '../../../src/core/log.ts'
import { ProcNetPeerOwners } from '../../../src/core/peer-owner.ts'

const own = process.geteuid?.() ?? -1
let dir: string
let passwd: string

before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'memid-access-'))
  passwd = path.join(dir, 'passwd')
  writeFileSync(passwd, 'root:x:0:0:root:/root:/bin/sh\nmemid:x:990:990::/var/lib/memid:/usr/sbin/nologin\nrunner:x:1001:1001::/home/runner:/bin/bash\n')
})
after(() => rmSync(dir, { recursive: true, force: true }))

const resolve = (cfg: LocalExposureConfig, listen = '127.0.0.1:8001') => resolveExposure(cfg, parseListenAddress(listen), passwd)
const throwsConfig = (fn: () => unknown, message: RegExp) => assert.throws(fn, (err: unknown) => err instanceof ConfigError && message.test(err.message))

describe('resolveExposure: where a kube proxy or database tunnel may listen', () => {
  it('refuses 0.0.0.0, a LAN address and a host name, naming listen and allow_remote', () => {
    for (const l of ['0.0.0.0:8001', '10.1.2.3:8001', '[::]:8001', 'db.example.com:6432', '127.attacker.example:8001']) {
      throwsConfig(() => resolve({}, l), /^listen: .* is not a loopback address or a unix socket.*allow_remote: true/)
    }
  })

  it('accepts them with allow_remote: true, and loopback or a unix socket without it', () => {
    assert.equal(resolve({ allowRemote: true }, '0.0.0.0:8001').allowRemote, true)
    for (const l of ['127.0.0.1:1', '[::1]:1', 'localhost:1', '/run/memid/kube.sock']) assert.equal(resolve({}, l).allowRemote, false)
  })

  it('resolves allowed_users names from the passwd file and takes numeric uids as they are', () => {
    const r = resolve({ allowedUsers: ['runner', '2000', 'memid'] })
    assert.deepEqual([...r.uids].sort((a, b) => a - b), [...new Set([own, 990, 1001, 2000])].sort((a, b) => a - b))
    assert.equal(r.anyUser, false)
  })

  it('an unknown name, an empty entry, "*" with others, a non-boolean allow_remote are config errors naming the key', () => {
    throwsConfig(() => resolve({ allowedUsers: ['runner', 'nobody-here'] }), /^allowed_users\[1\]: no user "nobody-here" in .*passwd/)
    throwsConfig(() => resolve({ allowedUsers: [''] }), /^allowed_users\[0\]: must be a user name or a uid/)
    throwsConfig(() => resolve({ allowedUsers: ['*', 'runner'] }), /^allowed_users: "\*" must be the only entry/)
    throwsConfig(() => resolve({ allowRemote: 'yes' as unknown as boolean }), /^allow_remote: must be true or false/)
  })

  it('allowed_users on a unix socket is an error: only the agent\'s user can connect to it (0600)', () => {
    throwsConfig(() => resolve({ allowedUsers: ['runner'] }, '/run/memid/db/.s.PGSQL.5432'), /^allowed_users: applies to TCP listeners/)
  })

  it('["*"] turns the check off', () => {
    assert.equal(resolve({ allowedUsers: ['*'] }).anyUser, true)
  })
})

describe('LocalAccess', () => {
  const servers: net.Server[] = []
  const sockets: net.Socket[] = []
  after(() => {
    for (const s of sockets) s.destroy()
    for (const s of servers) s.close()
  })

  /** One accepted connection from this process to a fresh loopback listener. */
  async function accepted(): Promise<net.Socket> {
    let got: net.Socket | undefined
    const server = net.createServer((s) => (got = s))
    servers.push(server)
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const c = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1')
    sockets.push(c)
    while (got === undefined) await new Promise((r) => setTimeout(r, 5))
    sockets.push(got)
    return got
  }

  function access(cfg: LocalExposureConfig, owners?: ProcNetPeerOwners, now = { t: 0 }) {
    const lines: Record<string, unknown>[] = []
    const logger = createLogger({ sink: { write: (l: string) => void lines.push(JSON.parse(l)) } as never })
    const metrics = new Registry()
    const a = new LocalAccess('kube-proxy:prod', resolve(cfg), { logger, metrics, clock: { now: () => now.t }, ...(owners ? { owners } : {}) })
    return { a, lines, metrics, now }
  }

  it('serves the agent\'s own user', async () => {
    const { a } = access({})
    assert.equal(await a.check(await accepted()), undefined)
  })

  it('refuses another uid, naming it; counts memid_local_refused_total; one log line per 10 s', async () => {
    // The client's row says uid 1234: a hand-made table for the real connection's ports.
    const s = await accepted()
    const lo = endianness() === 'LE' ? '0100007F' : '7F000001'
    const hex = (p: number) => p.toString(16).toUpperCase().padStart(4, '0')
    const tables = mkdtempSync(path.join(dir, 'net-'))
    writeFileSync(path.join(tables, 'tcp'), `  sl  local_address rem_address   st\n   0: ${lo}:${hex(s.remotePort as number)} ${lo}:${hex(s.localPort as number)} 01 00000000:00000000 00:00000000 00000000  1234        0 777 1\n`)
    const { a, lines, metrics, now } = access({}, new ProcNetPeerOwners(tables))
    const r1 = await a.check(s)
    assert.equal(r1?.uid, 1234)
    assert.match(r1?.message ?? '', new RegExp(`connections from uid 1234 are refused: kube-proxy:prod serves only the agent's user \\(uid ${own}\\)`))
    now.t += 1_000
    await a.check(s)
    now.t += 10_000
    await a.check(s)
    const refusals = lines.filter((l) => l.msg === 'local connection refused: user not allowed')
    assert.equal(refusals.length, 2)
    assert.equal(refusals[0]?.uid, 1234)
    assert.equal(refusals[1]?.alsoRefused, 1)
    assert.match(await metrics.metrics(), /memid_local_refused_total\{service="kube-proxy:prod"\} 3/)
  })

  it('with the uid in allowed_users the same connection is served', async () => {
    const s = await accepted()
    const lo = endianness() === 'LE' ? '0100007F' : '7F000001'
    const hex = (p: number) => p.toString(16).toUpperCase().padStart(4, '0')
    const tables = mkdtempSync(path.join(dir, 'net-'))
    writeFileSync(path.join(tables, 'tcp'), `  sl\n   0: ${lo}:${hex(s.remotePort as number)} ${lo}:${hex(s.localPort as number)} 01 00000000:00000000 00:00000000 00000000  1001        0 777 1\n`)
    const { a } = access({ allowedUsers: ['runner'] }, new ProcNetPeerOwners(tables))
    assert.equal(await a.check(s), undefined)
  })

  it('an owner that cannot be found is refused (default deny), saying why', async () => {
    const { a } = access({}, new ProcNetPeerOwners(path.join(dir, 'no-proc')))
    const r = await a.check(await accepted())
    assert.equal(r?.uid, undefined)
    assert.match(r?.message ?? '', /the user of the connecting process is unknown \(.*cannot be read on this system\)/)
  })

  it('["*"] serves anyone without a lookup and says so once at start', async () => {
    const { a, lines } = access({ allowedUsers: ['*'] }, new ProcNetPeerOwners(path.join(dir, 'no-proc')))
    a.announce(parseListenAddress('127.0.0.1:8001'))
    assert.equal(await a.check(await accepted()), undefined)
    assert.equal(lines.filter((l) => /allowed_users is \["\*"\]/.test(String(l.msg))).length, 1)
  })

  it('allow_remote: one warning at start naming the address', () => {
    const { a, lines } = access({ allowRemote: true })
    const b = new LocalAccess('db-tunnel:orders', resolveExposure({ allowRemote: true }, parseListenAddress('0.0.0.0:6432')), {
      logger: createLogger({ sink: { write: (l: string) => void lines.push(JSON.parse(l)) } as never }), metrics: new Registry(), clock: { now: () => 0 },
    })
    a.announce(parseListenAddress('127.0.0.1:8001'))
    b.announce(parseListenAddress('0.0.0.0:6432'))
    const warnings = lines.filter((l) => /reachable from other hosts/.test(String(l.msg)))
    assert.equal(warnings.length, 1)
    assert.match(String(warnings[0]?.msg), /db-tunnel:orders listens on 0\.0\.0\.0:6432, reachable from other hosts \(allow_remote: true\)/)
  })
})
