import { z } from 'zod'
import { ConfigError, MemidError } from '../core/errors.ts'
import { formatDuration, parseDuration } from '../core/duration.ts'
import { formatPath, nameSchema, principalSchema } from '../core/validate.ts'
import { formatAddress, parseListenAddress } from '../core/listener.ts'
import { readYamlFile } from './auth.ts'
import { defaultControlSocket } from './paths.ts'

const duration = z.string().refine((s) => parseDuration(s) !== undefined, 'must be a duration like 90s, 20m, 1h')
const listenAddr = z.string().superRefine((s, ctx) => {
  try {
    parseListenAddress(s)
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as MemidError).message })
  }
})
const socketPath = z.string().refine((s) => s.startsWith('/') && s.length <= 100, 'must be an absolute socket path (at most 100 characters)')
const pin = z.string().regex(/^sha256:[0-9a-f]{64}$/, 'must be sha256:<64 hex digits> (memid auth ca-pin prints it)')

const sshAgentSchema = z.strictObject({
  type: z.literal('ssh-agent'),
  path: socketPath,
  key_type: z.enum(['ed25519', 'ecdsa', 'rsa']).optional(),
  principals: z.array(principalSchema).min(1).optional(),
})
const kubeProxySchema = z.strictObject({
  type: z.literal('kube-proxy'),
  cluster: nameSchema,
  listen: listenAddr,
  allowed_hosts: z.array(z.string().min(1).max(255)).optional(),
  user: principalSchema.optional(),
})
const dbTunnelSchema = z.strictObject({
  type: z.literal('database-tunnel'),
  service: nameSchema,
  username: principalSchema,
  database: principalSchema.optional(),
  listen: listenAddr,
  protocol: z.enum(['postgres', 'tls']).optional(),
  max_connections: z.number().int().min(1).max(100_000).optional(),
  connect_timeout: duration.optional(),
  idle_timeout: duration.optional(),
})
const serviceSchema = z.discriminatedUnion('type', [sshAgentSchema, kubeProxySchema, dbTunnelSchema], {
  // The issue's path already ends in `type`.
  error: (iss) => (iss.code === 'invalid_union' ? 'must be ssh-agent, kube-proxy or database-tunnel' : undefined),
})

const fileSchema = z.strictObject({
  version: z.literal('v1', { error: 'must be v1' }),
  auth_server: z.string().optional(),
  ca_pins: z.array(pin).min(1).optional(),
  onboarding: z.strictObject({
    join_method: z.literal('token').optional(),
    token_file: z.string().min(1).optional(),
  }).optional(),
  certificate_ttl: duration.optional(),
  renewal_interval: duration.optional(),
  control_socket: socketPath.optional(),
  diagnostics: z.strictObject({ listen: listenAddr }).optional(),
  log_format: z.enum(['json', 'text']).optional(),
  services: z.array(serviceSchema).max(64).optional(),
})

export type AgentFile = z.infer<typeof fileSchema>

export type ServiceConfig =
  | { type: 'ssh-agent'; path: string; keyType: 'ed25519' | 'ecdsa' | 'rsa'; principals?: string[] }
  | { type: 'kube-proxy'; cluster: string; listen: string; allowedHosts?: string[]; user?: string }
  | {
    type: 'database-tunnel'; service: string; username: string; database?: string; listen: string
    protocol: 'postgres' | 'tls'; maxConnections: number; connectTimeoutMs: number; idleTimeoutMs?: number
  }

/** Where the join token comes from. The value itself is read at start, never stored in config. */
export type TokenSource = { kind: 'file'; path: string } | { kind: 'stdin' } | { kind: 'env' } | { kind: 'value'; value: string }

/** The validated agent configuration: one object, from file, flags and environment. */
export interface AgentConfig {
  authServer: string
  caPins: string[]
  joinMethod: 'token'
  token: TokenSource
  certificateTtlMs: number
  renewalIntervalMs: number
  controlSocket: string
  diagnostics?: string
  logFormat: 'json' | 'text'
  services: ServiceConfig[]
}

export interface AgentFlags {
  config?: string
  authServer?: string
  caPin?: string[]
  joinMethod?: string
  tokenFile?: string
  token?: string
  certificateTtl?: string
  renewalInterval?: string
  controlSocket?: string
  diagAddr?: string
  sshAgent?: string
  kubeProxy?: string[]
  dbTunnel?: string[]
  logFormat?: string
}

export { defaultControlSocket } from './paths.ts'

function fail(at: string, message: string): never {
  throw new ConfigError(`${at}: ${message}`)
}

