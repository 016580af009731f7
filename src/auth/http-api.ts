import type { IncomingMessage } from 'node:http'
import type { TLSSocket } from 'node:tls'
import type { z } from 'zod'
import { MemidError } from '../core/errors.ts'
import { Router, readJsonBody, sendJson } from '../core/http.ts'
import { parseWith } from '../core/validate.ts'
import type { AuthService, Peer } from './auth-service.ts'
import type { RateLimiter } from './rate-limit.ts'
import { dbCertSchema, heartbeatSchema, joinSchema, kubeCertSchema, renewSchema, sshCertSchema } from '../api/schemas.ts'

/**
 * The peer of each TLS connection, read once per connection (once per request it was 3.6%
 * of the server's CPU under renewal load). The server refuses renegotiation (SSL_OP_NO_RENEGOTIATION in
 * server.ts) and never asks for post-handshake authentication, so what the handshake
 * verified is what the connection keeps: the certificate and `authorized` cannot change.
 */
const peers = new WeakMap<TLSSocket, Peer>()

function peerOf(req: IncomingMessage): Peer {
  const socket = req.socket as TLSSocket
  let peer = peers.get(socket)
  if (peer === undefined) {
    peer = readPeer(socket)
    peers.set(socket, peer)
  }
  return peer
}

function readPeer(socket: TLSSocket): Peer {
  const remoteAddr = socket.remoteAddress ?? 'unknown'
  if (!socket.authorized) return { remoteAddr }
  // The X509Certificate form: getPeerCertificate() also prints every field and hashes three fingerprints.
  const cert = socket.getPeerX509Certificate()
  return cert ? { remoteAddr, certificate: cert.raw } : { remoteAddr }
}

/** The agent-facing routes under /v1. Bodies are parsed at this edge and nowhere else. */
export function agentApiRouter(auth: AuthService, joinLimiter: RateLimiter): Router {
  const router = new Router()
  router.on('GET', '/v1/cas', (_req, res) => sendJson(res, 200, auth.cas()))
  router.on('GET', '/healthz', (_req, res) => sendJson(res, 200, { status: 'ok' }))
  router.on('POST', '/v1/join', async (req, res) => {
    const peer = peerOf(req)
    if (!joinLimiter.take(peer.remoteAddr)) throw new MemidError('ERR_RATE_LIMITED', 'too many join attempts from this address; slow down')
    const body = parseWith(joinSchema, await readJsonBody(req))
    sendJson(res, 200, await auth.join(body, peer))
  })
  // Public by design: platform tokens are rules, not secrets. Limited like joins so it is no oracle to hammer.
  router.on('GET', '/v1/join-tokens/:name', async (req, res, p) => {
    if (!joinLimiter.take(peerOf(req).remoteAddr)) throw new MemidError('ERR_RATE_LIMITED', 'too many join attempts from this address; slow down')
    sendJson(res, 200, await auth.joinTokenInfo(p.name as string))
  })
  const post = <T>(path: string, schema: z.ZodType<T>, handle: (body: T, peer: Peer) => Promise<unknown>) =>
    router.on('POST', path, async (req, res) => sendJson(res, 200, await handle(parseWith(schema, await readJsonBody(req)), peerOf(req))))
  post('/v1/renew', renewSchema, (b, p) => auth.renew(b, p))
  post('/v1/heartbeat', heartbeatSchema, (b, p) => auth.heartbeat(b, p))
  post('/v1/certs/ssh', sshCertSchema, (b, p) => auth.issueSsh(b, p))
  post('/v1/certs/kube', kubeCertSchema, (b, p) => auth.issueKube(b, p))
  post('/v1/certs/db', dbCertSchema, (b, p) => auth.issueDb(b, p))
  return router
}
