import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { endianness, tmpdir } from 'node:os'
import path from 'node:path'
import { addressBytes, ProcNetPeerOwners, SockDiagPeerOwners, sharedPeerOwners, sockDiagMissing, type ConnectionEnds, type PeerOwners } from '../../../src/core/peer-owner.ts'
import { loadSockDiag, type SockDiagLookup } from '../../../src/core/sock-diag.ts'

const HEADER = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode'

/** A row as the kernel prints it: `sl: local remote st tx:rx tr:when retrnsmt uid timeout inode …`. */
function row(sl: number, local: string, remote: string, state: string, uid: number, inode: number): string {
  return `${String(sl).padStart(4)}: ${local} ${remote} ${state} 00000000:00000000 00:00000000 00000000 ${String(uid).padStart(5)}        0 ${inode} 1 0000000000000000 20 4 30 10 -1`
}

/** 127.0.0.1 the way /proc prints it on this machine. */
const LO = endianness() === 'LE' ? '0100007F' : '7F000001'
const hexPort = (p: number) => p.toString(16).toUpperCase().padStart(4, '0')
const ends = (remotePort: number, localPort = 8001, local = '127.0.0.1', remote = '127.0.0.1'): ConnectionEnds => ({
  localAddress: local, localPort, remoteAddress: remote, remotePort,
})

