import { mkdirSync, lstatSync, chmodSync, unlinkSync, statSync } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { ConfigError, MemidError } from './errors.ts'

/** Where a local service listens: TCP on a host and port, or a unix socket path. */
export type ListenAddress =
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'unix'; path: string }

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1', '[::1]'])

/**
 * Parses `HOST:PORT`, `[v6]:PORT` or an absolute unix socket path. The message names
 * what was wrong; callers prefix the config key path.
 */
export function parseListenAddress(text: string): ListenAddress {
  if (typeof text !== 'string' || text.length === 0) throw new MemidError('ERR_CONFIG', 'must not be empty')
  if (text.startsWith('/')) {
    if (text.length > 100) throw new MemidError('ERR_CONFIG', `socket path is longer than 100 characters: ${text.slice(0, 40)}…`)
    if (text.includes('\0')) throw new MemidError('ERR_CONFIG', 'socket path contains a NUL byte')
    return { kind: 'unix', path: path.normalize(text) }
  }
  const m = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(text)
  if (!m) throw new MemidError('ERR_CONFIG', `must be host:port or an absolute socket path, got "${printable(text)}"`)
  const port = Number(m[2])
  if (port > 65535) throw new MemidError('ERR_CONFIG', `port ${port} is out of range`)
  const host = (m[1] as string).replace(/^\[(.*)\]$/, '$1')
  return { kind: 'tcp', host, port }
}

/** `parseListenAddress` for a config value: the error is a ConfigError naming the key (`listen: …`). */
export function parseListenAt(text: string, key: string): ListenAddress {
  try {
    return parseListenAddress(text)
  } catch (err) {
    throw new ConfigError(`${key}: ${err instanceof Error ? err.message : String(err)}`)
  }
}

/** True for addresses only reachable from this machine. */
export function isLoopback(addr: ListenAddress): boolean {
  return addr.kind === 'unix' || LOOPBACK.has(addr.host) || addr.host.startsWith('127.')
}

export function formatAddress(addr: ListenAddress): string {
  if (addr.kind === 'unix') return addr.path
  return addr.host.includes(':') ? `[${addr.host}]:${addr.port}` : `${addr.host}:${addr.port}`
}

function printable(s: string): string {
  return s.replace(/[^\x20-\x7e]/g, '?').slice(0, 80)
}

/**
 * Makes sure the socket's directory exists with mode 0700 and belongs to us, and that
 * nothing but a stale socket sits at the path. tbot and cloud-sql-proxy chmod their
 * sockets 0777; we deliberately keep them private to the agent's user.
 */
export async function prepareSocketPath(socketPath: string): Promise<void> {
  const dir = path.dirname(socketPath)
  let st
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 })
    st = statSync(dir)
  } catch (err) {
    // e.g. a path component is a regular file (EEXIST/ENOTDIR) or not writable (EACCES).
    throw new MemidError('ERR_LISTEN', `cannot create the socket directory ${dir}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`)
  }
  const uid = process.getuid?.() ?? st.uid
  if (!st.isDirectory()) throw new MemidError('ERR_LISTEN', `${dir} is not a directory`)
  if (st.uid !== uid) throw new MemidError('ERR_LISTEN', `directory ${dir} is owned by uid ${st.uid}, not by this user (uid ${uid})`)
  if ((st.mode & 0o077) !== 0) {
    throw new MemidError('ERR_LISTEN', `directory ${dir} has mode ${(st.mode & 0o777).toString(8)}; it must be 0700 (chmod 700 ${dir})`)
  }
  let existing
  try {
    existing = lstatSync(socketPath)
  } catch {
    return
  }
  if (!existing.isSocket()) throw new MemidError('ERR_LISTEN', `${socketPath} exists and is not a socket; refusing to replace it`)
  if (await socketAnswers(socketPath)) throw new MemidError('ERR_LISTEN', `${socketPath} is in use by another process`)
  unlinkSync(socketPath)
}

function socketAnswers(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath)
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

/**
 * Binds a server to the address. Unix sockets are created 0600 (umask held for the
 * synchronous bind, then chmod to be sure). Resolves with the real address, so
 * `127.0.0.1:0` comes back with the port the kernel picked.
 */
export async function listen(server: net.Server, addr: ListenAddress): Promise<ListenAddress> {
  if (addr.kind === 'unix') await prepareSocketPath(addr.path)
  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      reject(new MemidError('ERR_LISTEN', `cannot listen on ${formatAddress(addr)}: ${err.code ?? err.message}`))
    }
    server.once('error', onError)
    const done = () => {
      server.off('error', onError)
      resolve()
    }
    if (addr.kind === 'unix') {
      const old = process.umask(0o177)
      try {
        server.listen(addr.path, done)
      } finally {
        process.umask(old)
      }
    } else {
      server.listen({ host: addr.host, port: addr.port, exclusive: true }, done)
    }
  })
  if (addr.kind === 'unix') {
    chmodSync(addr.path, 0o600)
    return addr
  }
  const bound = server.address() as net.AddressInfo
  return { kind: 'tcp', host: addr.host, port: bound.port }
}

/** Removes a unix socket file we created; TCP needs nothing. */
export function removeSocketFile(addr: ListenAddress): void {
  if (addr.kind !== 'unix') return
  try {
    if (lstatSync(addr.path).isSocket()) unlinkSync(addr.path)
  } catch {
    // already gone
  }
}

/**
 * Tracks open connections so a service can stop accepting, give them until a deadline
 * to finish, then destroy the rest.
 */
export class ConnectionTracker {
  readonly #open = new Set<net.Socket>()

  add(socket: net.Socket): void {
    this.#open.add(socket)
    socket.once('close', () => this.#open.delete(socket))
  }

  get size(): number {
    return this.#open.size
  }

  /** Resolves once every tracked socket closed, or destroys them at the deadline. */
  async drain(deadlineMs: number): Promise<void> {
    const until = Date.now() + Math.max(0, deadlineMs)
    while (this.#open.size > 0 && Date.now() < until) {
      await new Promise((r) => setTimeout(r, Math.min(50, Math.max(1, until - Date.now()))))
    }
    for (const s of this.#open) s.destroy()
    this.#open.clear()
  }
}

/**
 * Stops accepting at once and resolves when the server has fully closed, which Node does
 * only after every open connection has ended: start it, drain, then await it.
 */
export function closeServer(server: net.Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve()
    server.close(() => resolve())
  })
}
