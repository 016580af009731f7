/**
 * The handshake floor under the auth service (bench/auth.ts, bench/_renew-profile.ts): a
 * bare node:https server with the auth API's TLS options and no memid code, in a file of
 * its own so the benches' other children do not load the auth server's modules.
 */
import https from 'node:https'
import type net from 'node:net'
import type { TLSSocket } from 'node:tls'
import { AGENT_API_KEEP_ALIVE_MS, AGENT_API_TLS } from '../src/auth/server.ts'
import { firstMessage } from './_common.ts'

/** What serveFloor needs, sent over IPC: its key and certificate, and the CA its clients' certificates come from. */
export interface FloorMaterial { keyPem: string; certPem: string; caPem: string }

/**
 * The floor under the auth service: a bare node:https server with the auth API's TLS
 * options (AGENT_API_TLS: P-256, client certificate requested and verified, no session
 * resumption) and no memid code, answering a heartbeat-sized JSON. Run as a bench role
 * (its script calls it for `--role floor`); it sends `{ port }` once listening.
 */
export async function serveFloor(): Promise<void> {
  const m = await firstMessage<FloorMaterial>()
  const server = https.createServer({
    key: m.keyPem, cert: m.certPem + m.caPem, ca: [m.caPem], ...AGENT_API_TLS,
  }, (req, res) => {
    req.resume()
    req.on('end', () => {
      const body = JSON.stringify({ generation: (req.socket as TLSSocket).authorized ? 1 : 0 })
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body)
    })
  })
  server.keepAliveTimeout = AGENT_API_KEEP_ALIVE_MS
  process.once('SIGTERM', () => process.exit(0))
  server.listen(0, '127.0.0.1', () => process.send?.({ port: (server.address() as net.AddressInfo).port }))
}
