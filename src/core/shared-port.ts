import type net from 'node:net'
import { listen, type ListenAddress } from './listener.ts'

/**
 * A TCP listener one of several worker threads shares (SO_REUSEPORT): the kernel spreads
 * new connections over every socket bound to the port. Linux lets only sockets of the
 * same user join a reuseport group, so another user cannot bind in and take connections.
 *
 * It also counts what this thread accepted, so `memid status` can show how the kernel
 * spread the load (and tests can tell that every worker served).
 */
export class SharedPort {
  /** The port to join, set before the service starts; 0 for the first worker, which lets the kernel pick. */
  port = 0
  /** Which worker this is; the first one speaks for all in once-per-service log lines. */
  readonly index: number
  accepted = 0
  open = 0

  constructor(index: number) {
    this.index = index
  }

  /** Binds `server` to `addr` on the shared port, with reusePort. */
  async listen(server: net.Server, addr: ListenAddress): Promise<ListenAddress> {
    server.on('connection', (socket: net.Socket) => {
      this.accepted++
      this.open++
      socket.once('close', () => this.open--)
    })
    const at = addr.kind === 'tcp' && this.port !== 0 ? { ...addr, port: this.port } : addr
    return listen(server, at, { reusePort: true })
  }
}

/** Binds through the shared port when the service runs in a worker thread, alone otherwise. */
export function bindListener(server: net.Server, addr: ListenAddress, shared: SharedPort | undefined): Promise<ListenAddress> {
  return shared !== undefined && addr.kind === 'tcp' ? shared.listen(server, addr) : listen(server, addr)
}

/**
 * True in the thread that logs what is said once per service (the exposure warnings):
 * the main thread, or the first of the workers sharing the port.
 */
export function speaksForService(shared: SharedPort | undefined): boolean {
  return shared === undefined || shared.index === 0
}
