import type { IncomingMessage } from 'node:http'
import type { TLSSocket } from 'node:tls'
import { MemidError } from '../core/errors.ts'
import { Router, readJsonBody, sendJson } from '../core/http.ts'
import { parseWith } from '../core/validate.ts'
import type { AuthService, Peer } from './auth-service.ts'
import type { RateLimiter } from './rate-limit.ts'
import { dbCertSchema, heartbeatSchema, joinSchema, kubeCertSchema, renewSchema, sshCertSchema } from './schemas.ts'

function peerOf(req: IncomingMessage): Peer {
  const socket = req.socket as TLSSocket
  const remoteAddr = socket.remoteAddress ?? 'unknown'
  if (!socket.authorized) return { remoteAddr }
  const cert = socket.getPeerCertificate()
  return cert && cert.raw ? { remoteAddr, certificate: cert.raw } : { remoteAddr }
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
  router.on('POST', '/v1/renew', async (req, res) => {
    const body = parseWith(renewSchema, await readJsonBody(req))
    sendJson(res, 200, await auth.renew(body, peerOf(req)))
  })
  router.on('POST', '/v1/heartbeat', async (req, res) => {
    const body = parseWith(heartbeatSchema, await readJsonBody(req))
    sendJson(res, 200, await auth.heartbeat(body, peerOf(req)))
  })
  router.on('POST', '/v1/certs/ssh', async (req, res) => {
    const body = parseWith(sshCertSchema, await readJsonBody(req))
    sendJson(res, 200, await auth.issueSsh(body, peerOf(req)))
  })
  router.on('POST', '/v1/certs/kube', async (req, res) => {
    const body = parseWith(kubeCertSchema, await readJsonBody(req))
    sendJson(res, 200, await auth.issueKube(body, peerOf(req)))
  })
  router.on('POST', '/v1/certs/db', async (req, res) => {
    const body = parseWith(dbCertSchema, await readJsonBody(req))
    sendJson(res, 200, await auth.issueDb(body, peerOf(req)))
  })
  return router
}
