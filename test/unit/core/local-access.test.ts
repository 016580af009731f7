import { after, before, describe, it, mock } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { endianness, tmpdir } from 'node:os'
import path from 'node:path'
import { Registry } from 'prom-client'
import { ConfigError } from '../../../src/core/errors.ts'
import { LocalAccess, parseListenAddress, resolveExposure, type LocalExposureConfig } from '../../../src/core/listener.ts'
import { createLogger } from '../../../src/core/log.ts'
import { ProcNetPeerOwners, type PeerOwner, type PeerOwners } from '../../../src/core/peer-owner.ts'

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

  it('reads /etc/passwd unless told otherwise', () => {
    assert.ok(resolveExposure({ allowedUsers: ['root'] }, parseListenAddress('127.0.0.1:1')).uids.has(0))
  })

  it('the agent\'s own uid is the effective uid, always among the served ones ("*" too)', () => {
    const geteuid = mock.method(process as { geteuid(): number }, 'geteuid', () => 4321)
    try {
      const r = resolve({ allowedUsers: ['runner'] })
      assert.equal(r.ownUid, 4321)
      assert.deepEqual([...r.uids].sort(), [1001, 4321])
      assert.deepEqual([...resolve({ allowedUsers: ['*'] }).uids], [4321])
    } finally {
      geteuid.mock.restore()
    }
  })

  it('allowed_users must be a list of strings', () => {
    throwsConfig(() => resolve({ allowedUsers: 'runner' as unknown as string[] }), /^allowed_users: must be a list of user names or uids$/)
    throwsConfig(() => resolve({ allowedUsers: [1001 as unknown as string] }), /^allowed_users\[0\]: must be a user name or a uid$/)
  })

  it('a numeric uid is up to 4294967294 written in digits alone; anything else is looked up as a name', () => {
    assert.ok(resolve({ allowedUsers: ['4294967294'] }).uids.has(4294967294))
    assert.ok(resolve({ allowedUsers: ['0'] }).uids.has(0))
    for (const bad of ['4294967295', '12345678901', ' 1001', '1001 ', '0x10', '1e3']) {
      throwsConfig(() => resolve({ allowedUsers: [bad] }), new RegExp(`^allowed_users\\[0\\]: no user "${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}"`))
    }
  })

  it('passwd lines: the first entry of a name wins; lines without a numeric uid name nobody', () => {
    const odd = path.join(dir, 'passwd-odd')
    writeFileSync(odd, 'dup:x:1:1::/:/bin/sh\ndup:x:2:2::/:/bin/sh\nweird:x:abc:1::/:/bin/sh\ntrail:x:12x:1::/:/bin/sh\nlead:x:x12:1::/:/bin/sh\nshort:x\n')
    const r = (users: string[]) => resolveExposure({ allowedUsers: users }, parseListenAddress('127.0.0.1:1'), odd)
    assert.ok(r(['dup']).uids.has(1))
    assert.ok(!r(['dup']).uids.has(2))
    for (const name of ['weird', 'trail', 'lead', 'short']) throwsConfig(() => r([name]), new RegExp(`no user "${name}"`))
    throwsConfig(() => resolveExposure({ allowedUsers: ['runner'] }, parseListenAddress('127.0.0.1:1'), path.join(dir, 'absent')), /no user "runner" in .*absent/)
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

  function access(cfg: LocalExposureConfig, owners?: PeerOwners, now = { t: 0 }) {
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

  /** An owner lookup that answers `owner` without looking anything up, counting its calls. */
  const fixedOwner = (owner: PeerOwner | Error) => {
    const calls = { n: 0 }
    return { calls, lookup: { method: 'sock_diag', owner: async () => { calls.n++; if (owner instanceof Error) throw owner; return owner } } as PeerOwners }
  }

  it('a lookup that fails is a refusal naming its error, logged with why; known uids are logged without', async () => {
    const failing = fixedOwner(new Error('netlink said no'))
    const { a, lines } = access({}, failing.lookup)
    const s = await accepted()
    const r = await a.check(s)
    assert.equal(r?.uid, undefined)
    assert.match(r?.message ?? '', /unknown \(netlink said no\)/)
    const line = lines.find((l) => l.msg === 'local connection refused: user not allowed')
    assert.equal(line?.why, 'netlink said no')
    assert.equal(line?.peer, `127.0.0.1:${s.remotePort}`)
    assert.ok(!('alsoRefused' in (line ?? {})), 'the first line counts nothing else')
    const known = access({}, fixedOwner({ uid: 1234 }).lookup)
    await known.a.check(s)
    const k = known.lines.find((l) => l.msg === 'local connection refused: user not allowed')
    assert.equal(k?.uid, 1234)
    assert.ok(!('why' in (k ?? {})))
    const odd: PeerOwners = { method: 'sock_diag', owner: async () => { throw 'not an Error' } }
    assert.match((await access({}, odd).a.check(s))?.message ?? '', /unknown \(lookup failed\)/)
  })

  it('logs again exactly 10 s after the last refusal line, counting those in between', async () => {
    const { a, lines, now } = access({}, fixedOwner({ uid: 1234 }).lookup)
    const s = await accepted()
    await a.check(s)
    now.t += 9_999
    await a.check(s)
    now.t += 1
    await a.check(s)
    const refusals = lines.filter((l) => l.msg === 'local connection refused: user not allowed')
    assert.equal(refusals.length, 2)
    assert.equal(refusals[1]?.alsoRefused, 1)
  })

  it('unix socket connections are not looked up (the socket is 0600)', async () => {
    const sock = path.join(mkdtempSync(path.join(dir, 'sock-')), 'x.sock')
    let got: net.Socket | undefined
    const server = net.createServer((c) => (got = c))
    servers.push(server)
    await new Promise<void>((r) => server.listen(sock, r))
    sockets.push(net.connect(sock))
    while (got === undefined) await new Promise((r) => setTimeout(r, 5))
    sockets.push(got)
    const stranger = fixedOwner({ uid: 1234 })
    assert.equal(await access({}, stranger.lookup).a.check(got), undefined)
    assert.equal(stranger.calls.n, 0)
  })

  it('several services count refusals into the one shared metric', async () => {
    const metrics = new Registry()
    const deps = { logger: createLogger({ level: 'silent' }), metrics, clock: { now: () => 0 }, owners: fixedOwner({ uid: 1234 }).lookup }
    const kube = new LocalAccess('kube-proxy:prod', resolve({}), deps)
    const db = new LocalAccess('db-tunnel:orders', resolve({}), deps)
    const s = await accepted()
    await kube.check(s)
    await db.check(s)
    const text = await metrics.metrics()
    assert.match(text, /memid_local_refused_total\{service="kube-proxy:prod"\} 1/)
    assert.match(text, /memid_local_refused_total\{service="db-tunnel:orders"\} 1/)
  })

  it('announce: nothing for the defaults or for "*" on a unix socket; each warning names the address', () => {
    const quiet = access({})
    quiet.a.announce(parseListenAddress('127.0.0.1:8001'))
    assert.equal(quiet.lines.length, 0)
    const lines: Record<string, unknown>[] = []
    const logger = createLogger({ sink: { write: (l: string) => void lines.push(JSON.parse(l)) } as never })
    const onSocket = new LocalAccess('kube-proxy:prod', resolveExposure({ allowedUsers: ['*'] }, parseListenAddress('/run/k.sock')), { logger, metrics: new Registry(), clock: { now: () => 0 } })
    onSocket.announce(parseListenAddress('/run/k.sock'))
    assert.equal(lines.length, 0)
    const remote = new LocalAccess('db-tunnel:orders', resolveExposure({ allowRemote: true }, parseListenAddress('0.0.0.0:6432')), { logger, metrics: new Registry(), clock: { now: () => 0 } })
    remote.announce(parseListenAddress('0.0.0.0:6432'))
    assert.equal(lines.length, 1)
    assert.equal(lines[0]?.listen, '0.0.0.0:6432')
    assert.match(String(lines[0]?.msg), /\(allow_remote: true\); connections from other hosts are refused unless allowed_users is \["\*"\]$/)
    const open = new LocalAccess('db-tunnel:orders', resolveExposure({ allowRemote: true, allowedUsers: ['*'] }, parseListenAddress('0.0.0.0:6432')), { logger, metrics: new Registry(), clock: { now: () => 0 } })
    open.announce(parseListenAddress('0.0.0.0:6432'))
    assert.equal(lines.length, 3)
    assert.match(String(lines[1]?.msg), /\(allow_remote: true\)$/)
    assert.match(String(lines[2]?.msg), /allowed_users is \["\*"\]: the connecting user is not checked/)
    assert.deepEqual([lines[1]?.listen, lines[2]?.listen], ['0.0.0.0:6432', '0.0.0.0:6432'])
  })

  it('announce: a TCP listener checked by reading /proc/net/tcp warns once that the sock-diag addon is missing; sock_diag, a unix socket or "*" do not', () => {
    const slow = access({}, new ProcNetPeerOwners(path.join(dir, 'no-proc')))
    slow.a.announce(parseListenAddress('127.0.0.1:8001'))
    assert.equal(slow.lines.length, 1)
    assert.match(String(slow.lines[0]?.msg), /^kube-proxy:prod: the connecting user is found by reading \/proc\/net\/tcp, .*npm run build:native/)
    assert.equal(slow.lines[0]?.listen, '127.0.0.1:8001')
    const fast = access({}, fixedOwner({ uid: own }).lookup)
    fast.a.announce(parseListenAddress('127.0.0.1:8001'))
    assert.equal(fast.lines.length, 0)
    const any = access({ allowedUsers: ['*'] }, new ProcNetPeerOwners(path.join(dir, 'no-proc')))
    any.a.announce(parseListenAddress('127.0.0.1:8001'))
    assert.equal(any.lines.filter((l) => /\/proc\/net\/tcp/.test(String(l.msg))).length, 0)
    const sock = access({}, new ProcNetPeerOwners(path.join(dir, 'no-proc')))
    sock.a.announce(parseListenAddress('/run/k.sock'))
    assert.equal(sock.lines.length, 0)
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