describe('the sock-diag addon', () => {
  it('is built and used on Linux (npm install builds it; without it every connection batch walks /proc/net/tcp)', { skip: process.platform !== 'linux' }, () => {
    assert.equal(sockDiagMissing, undefined, `install gcc and libc6-dev (apt-get install gcc libc6-dev), then run npm run build:native: ${sockDiagMissing}`)
    assert.equal(sharedPeerOwners.method, 'sock_diag')
  })

  it('a missing or broken addon file is reported, not thrown', () => {
    const missing = loadSockDiag('/nonexistent/sock-diag.node')
    assert.ok('why' in missing && /not built/.test(missing.why))
    const dir = mkdtempSync(path.join(tmpdir(), 'memid-addon-'))
    try {
      writeFileSync(path.join(dir, 'bad.node'), 'not an ELF file')
      const bad = loadSockDiag(path.join(dir, 'bad.node'))
      assert.ok('why' in bad && /cannot be loaded/.test(bad.why))
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('an error other than "no such socket" falls back to the /proc walk; "no such socket" does not', async () => {
    const asked: string[] = []
    const fallback: PeerOwners = { method: 'fake', owner: async () => { asked.push('fallback'); return { uid: 4242 } } }
    const eafnosupport: SockDiagLookup = () => [97, 0, 0]
    assert.deepEqual(await new SockDiagPeerOwners(eafnosupport, fallback).owner(ends(40000)), { uid: 4242 })
    const enoent: SockDiagLookup = () => [2, 0, 0]
    const none = await new SockDiagPeerOwners(enoent, fallback).owner(ends(40000))
    assert.equal(none.uid, undefined)
    assert.deepEqual(asked, ['fallback'])
  })

  it('a found socket with inode 0 (closed, TIME_WAIT) has no owner, not root', async () => {
    const timeWait: SockDiagLookup = () => [0, 0, 0]
    const owner = await new SockDiagPeerOwners(timeWait).owner(ends(40000))
    assert.equal(owner.uid, undefined)
  })

  it('asks for an IPv4 client as AF_INET, then as an AF_INET6 socket holding the mapped address', async () => {
    const calls: string[] = []
    const onlyV6: SockDiagLookup = (family, src, sport, dst, dport) => {
      calls.push(`${family} ${Buffer.from(src).toString('hex')}:${sport} ${Buffer.from(dst).toString('hex')}:${dport}`)
      return family === 6 ? [0, 1234, 99] : [2, 0, 0]
    }
    assert.deepEqual(await new SockDiagPeerOwners(onlyV6).owner(ends(40000, 8001)), { uid: 1234 })
    assert.deepEqual(calls, [
      '4 7f000001:40000 7f000001:8001',
      '6 00000000000000000000ffff7f000001:40000 00000000000000000000ffff7f000001:8001',
    ])
  })
})

const diag = loadSockDiag()
const implementations: [string, () => PeerOwners & { close?(): void }][] = [['ProcNetPeerOwners', () => new ProcNetPeerOwners()]]
if ('lookup' in diag) implementations.push(['SockDiagPeerOwners', () => new SockDiagPeerOwners(diag.lookup, { method: 'none', owner: async () => ({ uid: undefined, why: 'no fallback in this test' }) })])

for (const [name, make] of implementations) describe(`${name} against real loopback connections`, () => {
  const lookup = make()
  const servers: net.Server[] = []
  const sockets: net.Socket[] = []
  after(() => {
    for (const s of sockets) s.destroy()
    for (const s of servers) s.close()
    lookup.close?.()
  })

  async function pair(host: string, n = 20): Promise<net.Socket[]> {
    const accepted: net.Socket[] = []
    const server = net.createServer((s) => accepted.push(s))
    servers.push(server)
    await new Promise<void>((r) => server.listen(0, host, r))
    const port = (server.address() as net.AddressInfo).port
    const clients = await Promise.all(Array.from({ length: n }, () => new Promise<net.Socket>((resolve, reject) => {
      const c = net.connect(port, host, () => resolve(c)).once('error', reject)
    })))
    sockets.push(...clients)
    while (accepted.length < clients.length) await new Promise((r) => setTimeout(r, 5))
    sockets.push(...accepted)
    return accepted
  }
  const endsOf = (s: net.Socket): ConnectionEnds => ({
    localAddress: s.localAddress as string, localPort: s.localPort as number, remoteAddress: s.remoteAddress as string, remotePort: s.remotePort as number,
  })

  it('finds this process as the owner of 20 IPv4 clients accepted at once', async () => {
    const accepted = await pair('127.0.0.1')
    const owners = await Promise.all(accepted.map((s) => lookup.owner(endsOf(s))))
    assert.deepEqual(owners, accepted.map(() => ({ uid: process.geteuid?.() })))
  })

  it('finds the owner of IPv6 (::1) clients in tcp6', async (t) => {
    let accepted: net.Socket[]
    try {
      accepted = await pair('::1')
    } catch (err) {
      return t.skip(`no IPv6 loopback on this machine: ${(err as Error).message}`)
    }
    const owners = await Promise.all(accepted.map((s) => lookup.owner(endsOf(s))))
    assert.deepEqual(owners, accepted.map(() => ({ uid: process.geteuid?.() })))
  })

  it('a connection whose client socket does not exist has no owner', async () => {
    const owner = await lookup.owner(ends(1, 1))
    assert.equal(owner.uid, undefined)
  })

  it('a client that closed its socket before the lookup has no owner (not root)', async () => {
    const [accepted] = await pair('127.0.0.1', 1)
    const s = accepted as net.Socket
    const e = endsOf(s)
    const client = sockets.find((c) => c.localPort === e.remotePort && c !== s) as net.Socket
    await new Promise<void>((resolve) => { s.once('end', resolve); client.end(); client.destroy() })
    const owner = await lookup.owner(e)
    assert.equal(owner.uid, undefined)
  })
})

describe('ProcNetPeerOwners against hand-made tables', () => {
  let dir: string
  before(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'memid-procnet-'))
    writeFileSync(path.join(dir, 'tcp'), [
      HEADER,
      row(0, `${LO}:1F41`, '00000000:0000', '0A', 0, 100),
      // Our own end of the connection from port 0xA001: our uid, not the client's.
      row(1, `${LO}:1F41`, `${LO}:A001`, '01', 0, 101),
      row(2, `${LO}:A001`, `${LO}:1F41`, '01', 1234, 102),
      // A client that already closed: TIME_WAIT prints uid 0 and inode 0.
      row(3, `${LO}:A002`, `${LO}:1F41`, '06', 0, 0),
      '',
    ].join('\n'))
    const lo6 = `0000000000000000FFFF0000${LO}`
    writeFileSync(path.join(dir, 'tcp6'), [
      HEADER,
      row(0, `${lo6}:A003`, `${lo6}:1F41`, '01', 4321, 103),
      '',
    ].join('\n'))
  })
  after(() => rmSync(dir, { recursive: true, force: true }))

  it('reads the uid of the client\'s row, not of the server\'s own end', async () => {
    const l = new ProcNetPeerOwners(dir)
    assert.deepEqual(await l.owner(ends(0xa001)), { uid: 1234 })
    l.close()
  })

  it('a TIME_WAIT row (inode 0, uid column 0) is not taken for root', async () => {
    const l = new ProcNetPeerOwners(dir)
    assert.deepEqual(await l.owner(ends(0xa002)), { uid: undefined, why: 'the client closed its socket' })
    l.close()
  })

  it('an IPv4 client holding an AF_INET6 socket is found in tcp6 in its mapped form', async () => {
    const l = new ProcNetPeerOwners(dir)
    assert.deepEqual(await l.owner(ends(0xa003)), { uid: 4321 })
    assert.deepEqual(await l.owner(ends(0xa003, 8001, '::ffff:127.0.0.1', '::ffff:127.0.0.1')), { uid: 4321 })
    l.close()
  })

  it('several lookups in one turn are answered by one walk, each with its own row', async () => {
    const l = new ProcNetPeerOwners(dir)
    const got = await Promise.all([0xa001, 0xa002, 0xa003, 0xa004].map((p) => l.owner(ends(p))))
    assert.deepEqual(got.map((o) => o.uid), [1234, undefined, 4321, undefined])
    l.close()
  })

  it('without /proc (another OS, a sandbox) the owner is unknown, with the reason', async () => {
    const l = new ProcNetPeerOwners(path.join(dir, 'missing'))
    const o = await l.owner(ends(0xa001))
    assert.equal(o.uid, undefined)
    assert.match((o as { why: string }).why, /missing\/tcp6? cannot be read on this system/)
  })

  it('a hex port shorter than 4 digits is padded as the kernel does', async () => {
    writeFileSync(path.join(dir, 'tcp'), [HEADER, row(0, `${LO}:${hexPort(80)}`, `${LO}:${hexPort(8001)}`, '01', 77, 5), ''].join('\n'))
    const l = new ProcNetPeerOwners(dir)
    assert.deepEqual(await l.owner(ends(80)), { uid: 77 })
    l.close()
  })
})

