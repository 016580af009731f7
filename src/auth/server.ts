import { constants as cryptoConstants, generateKeyPairSync, createPublicKey } from 'node:crypto'
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import os from 'node:os'
import type { Socket } from 'node:net'
import type { Clock } from '../core/clock.ts'
import { systemClock } from '../core/clock.ts'
import type { Logger } from '../core/log.ts'
import { MemidError } from '../core/errors.ts'
import { issueLeaf } from '../pki/x509.ts'
import { withPrivateKeyPem } from '../pki/pem.ts'
import { formatAddress, listen, parseListenAddress, removeSocketFile, type ListenAddress } from '../core/listener.ts'
import type { Store } from '../storage/store.ts'
import { AUTH_SERVER_NAME } from '../api/types.ts'
import { AdminService } from './admin.ts'
import { adminRouter } from './admin-socket.ts'
import { AuthService } from './auth-service.ts'
import { caPin, loadOrCreateCas, type CaSet } from './cas.ts'
import { agentApiRouter } from './http-api.ts'
import { RateLimiter } from './rate-limit.ts'
import { Retention } from './retention.ts'

const SERVER_CERT_TTL_MS = 365 * 24 * 3600 * 1000

export interface AuthServerOptions {
  store: Store
  listen: string
  clusterName: string
  /** Where the admin socket is bound; none when omitted. */
  adminSocket?: string
  logger: Logger
  clock?: Clock
  /** Join attempts per second per client address (burst is twice this). */
  joinRate?: number
  /** `instance_ttl` and `audit_retention` (defaults 7 and 90 days); false: no background sweep. */
  retention?: { instanceTtlMs?: number; auditRetentionMs?: number; intervalMs?: number } | false
}

export interface AuthServer {
  /** `host:port` the API really listens on. */
  address: string
  caPin: string
  cas: CaSet
  auth: AuthService
  admin: AdminService
  /** Stops accepting, finishes in-flight requests (up to the deadline), closes the store. */
  stop(deadlineMs?: number): Promise<void>
}

/** Opens the CAs and starts the HTTPS API and the admin socket. */
export async function startAuthServer(opts: AuthServerOptions): Promise<AuthServer> {
  const clock = opts.clock ?? systemClock
  const log = opts.logger
  const addr = parseListenAddress(opts.listen)
  if (addr.kind !== 'tcp') throw new MemidError('ERR_CONFIG', 'listen: the auth service listens on host:port')
  const cas = await loadOrCreateCas(opts.store, opts.clusterName)
  const auth = new AuthService({ store: opts.store, cas, clock, logger: log })
  const admin = new AdminService({ store: opts.store, clock, audit: (ev) => auth.audit(ev), sshHostCa: cas.sshHost.key, clusterName: cas.clusterName })

  const serverKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey
  const ips = new Set(['127.0.0.1', '::1'])
  if (net.isIP(addr.host) && addr.host !== '0.0.0.0' && addr.host !== '::') ips.add(addr.host)
  const dns = new Set([AUTH_SERVER_NAME, 'localhost', os.hostname()])
  if (!net.isIP(addr.host)) dns.add(addr.host)
  const serverCert = await issueLeaf({
    ca: cas.tls, publicKey: createPublicKey(serverKey), commonName: AUTH_SERVER_NAME,
    dnsNames: [...dns].filter((d) => /^[A-Za-z0-9.-]+$/.test(d)), ipAddresses: [...ips], ttlMs: SERVER_CERT_TTL_MS, usage: 'server',
  })

  const api = agentApiRouter(auth, new RateLimiter(opts.joinRate ?? 10, (opts.joinRate ?? 10) * 2))
  const server = withPrivateKeyPem(serverKey, (keyPem) => https.createServer({
    key: keyPem,
    cert: serverCert.pem + cas.tls.certPem,
    ca: [cas.bot.certPem],
    requestCert: true,
    rejectUnauthorized: false,
    minVersion: 'TLSv1.2',
    // No session resumption: a resumed session skips verifying the client certificate
    // (its expiry included) and carries over `authorized` from a handshake long past.
    // Without tickets and without a session cache every connection is a full handshake.
    secureOptions: cryptoConstants.SSL_OP_NO_TICKET,
  }, (req, res) => void api.handle(req, res)))
  hardenServer(server, log)

  const bound = await listen(server, addr)
  const address = formatAddress(bound)

  let adminServer: http.Server | undefined
  let adminAddr: ListenAddress | undefined
  if (opts.adminSocket !== undefined) {
    const router = adminRouter(admin)
    adminServer = http.createServer((req, res) => void router.handle(req, res))
    hardenServer(adminServer, log)
    adminAddr = await listen(adminServer, parseListenAddress(opts.adminSocket))
  }

  const retention = opts.retention === false
    ? undefined
    : new Retention({ store: opts.store, clock, logger: log, audit: (ev) => auth.audit(ev), ...opts.retention })
  retention?.start()

  let stopping: Promise<void> | undefined
  return {
    address, caPin: caPin(cas), cas, auth, admin,
    stop(deadlineMs = 10_000) {
      stopping ??= (async () => {
        await Promise.all([drainHttp(server, deadlineMs), adminServer ? drainHttp(adminServer, deadlineMs) : undefined, retention?.stop()])
        if (adminAddr) removeSocketFile(adminAddr)
        await opts.store.close()
      })()
      return stopping
    },
  }
}

/** Timeouts and error handling so a slow, garbled or hostile client affects only itself. */
function hardenServer(server: http.Server, log: Logger): void {
  server.headersTimeout = 10_000
  server.requestTimeout = 30_000
  server.keepAliveTimeout = 5_000
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    log.debug({ err: err.code ?? err.message }, 'client error')
    if (socket.writable && !socket.destroyed) {
      socket.end('HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{"error":{"code":"ERR_BAD_REQUEST","message":"malformed HTTP request"}}')
    }
    socket.destroy()
  })
  server.on('tlsClientError', (err: NodeJS.ErrnoException) => log.debug({ err: err.code ?? err.message }, 'TLS handshake failed'))
}

async function drainHttp(server: http.Server, deadlineMs: number): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()))
  server.closeIdleConnections()
  const timer = setTimeout(() => server.closeAllConnections(), deadlineMs)
  await closed
  clearTimeout(timer)
}
