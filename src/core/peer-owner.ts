import { closeSync, openSync, read } from 'node:fs'
import net from 'node:net'
import { endianness } from 'node:os'
import { loadSockDiag, type SockDiagLookup } from './sock-diag.ts'

/**
 * Who owns the other end of a TCP connection accepted on this host: the uid of the
 * process that created the client's socket. Both ends of a loopback connection are
 * sockets of this network namespace, so the kernel knows the client's socket: its local
 * address is the connection's remote one and the other way round.
 *
 * Two ways to ask:
 * - `SockDiagPeerOwners`: the kernel's socket-diagnostics netlink interface, by exact
 *   4-tuple (one hash lookup, ~10 µs, synchronous). Needs the small native addon that
 *   `npm install` builds (`native/sock-diag.c`).
 * - `ProcNetPeerOwners`: `/proc/net/tcp` and `tcp6`, when the addon is missing. Reading
 *   those files costs the kernel a walk over every bucket of the TCP hash tables (262,144
 *   on a machine with a few GB, ~3 ms of CPU) whatever the number of sockets, so walks
 *   run on libuv's thread pool and one walk serves every connection waiting for it.
 */
export type PeerOwner = { uid: number } | { uid: undefined; why: string }

/** The two ends of an accepted connection, as `socket.localAddress` etc. report them. */
export interface ConnectionEnds {
  localAddress: string
  localPort: number
  remoteAddress: string
  remotePort: number
}

/** A way to find peer owners; `sharedPeerOwners` picks the best this host has. */
export interface PeerOwners {
  /** How owners are found, for the start log: `sock_diag` or `/proc/net/tcp`. */
  readonly method: string
  /** Resolves with the owner of the connection's client socket, or why it is unknown. Never rejects. */
  owner(ends: ConnectionEnds): Promise<PeerOwner>
}

type Table = 'tcp' | 'tcp6'

interface Waiter {
  /** `: <peer local> <peer remote> ` as the table prints the client's row, per table. */
  keys: Partial<Record<Table, Buffer>>
  /** Tables walked from start to end since this waiter joined. */
  covered: Set<Table>
  resolve(owner: PeerOwner): void
}

/**
 * A read of these files returns one buffer of the kernel's (a page, 4 KiB or more) less at
 * most one row; a shorter read was the last one. Rows are 150 bytes (tcp) or 179 (tcp6).
 */
const LAST_READ_BELOW = 4096 - 512
const READ_SIZE = 64 * 1024
const LE = endianness() === 'LE'

/**
 * Looks up peer owners in walks of `/proc/net/tcp` shared by every waiting connection:
 * - one walk serves every connection waiting for it, including those accepted while it
 *   runs (their rows count once read after they were accepted), and stops as soon as
 *   none is left waiting;
 * - it never reads to the end of the file: the read that returns 0 makes the kernel walk
 *   the whole table a second time.
 * Tests point `procNet` at a directory of hand-made tables.
 */
export class ProcNetPeerOwners implements PeerOwners {
  readonly method = '/proc/net/tcp'
  readonly #dir: string
  #waiting: Waiter[] = []
  #walking = false
  readonly #fds = new Map<Table, number | null>()
  #why: Partial<Record<Table, string>> = {}
  // Room for one read plus the unfinished row carried over from the previous one.
  readonly #buf = Buffer.allocUnsafe(READ_SIZE + 1024)

  constructor(procNet = '/proc/net') {
    this.#dir = procNet
  }