describe('addressBytes', () => {
  it('reads IPv4, IPv6 and IPv4-mapped IPv6 as Node reports them', () => {
    assert.deepEqual([...addressBytes('127.0.0.1') as Uint8Array], [127, 0, 0, 1])
    assert.deepEqual([...addressBytes('::ffff:127.0.0.1') as Uint8Array], [127, 0, 0, 1])
    assert.deepEqual([...addressBytes('::1') as Uint8Array], [...new Array(15).fill(0), 1])
    assert.deepEqual([...addressBytes('fe80::1:2%eth0') as Uint8Array], [0xfe, 0x80, ...new Array(10).fill(0), 0, 1, 0, 2])
    assert.equal(addressBytes('/run/x.sock'), undefined)
    assert.equal(addressBytes(undefined), undefined)
  })
  it('gives the same bytes for the same text again (parsed once per address), and keeps texts that are not addresses undefined', () => {
    const first = addressBytes('10.1.2.3')
    assert.equal(addressBytes('10.1.2.3'), first)
    assert.deepEqual([...first as Uint8Array], [10, 1, 2, 3])
    assert.equal(addressBytes('not-an-address'), undefined)
    assert.equal(addressBytes('not-an-address'), undefined)
    // Past the cache's bound, addresses are still parsed right.
    for (let i = 0; i < 1100; i++) assert.deepEqual([...addressBytes(`10.0.${i >> 8}.${i & 255}`) as Uint8Array], [10, 0, i >> 8, i & 255])
  })
})