function checkFile(value: unknown): AgentFile {
  const r = fileSchema.safeParse(value)
  if (r.success) return r.data
  const issue = r.error.issues[0]
  if (issue === undefined) fail('config', 'invalid')
  let message = issue.message
  if (issue.code === 'unrecognized_keys') message = `unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')}`
  const at = formatPath(issue.path)
  throw new ConfigError(at ? `${at}: ${message}` : message)
}

function ms(value: string, at: string): number {
  const v = parseDuration(value)
  if (v === undefined) fail(at, `"${value}" is not a duration like 90s, 20m, 1h`)
  return v
}

/** `LISTEN=CLUSTER` */
function parseKubeFlag(v: string, i: number): ServiceConfig {
  const at = `--kube-proxy[${i}]`
  const eq = v.lastIndexOf('=')
  if (eq <= 0) fail(at, `must be LISTEN=CLUSTER, e.g. 127.0.0.1:8001=prod, got "${v}"`)
  return { type: 'kube-proxy', listen: v.slice(0, eq), cluster: v.slice(eq + 1) }
}

/** `LISTEN=SERVICE/DBUSER[/DBNAME]` */
function parseDbFlag(v: string, i: number): ServiceConfig {
  const at = `--db-tunnel[${i}]`
  const eq = v.lastIndexOf('=')
  if (eq <= 0) fail(at, `must be LISTEN=SERVICE/DBUSER[/DBNAME], e.g. 127.0.0.1:6432=orders/app/orders, got "${v}"`)
  const parts = v.slice(eq + 1).split('/')
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => p === '')) fail(at, `must be LISTEN=SERVICE/DBUSER[/DBNAME], got "${v}"`)
  return {
    type: 'database-tunnel', listen: v.slice(0, eq), service: parts[0] as string, username: parts[1] as string,
    ...(parts[2] !== undefined ? { database: parts[2] } : {}), protocol: 'postgres', maxConnections: 100, connectTimeoutMs: 10_000,
  }
}

function fromFileService(s: NonNullable<AgentFile['services']>[number], i: number): ServiceConfig {
  if (s.type === 'ssh-agent') return { type: 'ssh-agent', path: s.path, keyType: s.key_type ?? 'ed25519', ...(s.principals ? { principals: s.principals } : {}) }
  if (s.type === 'kube-proxy') {
    return { type: 'kube-proxy', cluster: s.cluster, listen: s.listen, ...(s.allowed_hosts ? { allowedHosts: s.allowed_hosts } : {}), ...(s.user ? { user: s.user } : {}) }
  }
  return {
    type: 'database-tunnel', service: s.service, username: s.username, listen: s.listen, protocol: s.protocol ?? 'postgres',
    maxConnections: s.max_connections ?? 100,
    connectTimeoutMs: s.connect_timeout ? ms(s.connect_timeout, `services[${i}].connect_timeout`) : 10_000,
    ...(s.database ? { database: s.database } : {}),
    ...(s.idle_timeout ? { idleTimeoutMs: ms(s.idle_timeout, `services[${i}].idle_timeout`) } : {}),
  }
}

/**
 * Merges the config file, the flags (which override it) and the environment into one
 * validated AgentConfig. Every error names the key or flag it is about.
 */
