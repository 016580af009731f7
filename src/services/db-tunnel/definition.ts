import { generateKeyPairSync } from 'node:crypto'
import { z } from 'zod'
import { ConfigError } from '../../core/errors.ts'
import { parseDuration } from '../../core/duration.ts'
import { durationSchema, exposureFileKeys, exposureFromFile, exposureOptionKeys } from '../../core/validate.ts'
import type { TlsClientCredential } from '../../credentials/credentials.ts'
import { portableTlsCredential, spkiPem, tlsClientCredential } from '../../credentials/issuer.ts'
import { defineService, siblingModule } from '../definition.ts'
import { resolveDbTunnelConfig, type ResolvedDbTunnelConfig } from './config.ts'

const protocol = z.enum(['postgres', 'tls'])
const maxConnections = z.number().int().min(1).max(100_000)

const options = z.strictObject({
  type: z.literal('database-tunnel'),
  /** The database service as registered with `memid dbs add`. */
  service: z.string(),
  /** The database user; the client certificate's CN and the only user the tunnel accepts. */
  username: z.string(),
  /** When set, clients may only open this database. */
  database: z.string().optional(),
  /** `host:port` (loopback by default) or a unix socket path `<dir>/.s.PGSQL.<port>`. */
  listen: z.string(),
  /** `postgres` (default) or `tls` (raw bytes in TLS). */
  protocol: protocol.optional(),
  /** Default 100. */
  maxConnections: maxConnections.optional(),
  /** Default 10 s. */
  connectTimeoutMs: z.number().positive().optional(),
  /** No limit when absent. */
  idleTimeoutMs: z.number().positive().optional(),
  /** `allowRemote`: listen on a non-loopback address; `allowedUsers`: more local users served. */
  ...exposureOptionKeys,
})

const file = z.strictObject({
  type: z.literal('database-tunnel'), service: z.string(), username: z.string(), database: z.string().optional(), listen: z.string(),
  protocol: protocol.optional(), max_connections: maxConnections.optional(), connect_timeout: durationSchema.optional(), idle_timeout: durationSchema.optional(),
  ...exposureFileKeys,
})

/** `services[]: { type: database-tunnel, … }` as a program passes it to `startAgent()`. */
export type DbTunnelOptions = z.infer<typeof options>

const FLAG_FORM = 'must be LISTEN=SERVICE/DBUSER[/DBNAME], e.g. 127.0.0.1:6432=orders/app/orders'

/** The database tunnel: a local plaintext listener carried to the database over TLS. */
export const dbTunnel = defineService<'database-tunnel', DbTunnelOptions, z.infer<typeof file>, ResolvedDbTunnelConfig, TlsClientCredential>({
  type: 'database-tunnel',
  options,
  file,
  fromFile: (f) => {
    const connectTimeoutMs = f.connect_timeout !== undefined ? parseDuration(f.connect_timeout) : undefined
    const idleTimeoutMs = f.idle_timeout !== undefined ? parseDuration(f.idle_timeout) : undefined
    return {
      type: 'database-tunnel', service: f.service, username: f.username, listen: f.listen,
      ...(f.database !== undefined ? { database: f.database } : {}), ...(f.protocol ? { protocol: f.protocol } : {}),
      ...(f.max_connections !== undefined ? { maxConnections: f.max_connections } : {}),
      ...(connectTimeoutMs !== undefined ? { connectTimeoutMs } : {}), ...(idleTimeoutMs !== undefined ? { idleTimeoutMs } : {}),
      ...exposureFromFile(f),
    }
  },
  flag: {
    name: 'db-tunnel', value: '<listen=service/user[/db]>', description: 'database tunnel (repeatable)', repeatable: true,
    parse(value) {
      const eq = value.lastIndexOf('=')
      const parts = value.slice(eq + 1).split('/')
      if (eq <= 0 || parts.length < 2 || parts.length > 3 || parts.some((p) => p === '')) throw new ConfigError(`${FLAG_FORM}, got "${value.slice(0, 120)}"`)
      return { type: 'database-tunnel', listen: value.slice(0, eq), service: parts[0] as string, username: parts[1] as string, ...(parts[2] !== undefined ? { database: parts[2] } : {}) }
    },
  },
  resolve: (o) => resolveDbTunnelConfig({
    listen: o.listen, service: o.service, username: o.username, protocol: o.protocol ?? 'postgres', maxConnections: o.maxConnections ?? 100,
    connectTimeoutMs: o.connectTimeoutMs ?? 10_000, ...(o.database !== undefined ? { database: o.database } : {}),
    ...(o.idleTimeoutMs !== undefined ? { idleTimeoutMs: o.idleTimeoutMs } : {}),
    ...(o.allowRemote !== undefined ? { allowRemote: o.allowRemote } : {}), ...(o.allowedUsers !== undefined ? { allowedUsers: o.allowedUsers } : {}),
  }),
  name: (s) => `db-tunnel:${s.service}`,
  address: (s) => s.address,
  async issue(s, issuer) {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const res = await issuer.issueDb({
      publicKey: spkiPem(privateKey), service: s.service, username: s.username, ttl: issuer.ttl, ...(s.database ? { database: s.database } : {}),
    })
    return tlsClientCredential('db', privateKey, res, 5432, s.database !== undefined ? { database: s.database } : {})
  },
  async build(s, deps) {
    const { buildDbTunnelService } = await import('./index.ts')
    return buildDbTunnelService(s, deps)
  },
  worker: {
    pack: portableTlsCredential,
    // The settings are plain data. Each thread admits its share (rounded up), so the database
    // sees about max_connections from this tunnel, not that many per thread. The kernel
    // spreads clients evenly, not exactly: a thread can refuse while another has room.
    threadData: (s, _o, workers) => ({ ...s, maxConnections: Math.max(1, Math.ceil(s.maxConnections / workers)) }),
    module: siblingModule(import.meta.url, 'thread'),
    counters: ['activeConnections', 'maxConnections'],
  },
})