  /** Resolves with the owner of the connection's client socket, or why it is unknown. */
  owner(ends: ConnectionEnds): Promise<PeerOwner> {
    const peer = addressBytes(ends.remoteAddress)
    const self = addressBytes(ends.localAddress)
    if (peer === undefined || self === undefined) return Promise.resolve({ uid: undefined, why: 'not a TCP connection' })
    return new Promise((resolve) => {
      // A client socket made with AF_INET is in `tcp`; one made with AF_INET6 (IPv6, or an
      // IPv4 address in its mapped form) is in `tcp6`.
      const keys: Partial<Record<Table, Buffer>> = { tcp6: rowKey(hex6(mapped(peer), ends.remotePort), hex6(mapped(self), ends.localPort)) }
      if (peer.length === 4 && self.length === 4) keys.tcp = rowKey(hex4(peer, ends.remotePort), hex4(self, ends.localPort))
      this.#waiting.push({ keys, covered: new Set(), resolve })
      if (this.#walking) return
      this.#walking = true
      // Every connection accepted in this turn of the loop joins the same walk.
      setImmediate(() => void this.#walkWhileWaiting())
    })
  }

  /** Closes the table files; a later lookup opens them again. */
  close(): void {
    for (const fd of this.#fds.values()) if (fd !== null) closeSync(fd)
    this.#fds.clear()
  }

  async #walkWhileWaiting(): Promise<void> {
    try {
      // IPv4 clients, the common case, are found in `tcp`; `tcp6` is walked for the rest.
      let table: Table = 'tcp'
      while (this.#waiting.length > 0) {
        if (this.#waiting.some((w) => w.keys[table] !== undefined && !w.covered.has(table))) await this.#walk(table)
        for (const w of this.#waiting) {
          if ((w.keys.tcp === undefined || w.covered.has('tcp')) && w.covered.has('tcp6')) {
            w.resolve({ uid: undefined, why: this.#why.tcp6 ?? this.#why.tcp ?? 'no socket on this host has the other end of the connection' })
          }
        }
        this.#waiting = this.#waiting.filter((w) => !(w.covered.has('tcp6') && (w.keys.tcp === undefined || w.covered.has('tcp'))))
        table = table === 'tcp' ? 'tcp6' : 'tcp'
      }
    } finally {
      this.#walking = false
    }
  }

  /**
   * One walk of a table from its start. Waiters present at the start count it as covered
   * once it ends; those that join meanwhile are matched against the rows read after.
   */
  async #walk(table: Table): Promise<void> {
    const present = new Set(this.#waiting)
    const finish = (why?: string) => {
      if (why !== undefined) this.#why[table] = why
      for (const w of present) w.covered.add(table)
    }
    const fd = this.#fd(table)
    if (fd === null) return finish(`${this.#dir}/${table} cannot be read on this system`)
    const buf = this.#buf
    let carry = 0
    let pos = 0
    for (;;) {
      let n: number
      try {
        // pread from 0 restarts the kernel's walk; after that it resumes where the last read stopped.
        n = await readAt(fd, buf, carry, pos)
      } catch {
        return finish(`${this.#dir}/${table} cannot be read`)
      }
      pos += n
      const end = carry + n
      const complete = buf.lastIndexOf(10, end - 1) + 1
      if (complete > 0) {
        const rows = buf.subarray(0, complete)
        this.#waiting = this.#waiting.filter((w) => {
          const key = w.keys[table]
          const at = key === undefined ? -1 : rows.indexOf(key)
          if (at < 0) return true
          w.resolve(parseOwner(rows, at + (key as Buffer).length))
          present.delete(w)
          return false
        })
      }
      if (this.#waiting.length === 0 || n < LAST_READ_BELOW) return finish()
      carry = end - complete
      // Rows are under 200 bytes; a longer unfinished one is not a table we know.
      if (carry > 1024) return finish(`${this.#dir}/${table} has an unexpected format`)
      buf.copy(buf, 0, complete, end)
    }
  }

  #fd(table: Table): number | null {
    let fd = this.#fds.get(table)
    if (fd === undefined) {
      try {
        fd = openSync(`${this.#dir}/${table}`, 'r')
      } catch {
        fd = null
      }
      this.#fds.set(table, fd)
    }
    return fd
  }
}

function readAt(fd: number, buf: Buffer, offset: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => read(fd, buf, offset, READ_SIZE, position, (err, n) => (err ? reject(err) : resolve(n))))
}

/**
 * The fields after the addresses: `st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout
 * inode`. A row with inode 0 is a socket no file refers to any more (closed, TIME_WAIT,
 * whose uid column reads 0): its owner is unknown, not root.
 */
function parseOwner(rows: Buffer, from: number): PeerOwner {
  const eol = rows.indexOf(10, from)
  const fields = rows.toString('latin1', from, eol < 0 ? rows.length : eol).trim().split(/ +/)
  const uid = Number(fields[4])
  const inode = Number(fields[6])
  if (!Number.isInteger(uid) || !Number.isInteger(inode)) return { uid: undefined, why: 'unreadable row in /proc/net/tcp' }
  if (inode === 0) return { uid: undefined, why: 'the client closed its socket' }
  return { uid }
}

function rowKey(peer: string, self: string): Buffer {
  return Buffer.from(`: ${peer} ${self} `, 'latin1')
}

/** An address as the kernel prints it: the 32-bit words in host byte order, in hex. */
function hex4(b: Uint8Array, port: number): string {
  return word(b, 0) + ':' + port.toString(16).toUpperCase().padStart(4, '0')
}

function hex6(b: Uint8Array, port: number): string {
  return word(b, 0) + word(b, 4) + word(b, 8) + word(b, 12) + ':' + port.toString(16).toUpperCase().padStart(4, '0')
}

function word(b: Uint8Array, i: number): string {
  const v = LE
    ? ((b[i + 3] as number) << 24 | (b[i + 2] as number) << 16 | (b[i + 1] as number) << 8 | (b[i] as number)) >>> 0
    : ((b[i] as number) << 24 | (b[i + 1] as number) << 16 | (b[i + 2] as number) << 8 | (b[i + 3] as number)) >>> 0
  return v.toString(16).toUpperCase().padStart(8, '0')
}

/** IPv4 as `::ffff:a.b.c.d` (how an AF_INET6 socket holds it); IPv6 unchanged. */
function mapped(b: Uint8Array): Uint8Array {
  if (b.length === 16) return b
  const m = new Uint8Array(16)
  m[10] = 0xff
  m[11] = 0xff
  m.set(b, 12)
  return m
}

/** Parsed addresses by their text: a listener sees the same few (its own, loopback) on every connection. */
const parsedAddresses = new Map<string, Uint8Array | undefined>()
const PARSED_ADDRESSES_MAX = 1024

/**
 * The bytes of an address as Node reports it. An IPv4-mapped IPv6 address comes back
 * as its 4 IPv4 bytes: a dual-stack listener sees IPv4 clients that way. The array is
 * shared with later calls for the same text: read it, never change it.
 */
export function addressBytes(text: string | undefined): Uint8Array | undefined {
  if (text === undefined) return undefined
  if (parsedAddresses.has(text)) return parsedAddresses.get(text)
  // Parsing (two regular expressions, splits) was ~0.07 ms of each connection's check.
  if (parsedAddresses.size >= PARSED_ADDRESSES_MAX) parsedAddresses.clear()
  const bytes = parseAddressBytes(text)
  parsedAddresses.set(text, bytes)
  return bytes
}

function parseAddressBytes(text: string): Uint8Array | undefined {
  const addr = text.replace(/%.*$/, '')
  if (net.isIPv4(addr)) return Uint8Array.from(addr.split('.').map(Number))
  if (!net.isIPv6(addr)) return undefined
  let head = addr
  let tail = ''
  const dbl = addr.indexOf('::')
  if (dbl >= 0) {
    head = addr.slice(0, dbl)
    tail = addr.slice(dbl + 2)
  }
  const groups = (s: string): number[] => {
    if (s === '') return []
    const out: number[] = []
    for (const part of s.split(':')) {
      if (part.includes('.')) {
        const [a, b, c, d] = part.split('.').map(Number) as [number, number, number, number]
        out.push((a << 8) | b, (c << 8) | d)
      } else {
        out.push(parseInt(part, 16))
      }
    }
    return out
  }
  const h = groups(head)
  const t = groups(tail)
  const all = [...h, ...new Array<number>(8 - h.length - t.length).fill(0), ...t]
  const bytes = new Uint8Array(16)
  all.forEach((g, i) => {
    bytes[2 * i] = g >> 8
    bytes[2 * i + 1] = g & 0xff
  })
  const v4mapped = bytes.subarray(0, 10).every((x) => x === 0) && bytes[10] === 0xff && bytes[11] === 0xff
  return v4mapped ? bytes.slice(12) : bytes
}

const ENOENT = 2

/**
 * Looks up peer owners through the sock-diag addon: the kernel finds the client's socket
 * by its exact 4-tuple. An IPv4 client is asked for as AF_INET first, then as an AF_INET6
 * socket holding the address in its mapped form. An error other than "no such socket"
 * (sock_diag unavailable in this sandbox, say) falls back to the `/proc/net/tcp` walk for
 * that connection, so the answer is still the kernel's.
 */
export class SockDiagPeerOwners implements PeerOwners {
  readonly method = 'sock_diag'
  readonly #diag: SockDiagLookup
  readonly #fallback: PeerOwners

  constructor(diag: SockDiagLookup, fallback: PeerOwners = new ProcNetPeerOwners()) {
    this.#diag = diag
    this.#fallback = fallback
  }

  owner(ends: ConnectionEnds): Promise<PeerOwner> {
    const peer = addressBytes(ends.remoteAddress)
    const self = addressBytes(ends.localAddress)
    if (peer === undefined || self === undefined) return Promise.resolve({ uid: undefined, why: 'not a TCP connection' })
    let r = peer.length === 4 && self.length === 4 ? this.#diag(4, peer, ends.remotePort, self, ends.localPort) : undefined
    if (r === undefined || r[0] === ENOENT) r = this.#diag(6, mapped(peer), ends.remotePort, mapped(self), ends.localPort)
    const [errno, uid, inode] = r
    if (errno === ENOENT) return Promise.resolve({ uid: undefined, why: 'no socket on this host has the other end of the connection' })
    if (errno !== 0) return this.#fallback.owner(ends)
    // A socket no file refers to any more (closed, TIME_WAIT) reports inode 0 and uid 0:
    // its owner is unknown, not root.
    if (inode === 0) return Promise.resolve({ uid: undefined, why: 'the client closed its socket' })
    return Promise.resolve({ uid })
  }
}

const diag = loadSockDiag()

/** Why the sock-diag addon is not used on this host, or undefined when it is. */
export const sockDiagMissing: string | undefined = 'why' in diag ? diag.why : undefined

/** The lookup every listener of this process (or worker thread) shares, so one walk serves all of them. */
export const sharedPeerOwners: PeerOwners = 'lookup' in diag ? new SockDiagPeerOwners(diag.lookup) : new ProcNetPeerOwners()

