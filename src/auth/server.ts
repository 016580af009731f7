import { constants as cryptoConstants, generateKeyPairSync, createPublicKey, type KeyObject } from 'node:crypto'
import type { Server } from 'node:http'
import https from 'node:https'
import net from 'node:net'
import os from 'node:os'
import type { Socket } from 'node:net'
import type { Clock } from '../core/clock.ts'
import { systemClock } from '../core/clock.ts'
import type { Logger, LogFormat } from '../core/log.ts'
import { MemidError } from '../core/errors.ts'
import { createHttpServer } from '../core/http.ts'
import { issueLeaf } from '../pki/x509.ts'
import { withPrivateKeyPem } from '../pki/pem.ts'
import { TLS_CIPHERS } from '../pki/tls-context.ts'
import { formatAddress, listen, parseListenAddress, removeSocketFile, type ListenAddress } from '../core/listener.ts'
import type { Store } from '../storage/store.ts'
import { AUTH_SERVER_NAME } from '../api/types.ts'
import { AdminService } from './admin.ts'
import { adminRouter } from './admin-socket.ts'
import { AuthService } from './auth-service.ts'
import { caPin, loadOrCreateCas, type CaSet } from './cas.ts'
import { agentApiRouter } from './http-api.ts'
import { DEFAULT_JOIN_RATE, RateLimiter } from './rate-limit.ts'
import { Retention } from './retention.ts'
import { startApiWorkers } from './workers.ts'

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
  /**
   * Serve the agent API from `count` worker threads (more than one), each opening its own
   * connection to `storage`. Admin socket, migrations and retention stay on this thread.
   */
  workers?: { count: number; storage: string; logFormat: LogFormat }
}

export interface AuthServer {
  /** `host:port` the API really listens on. */
  address: string
  caPin: string
  cas: CaSet
  auth: AuthService
  admin: AdminService
  /**
   * Resolves (with why) when an API worker thread keeps dying and is not restarted any more;
   * never with one worker. A worker that dies once is restarted.
   */
  failed?: Promise<string>
  /** Ends one API worker thread as a crash would (tests); it is restarted like any that died. */
  crashApiWorker?(index: number): Promise<void>
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

  const identity = await serverIdentity(cas, addr)
  const api = opts.workers !== undefined && opts.workers.count > 1
    ? await startApiWorkers({ ...opts.workers, cas, identity, addr, clusterName: opts.clusterName, logger: log, ...(opts.joinRate !== undefined ? { joinRate: opts.joinRate } : {}) })
    : await serveAgentApi({ auth, cas, identity, addr, logger: log, ...(opts.joinRate !== undefined ? { joinRate: opts.joinRate } : {}) })
  const address = formatAddress(api.address)

  let adminServer: Server | undefined
  let adminAddr: ListenAddress | undefined
  if (opts.adminSocket !== undefined) {
    const router = adminRouter(admin)
    adminServer = createHttpServer((req, res) => void router.handle(req, res))
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
    ...(api.failed !== undefined ? { failed: api.failed } : {}),
    ...(api.crashWorker !== undefined ? { crashApiWorker: api.crashWorker } : {}),
    stop(deadlineMs = 10_000) {
      stopping ??= (async () => {
        await Promise.all([api.stop(deadlineMs), adminServer ? drainHttp(adminServer, deadlineMs) : undefined, retention?.stop()])
        if (adminAddr) removeSocketFile(adminAddr)
        await opts.store.close()
      })()
      return stopping
    },
  }
}

/** The auth server's TLS key and certificate (signed by the TLS CA), made fresh at each start. */
export interface ServerIdentity {
  key: KeyObject
  certPem: string
}

