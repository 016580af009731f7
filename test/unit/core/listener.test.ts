import { after, before, describe, it, mock } from 'node:test'
import assert from 'node:assert/strict'
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import {
  ConnectionTracker, closeServer, formatAddress, isLoopback, isLoopbackHost, listen, parseListenAddress, parseListenAt, removeSocketFile, type ListenAddress,
} from '../../../src/core/listener.ts'
import { ConfigError, MemidError } from '../../../src/core/errors.ts'

let base: string
const servers: net.Server[] = []

before(() => {
  base = mkdtempSync(path.join(tmpdir(), 'memid-listener-'))
  chmodSync(base, 0o700)
})
after(async () => {
  for (const s of servers) await closeServer(s)
  rmSync(base, { recursive: true, force: true })
})

function server(): net.Server {
  const s = net.createServer((c) => {
    // The "in use" probe connects and hangs up at once.
    c.on('error', () => {})
    c.end('hello\n')
  })
  servers.push(s)
  return s
}

function unix(p: string): ListenAddress {
  return { kind: 'unix', path: p }
}

function connectAndRead(p: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect(p)
    let got = ''
    c.on('data', (d) => (got += d.toString()))
    c.on('end', () => resolve(got))
    c.on('error', reject)
  })
}

async function refused(p: Promise<unknown>, message: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof MemidError, String(err))
    assert.equal(err.code, 'ERR_LISTEN')
    assert.match(err.message, message)
    return true
  })
}

/** A socket file nobody listens on, as a crashed agent leaves behind. */
async function staleSocket(p: string): Promise<void> {
  const live = `${p}.live`
  const s = net.createServer()
  await new Promise<void>((resolve) => s.listen(live, resolve))
  // Node unlinks the path on close; moving the socket first leaves it behind unanswered.
  renameSync(live, p)
  await new Promise((resolve) => s.close(resolve))
}