export function loadAgentConfig(flags: AgentFlags, env: NodeJS.ProcessEnv = process.env): AgentConfig {
  const file = flags.config !== undefined ? checkFile(readYamlFile(flags.config)) : undefined
  const authServer = flags.authServer ?? file?.auth_server
  if (authServer === undefined) fail('auth_server', 'is required (--auth-server HOST:PORT)')
  if (!/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(authServer)) fail(flags.authServer ? '--auth-server' : 'auth_server', `must be HOST:PORT, got "${authServer}"`)
  const caPins = flags.caPin?.length ? flags.caPin : file?.ca_pins
  if (!caPins?.length) fail('ca_pins', 'at least one CA pin is required (--ca-pin sha256:…; memid auth ca-pin prints it)')
  for (const [i, p] of caPins.entries()) {
    if (!/^sha256:[0-9a-f]{64}$/.test(p)) fail(flags.caPin?.length ? '--ca-pin' : `ca_pins[${i}]`, 'must be sha256:<64 hex digits> (memid auth ca-pin prints it)')
  }
  const joinMethod = flags.joinMethod ?? file?.onboarding?.join_method ?? 'token'
  if (joinMethod !== 'token') fail('--join-method', `"${joinMethod}" is not supported; use token`)

  let token: TokenSource
  if (flags.tokenFile === '-') token = { kind: 'stdin' }
  else if (flags.tokenFile !== undefined) token = { kind: 'file', path: flags.tokenFile }
  else if (flags.token !== undefined) token = { kind: 'value', value: flags.token }
  else if (env.MEMID_TOKEN) token = { kind: 'env' }
  else if (file?.onboarding?.token_file !== undefined) token = { kind: 'file', path: file.onboarding.token_file }
  else fail('onboarding.token_file', 'no join token: use --token-file PATH, --token-file - (stdin) or $MEMID_TOKEN')

  const ttlText = flags.certificateTtl ?? file?.certificate_ttl ?? '1h'
  const intervalText = flags.renewalInterval ?? file?.renewal_interval ?? '20m'
  const certificateTtlMs = ms(ttlText, flags.certificateTtl ? '--certificate-ttl' : 'certificate_ttl')
  const renewalIntervalMs = ms(intervalText, flags.renewalInterval ? '--renewal-interval' : 'renewal_interval')
  if (certificateTtlMs < 5_000) fail('certificate_ttl', 'must be at least 5s')
  if (renewalIntervalMs < 1_000) fail('renewal_interval', 'must be at least 1s')
  if (renewalIntervalMs >= certificateTtlMs) {
    fail(flags.renewalInterval ? '--renewal-interval' : 'renewal_interval', `(${formatDuration(renewalIntervalMs)}) must be shorter than certificate_ttl (${formatDuration(certificateTtlMs)})`)
  }

  const services: ServiceConfig[] = (file?.services ?? []).map(fromFileService)
  // Where each service came from, so errors name the key or the flag the user wrote.
  const origins = services.map((_s, i) => `services[${i}]`)
  if (flags.sshAgent !== undefined) {
    if (!flags.sshAgent.startsWith('/')) fail('--ssh-agent', 'must be an absolute socket path')
    services.push({ type: 'ssh-agent', path: flags.sshAgent, keyType: 'ed25519' })
    origins.push('--ssh-agent')
  }
  ;(flags.kubeProxy ?? []).forEach((v, i) => {
    services.push(parseKubeFlag(v, i))
    origins.push(`--kube-proxy[${i}]`)
  })
  ;(flags.dbTunnel ?? []).forEach((v, i) => {
    services.push(parseDbFlag(v, i))
    origins.push(`--db-tunnel[${i}]`)
  })
  validateServices(services, origins)

  const controlSocket = flags.controlSocket ?? file?.control_socket ?? defaultControlSocket(env)
  if (!controlSocket.startsWith('/')) fail('control_socket', 'must be an absolute socket path')
  const diagnostics = flags.diagAddr ?? file?.diagnostics?.listen
  if (diagnostics !== undefined) {
    try {
      parseListenAddress(diagnostics)
    } catch (err) {
      fail(flags.diagAddr ? '--diag-addr' : 'diagnostics.listen', (err as MemidError).message)
    }
  }
  const logFormat = flags.logFormat ?? file?.log_format ?? 'json'
  if (logFormat !== 'json' && logFormat !== 'text') fail('--log-format', 'must be json or text')
  return {
    authServer, caPins, joinMethod: 'token', token, certificateTtlMs, renewalIntervalMs, controlSocket,
    ...(diagnostics !== undefined ? { diagnostics } : {}), logFormat, services,
  }
}

/** Checks what the per-field schemas cannot: listen addresses, names, and clashes between services. */
export function validateServices(services: ServiceConfig[], origins: string[] = services.map((_s, i) => `services[${i}]`)): void {
  const seen = new Map<string, number>()
  services.forEach((s, i) => {
    const at = origins[i] ?? `services[${i}]`
    const addr = s.type === 'ssh-agent' ? s.path : s.listen
    // Compared in normal form so `/run/m/a.sock` and `/run/m//a.sock` count as one address.
    let key = addr
    try {
      key = formatAddress(parseListenAddress(addr))
    } catch (err) {
      fail(`${at}.${s.type === 'ssh-agent' ? 'path' : 'listen'}`, (err as MemidError).message)
    }
    if (s.type === 'kube-proxy' && !nameSchema.safeParse(s.cluster).success) fail(`${at}.cluster`, `"${s.cluster}" is not a valid cluster name`)
    if (s.type === 'database-tunnel') {
      if (!nameSchema.safeParse(s.service).success) fail(`${at}.service`, `"${s.service}" is not a valid service name`)
      if (!principalSchema.safeParse(s.username).success) fail(`${at}.username`, `"${s.username}" is not a valid user name`)
    }
    const prev = seen.get(key)
    if (prev !== undefined) fail(`${at}`, `listens on ${addr}, already used by ${origins[prev] ?? `services[${prev}]`}`)
    seen.set(key, i)
  })
  if (services.filter((s) => s.type === 'ssh-agent').length > 1) fail('services', 'at most one ssh-agent service')
}