/** A fresh server key and its certificate for the names and addresses agents may dial. */
export async function serverIdentity(cas: CaSet, addr: { host: string }): Promise<ServerIdentity> {
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey
  const ips = new Set(['127.0.0.1', '::1'])
  if (net.isIP(addr.host) && addr.host !== '0.0.0.0' && addr.host !== '::') ips.add(addr.host)
  const dns = new Set([AUTH_SERVER_NAME, 'localhost', os.hostname()])
  if (!net.isIP(addr.host)) dns.add(addr.host)
  const cert = await issueLeaf({
    ca: cas.tls, publicKey: createPublicKey(key), commonName: AUTH_SERVER_NAME,
    dnsNames: [...dns].filter((d) => /^[A-Za-z0-9.-]+$/.test(d)), ipAddresses: [...ips], ttlMs: SERVER_CERT_TTL_MS, usage: 'server',
  })
  return { key, certPem: cert.pem }
}

/** The agent API listening, and how to drain it. */
export interface RunningApi {
  address: ListenAddress
  stop(deadlineMs: number): Promise<void>
  /** Requests this API has answered so far (each worker reports its own at stop). */
  served(): number
  /** Worker threads only: resolves with why one kept dying and is not restarted any more. */
  failed?: Promise<string>
  /** Worker threads only: ends one as a crash would (tests). */
  crashWorker?(index: number): Promise<void>
}

/**
 * The agent API's TLS settings besides its key and certificates (also the baseline
 * `bench/_renew-profile.ts` measures a bare server with).
 */
export const AGENT_API_TLS = {
  requestCert: true,
  rejectUnauthorized: false,
  minVersion: 'TLSv1.2',
  // Node's servers pick by their own order (honorCipherOrder): AES-128-GCM first, as Go's.
  ciphers: TLS_CIPHERS,
  // No session resumption: a resumed session skips verifying the client certificate
  // (its expiry included) and carries over `authorized` from a handshake long past.
  // Without tickets and without a session cache every connection is a full handshake.
  // No renegotiation either: the API reads the verified client certificate once per
  // connection (http-api.ts), so it must not change on a live connection.
  secureOptions: cryptoConstants.SSL_OP_NO_TICKET | cryptoConstants.SSL_OP_NO_RENEGOTIATION,
} as const satisfies https.ServerOptions

/** How long an idle agent connection stays open. */
export const AGENT_API_KEEP_ALIVE_MS = 5_000

/**
 * Serves the agent-facing HTTPS API on this thread. With `reusePort` it shares the port
 * with the other workers (see auth/api-worker.ts).
 */
export async function serveAgentApi(o: {
  auth: AuthService; cas: CaSet; identity: ServerIdentity; addr: ListenAddress; logger: Logger; joinRate?: number; reusePort?: boolean
}): Promise<RunningApi> {
  const api = agentApiRouter(o.auth, new RateLimiter(o.joinRate ?? DEFAULT_JOIN_RATE, (o.joinRate ?? DEFAULT_JOIN_RATE) * 2))
  const server = withPrivateKeyPem(o.identity.key, (keyPem) => https.createServer({
    key: keyPem,
    cert: o.identity.certPem + o.cas.tls.certPem,
    ca: [o.cas.bot.certPem],
    ...AGENT_API_TLS,
  }, (req, res) => {
    served++
    void api.handle(req, res)
  }))
  let served = 0
  hardenServer(server, o.logger)
  const address = await listen(server, o.addr, { reusePort: o.reusePort === true })
  return { address, served: () => served, stop: (deadlineMs) => drainHttp(server, deadlineMs) }
}

/** Timeouts and error handling so a slow, garbled or hostile client affects only itself. */
function hardenServer(server: Server, log: Logger): void {
  server.headersTimeout = 10_000
  server.requestTimeout = 30_000
  server.keepAliveTimeout = AGENT_API_KEEP_ALIVE_MS
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    log.debug({ err: err.code ?? err.message }, 'client error')
    if (socket.writable && !socket.destroyed) {
      socket.end('HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{"error":{"code":"ERR_BAD_REQUEST","message":"malformed HTTP request"}}')
    }
    socket.destroy()
  })
  server.on('tlsClientError', (err: NodeJS.ErrnoException) => log.debug({ err: err.code ?? err.message }, 'TLS handshake failed'))
}

export async function drainHttp(server: Server, deadlineMs: number): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()))
  server.closeIdleConnections()
  const timer = setTimeout(() => server.closeAllConnections(), deadlineMs)
  await closed
  clearTimeout(timer)
}