describe('parseListenAddress', () => {
  it('reads host:port, [v6]:port and absolute socket paths', () => {
    assert.deepEqual(parseListenAddress('127.0.0.1:8001'), { kind: 'tcp', host: '127.0.0.1', port: 8001 })
    assert.deepEqual(parseListenAddress('localhost:0'), { kind: 'tcp', host: 'localhost', port: 0 })
    assert.deepEqual(parseListenAddress('[::1]:6432'), { kind: 'tcp', host: '::1', port: 6432 })
    assert.deepEqual(parseListenAddress('db.internal:65535'), { kind: 'tcp', host: 'db.internal', port: 65535 })
    assert.deepEqual(parseListenAddress('/run/memid/agent.sock'), { kind: 'unix', path: '/run/memid/agent.sock' })
    assert.deepEqual(parseListenAddress('/run//memid/./x/../.s.PGSQL.5432'), { kind: 'unix', path: '/run/memid/.s.PGSQL.5432' })
  })

  it('refuses everything else with a clear ERR_CONFIG message', () => {
    const cases: [string, RegExp][] = [
      ['', /empty/],
      ['localhost', /host:port or an absolute socket path/],
      [':8080', /host:port/],
      ['127.0.0.1:', /host:port/],
      ['127.0.0.1:123456', /host:port/],
      ['127.0.0.1:70000', /out of range/],
      ['agent.sock', /host:port or an absolute socket path/],
      ['./agent.sock', /host:port/],
      ['http://127.0.0.1:80', /host:port/],
      ['a b:1', /host:port/],
      ['::1:80', /host:port/],
      ['127.0.0.1:80\n', /host:port/],
      [`/${'x'.repeat(100)}`, /longer than 100/],
      ['/run/a\0b', /NUL/],
    ]
    for (const [text, message] of cases) {
      assert.throws(() => parseListenAddress(text), (err: unknown) => {
        assert.ok(err instanceof MemidError, JSON.stringify(text))
        assert.equal(err.code, 'ERR_CONFIG')
        assert.match(err.message, message, JSON.stringify(text))
        assert.doesNotMatch(err.message, /[\n\0]/)
        return true
      })
    }
  })

  it('a socket path of exactly 100 characters is taken; a longer one is named by its first 40', () => {
    const p100 = `/${'x'.repeat(99)}`
    assert.deepEqual(parseListenAddress(p100), { kind: 'unix', path: p100 })
    assert.throws(() => parseListenAddress(`/${'y'.repeat(100)}`), { message: `socket path is longer than 100 characters: /${'y'.repeat(39)}…` })
  })

  it('a value that is not text, or garbage, is an ERR_CONFIG naming at most 80 printable characters of it', () => {
    assert.throws(() => parseListenAddress(8001 as unknown as string), (e: unknown) => e instanceof MemidError && e.code === 'ERR_CONFIG')
    assert.throws(() => parseListenAddress(`\u0001${'z'.repeat(100)}`), { message: `must be host:port or an absolute socket path, got "?${'z'.repeat(79)}"` })
  })

  it('parseListenAt names the config key in a ConfigError', () => {
    assert.deepEqual(parseListenAt('127.0.0.1:1', 'listen'), { kind: 'tcp', host: '127.0.0.1', port: 1 })
    assert.throws(() => parseListenAt('nope', 'services[2].listen'),
      (e: unknown) => e instanceof ConfigError && e.message === 'services[2].listen: must be host:port or an absolute socket path, got "nope"')
  })

  it('isLoopbackHost takes bracketed IPv6 too', () => {
    for (const h of ['[::1]', '[::ffff:127.0.0.1]', '[0:0::1]']) assert.equal(isLoopbackHost(h), true, h)
    for (const h of ['[::2]', '[]', '[::1']) assert.equal(isLoopbackHost(h), false, h)
  })

  it('isLoopback and formatAddress', () => {
    for (const a of ['127.0.0.1:1', '127.1.2.3:1', 'localhost:1', '[::1]:1', '/run/x.sock']) assert.ok(isLoopback(parseListenAddress(a)), a)
    for (const a of ['0.0.0.0:1', '10.0.0.1:1', '[::]:1', 'db.internal:1']) assert.ok(!isLoopback(parseListenAddress(a)), a)
    // A name is whatever DNS says: `127.attacker.example` may point anywhere.
    for (const a of ['127.attacker.example:1', '127.0.0.1.nip.io:1', '[::2]:1', '[::ffff:a00:1]:1']) assert.ok(!isLoopback(parseListenAddress(a)), a)
    for (const a of ['[0:0:0:0:0:0:0:1]:1', '[::ffff:7f00:1]:1', 'LOCALHOST:1']) assert.ok(isLoopback(parseListenAddress(a)), a)
    for (const a of ['127.0.0.1:8001', '[::1]:6432', '/run/x.sock']) assert.equal(formatAddress(parseListenAddress(a)), a)
  })
})

