import http from 'node:http'
import { AdminService } from '../../src/auth/admin.ts'
import { adminRouter } from '../../src/auth/admin-socket.ts'
import { systemClock } from '../../src/core/clock.ts'
import type { Store } from '../../src/storage/store.ts'

/** memid's admin API (AdminService and its router) over `store`, on the unix socket `sock`; stop it with `close`. */
export async function serveAdmin(store: Store, sock: string): Promise<{ close(): Promise<void> }> {
  const router = adminRouter(new AdminService({ store, clock: systemClock, audit: async (ev) => void (await store.appendAudit(ev)) }))
  const server = http.createServer((req, res) => void router.handle(req, res))
  await new Promise<void>((resolve) => server.listen(sock, resolve))
  return {
    async close() {
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    },
  }
}

/** What the admin socket answers to GET `p` (POST with `body`), unparsed. */
export function adminRaw(sock: string, p: string, body?: unknown): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body)
    const req = http.request({ agent: false, socketPath: sock, path: p, method: payload === undefined ? 'GET' : 'POST', headers: payload ? { 'content-type': 'application/json' } : {} }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }))
    })
    req.on('error', reject)
    req.end(payload)
  })
}