describe('listen on a unix socket', () => {
  it('creates missing directories 0700 and the socket 0600, whatever the umask', async () => {
    const p = path.join(base, 'fresh', 'nested', 'agent.sock')
    const old = process.umask(0)
    let bound: ListenAddress
    try {
      bound = await listen(server(), unix(p))
    } finally {
      process.umask(old)
    }
    assert.deepEqual(bound, unix(p))
    assert.equal(statSync(path.join(base, 'fresh')).mode & 0o777, 0o700)
    assert.equal(statSync(path.dirname(p)).mode & 0o777, 0o700)
    const st = lstatSync(p)
    assert.ok(st.isSocket())
    assert.equal(st.mode & 0o777, 0o600)
    assert.equal(await connectAndRead(p), 'hello\n')
  })

  it('leaves the process umask as it was', async () => {
    const before = process.umask()
    await listen(server(), unix(path.join(base, 'umask', 'a.sock')))
    assert.equal(process.umask(), before)
  })

  it('replaces a stale socket', async () => {
    const d = path.join(base, 'stale')
    mkdirSync(d, { mode: 0o700 })
    const p = path.join(d, 'agent.sock')
    await staleSocket(p)
    assert.ok(lstatSync(p).isSocket())
    await assert.rejects(connectAndRead(p), /ECONNREFUSED/)
    await listen(server(), unix(p))
    assert.equal(await connectAndRead(p), 'hello\n')
  })

  it('refuses a regular file at the path and leaves it alone', async () => {
    const d = path.join(base, 'file')
    mkdirSync(d, { mode: 0o700 })
    const p = path.join(d, 'agent.sock')
    writeFileSync(p, 'precious')
    await refused(listen(server(), unix(p)), /exists and is not a socket/)
    assert.equal(readFileSync(p, 'utf8'), 'precious')
  })

  it('refuses a directory or a symlink at the path', async () => {
    const d = path.join(base, 'other-kinds')
    mkdirSync(path.join(d, 'a-dir.sock'), { recursive: true, mode: 0o700 })
    chmodSync(d, 0o700)
    await refused(listen(server(), unix(path.join(d, 'a-dir.sock'))), /not a socket/)
    // A symlink to a stale socket elsewhere must not be followed and replaced.
    const target = path.join(base, 'stale', 'elsewhere.sock')
    await staleSocket(target)
    symlinkSync(target, path.join(d, 'link.sock'))
    await refused(listen(server(), unix(path.join(d, 'link.sock'))), /not a socket/)
    assert.ok(lstatSync(target).isSocket(), 'the link target is untouched')
  })

  it('refuses a socket another process is serving ("in use") and leaves it working', async () => {
    const d = path.join(base, 'live')
    mkdirSync(d, { mode: 0o700 })
    const p = path.join(d, 'agent.sock')
    await listen(server(), unix(p))
    await refused(listen(server(), unix(p)), /in use/)
    assert.equal(await connectAndRead(p), 'hello\n')
  })

  it('refuses a directory that others can read (0755), naming the fix', async () => {
    const d = path.join(base, 'open-dir')
    mkdirSync(d)
    chmodSync(d, 0o755)
    const p = path.join(d, 'agent.sock')
    await refused(listen(server(), unix(p)), /mode 755.*0700.*chmod 700/)
    assert.ok(!existsSync(p))
    assert.equal(statSync(d).mode & 0o777, 0o755, 'a directory we did not create is not re-permissioned')
  })

  it('refuses a parent that is not a directory with ERR_LISTEN', async () => {
    const f = path.join(base, 'plain-file')
    writeFileSync(f, '')
    await refused(listen(server(), unix(path.join(f, 'agent.sock'))), /cannot create the socket directory .*plain-file: E/)
  })

  it('refuses a directory owned by another user', { skip: process.getuid?.() !== 0 ? 'chown needs root' : false }, async () => {
    const d = path.join(base, 'foreign')
    mkdirSync(d, { mode: 0o700 })
    chownSync(d, 65534, 65534)
    await refused(listen(server(), unix(path.join(d, 'agent.sock'))), /owned by uid 65534/)
  })

  it('refuses a directory owned by another uid than the process\'s (any user, not only root)', async () => {
    const d = path.join(base, 'not-mine')
    mkdirSync(d, { mode: 0o700 })
    const owner = statSync(d).uid
    const getuid = mock.method(process as { getuid(): number }, 'getuid', () => owner + 1000)
    try {
      await refused(listen(server(), unix(path.join(d, 'agent.sock'))), new RegExp(`owned by uid ${owner}, not by this user \\(uid ${owner + 1000}\\)`))
    } finally {
      getuid.mock.restore()
    }
  })

  it('the socket is chmod 0600 even where the umask could not be applied', async () => {
    const d = path.join(base, 'no-umask')
    mkdirSync(d, { mode: 0o700 })
    const p = path.join(d, 'agent.sock')
    const old = process.umask(0)
    // As in a worker thread, where process.umask(mask) cannot change the mask.
    const umask = mock.method(process, 'umask', () => 0)
    try {
      await listen(server(), unix(p))
    } finally {
      umask.mock.restore()
      process.umask(old)
    }
    assert.equal(lstatSync(p).mode & 0o777, 0o600)
  })

  it('removeSocketFile removes our socket, nothing else, and tolerates absence', async () => {
    const d = path.join(base, 'remove')
    mkdirSync(d, { mode: 0o700 })
    const p = path.join(d, 'agent.sock')
    const s = server()
    await listen(s, unix(p))
    removeSocketFile(unix(p))
    assert.ok(!existsSync(p))
    removeSocketFile(unix(p))
    const f = path.join(d, 'not-a-socket')
    writeFileSync(f, 'keep')
    removeSocketFile(unix(f))
    assert.equal(readFileSync(f, 'utf8'), 'keep')
    removeSocketFile({ kind: 'tcp', host: '127.0.0.1', port: 1 })
  })
})

describe('listen on TCP', () => {
  it('port 0 comes back with the real port; a taken port is ERR_LISTEN', async () => {
    const bound = await listen(server(), { kind: 'tcp', host: '127.0.0.1', port: 0 })
    assert.equal(bound.kind, 'tcp')
    assert.ok(bound.kind === 'tcp' && bound.port > 0)
    const again = bound.kind === 'tcp' ? bound.port : 0
    await refused(listen(server(), { kind: 'tcp', host: '127.0.0.1', port: again }), new RegExp(`^cannot listen on 127\\.0\\.0\\.1:${again}: EADDRINUSE$`))
    const c = net.connect(again, '127.0.0.1')
    const got = await new Promise<string>((resolve, reject) => {
      let s = ''
      c.on('data', (d) => (s += d))
      c.on('end', () => resolve(s))
      c.on('error', reject)
    })
    assert.equal(got, 'hello\n')
  })
})

describe('listen on TCP with reusePort', () => {
  it('several servers (worker threads) bind the same port; without reusePort the second is refused', async () => {
    const first = await listen(server(), { kind: 'tcp', host: '127.0.0.1', port: 0 }, { reusePort: true })
    const port = first.kind === 'tcp' ? first.port : 0
    const second = await listen(server(), { kind: 'tcp', host: '127.0.0.1', port }, { reusePort: true })
    assert.deepEqual(second, { kind: 'tcp', host: '127.0.0.1', port })
    await refused(listen(server(), { kind: 'tcp', host: '127.0.0.1', port }), /EADDRINUSE/)
  })
})

describe('ConnectionTracker', () => {
  async function trackedPair(tracker: ConnectionTracker): Promise<{ srv: net.Server; port: number }> {
    const srv = net.createServer((sock) => tracker.add(sock))
    servers.push(srv)
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
    return { srv, port: (srv.address() as net.AddressInfo).port }
  }

  function client(port: number): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const c = net.connect(port, '127.0.0.1', () => resolve(c))
      c.on('error', reject)
    })
  }

  async function waitFor(cond: () => boolean): Promise<void> {
    for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 5))
    assert.ok(cond())
  }

  it('drain returns early once every connection has closed', async () => {
    const tracker = new ConnectionTracker()
    const { port } = await trackedPair(tracker)
    const a = await client(port)
    const b = await client(port)
    await waitFor(() => tracker.size === 2)
    setTimeout(() => {
      a.end()
      b.end()
    }, 50)
    const t0 = Date.now()
    await tracker.drain(5_000)
    assert.ok(Date.now() - t0 < 2_000, 'did not wait for the deadline')
    assert.equal(tracker.size, 0)
  })

  it('drain destroys what is still open at the deadline', async () => {
    const tracker = new ConnectionTracker()
    const { port } = await trackedPair(tracker)
    const c = await client(port)
    const closed = new Promise<void>((resolve) => c.on('close', () => resolve()))
    c.on('error', () => {})
    await waitFor(() => tracker.size === 1)
    const t0 = Date.now()
    await tracker.drain(200)
    const took = Date.now() - t0
    assert.ok(took >= 190, `waited until the deadline (${took} ms)`)
    assert.ok(took < 2_000, `but not much longer (${took} ms)`)
    assert.equal(tracker.size, 0)
    await closed
  })

  it('drain(0) destroys at once; a negative deadline is treated as 0', async () => {
    const tracker = new ConnectionTracker()
    const { port } = await trackedPair(tracker)
    const c = await client(port)
    c.on('error', () => {})
    await waitFor(() => tracker.size === 1)
    const t0 = Date.now()
    await tracker.drain(-100)
    assert.ok(Date.now() - t0 < 100)
    await new Promise<void>((resolve) => (c.destroyed ? resolve() : c.on('close', () => resolve())))
  })

  it('closeServer resolves for a server that never listened', async () => {
    await closeServer(net.createServer())
  })
})
