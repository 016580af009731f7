import os from 'node:os'
import { z } from 'zod'
import { ConfigError, MemidError } from '../core/errors.ts'
import { formatDuration, parseDuration } from '../core/duration.ts'
import { NAME_RE, durationSchema, issueText } from '../core/validate.ts'
import type { PlatformJoinRequest } from '../api/types.ts'
import { formatAddress, parseListenAddress, type ListenAddress } from '../core/listener.ts'
import type { ResolvedService } from '../services/definition.ts'
import { serviceFromFile, serviceFromOptions, serviceTypes, type ServiceOptions } from '../services/registry.ts'
import { readYamlFile } from '../core/yaml.ts'
import { defaultControlSocket } from './paths.ts'

export { defaultControlSocket } from './paths.ts'
export type { ServiceOptions } from '../services/registry.ts'

/** The options form of one service (`startAgent({ services })`); kept under its old name. */
export type ServiceConfig = ServiceOptions

/** Where the join token comes from. The value itself is read at join time, never stored in config. */
export type TokenSource = { kind: 'file'; path: string } | { kind: 'stdin' } | { kind: 'env' } | { kind: 'value'; value: string }

export type PlatformJoinMethod = PlatformJoinRequest['joinMethod']
export const JOIN_METHODS = ['token', 'github', 'gitlab', 'kubernetes', 'oidc'] as const

/**
 * Where a platform join's JWT comes from, fetched or read again at every join: the GitHub
 * Actions token endpoint, a file (the kubelet rotates projected tokens), or `$MEMID_ID_TOKEN`.
 */
export type IdTokenSource = { kind: 'github' } | { kind: 'file'; path: string } | { kind: 'env' }

/** Where the kubelet mounts the projected service-account token by default (`path: memid`). */
export const DEFAULT_KUBE_TOKEN_FILE = '/var/run/secrets/tokens/memid'

/** How the agent proves itself the first time. One member per join method. */
export type Onboarding =
  | { method: 'token'; token: TokenSource }
  | { method: PlatformJoinMethod; tokenName: string; idToken: IdTokenSource }

/** The auth service's address, parsed once. */
export interface AuthServerAddress {
  host: string
  port: number
}

/**
 * The resolved agent configuration: every value typed and checked, built from flags,
 * environment and file (`loadAgentConfig`) or from a program's options
 * (`resolveAgentOptions`), before any token is read or the auth service contacted.
 */
export interface AgentConfig {
  /** One or more replicas of one auth cluster, tried in this order (see AuthClient). */
  authServers: AuthServerAddress[]
  caPins: string[]
  onboarding: Onboarding
  certificateTtlMs: number
  /** Shorter than the TTL (checked here, once). */
  renewalIntervalMs: number
  /** Control socket path; none when undefined. */
  controlSocket?: string
  /** Diagnostics address (`/livez`, `/readyz`, `/metrics`); none when undefined. */
  diagnostics?: ListenAddress
  logFormat: 'json' | 'text'
  /** Time allowed to open connections on stop. */
  drainMs: number
  /** Worker threads serving each kube proxy's and database tunnel's TCP listener (1: this thread). */
  workers: number
  services: ResolvedService[]
}

/** What `startAgent()` accepts: the options form of the config (camelCase, durations in ms). */
export interface AgentConfigOptions {
  /** `host:port` of the auth service; several replicas as `a:3025,b:3025`. */
  authServer?: string
  /** Several replicas of one auth cluster (instead of `authServer`). */
  authServers?: string[]
  /** `sha256:<hex>` pins of the auth service's TLS CA. */
  caPins: string[]
  /** The join token value (single use). Shorthand for `onboarding: { method: 'token', token: { kind: 'value', value } }`. */
  token?: string
  onboarding?: Onboarding
  /** Certificate TTL in ms (default 1h). */
  certificateTtlMs?: number
  /** Renewal interval in ms (default 20m); must be shorter than the TTL. */
  renewalIntervalMs?: number
  /** Control socket path; none when omitted. */
  controlSocket?: string
  /** Diagnostics address; none when omitted. */
  diagnostics?: string
  services?: ServiceOptions[]
  /** Time allowed to open connections on stop (default 10 s). */
  drainMs?: number
  /** Worker threads for each kube proxy's and database tunnel's TCP listener (default: CPUs, at most 4). */
  workers?: number
}

/** The flags of `memid start` (service flags come from the registry: `--ssh-agent`, `--kube-proxy`, …). */
export interface AgentFlags {
  config?: string
  authServer?: string
  caPin?: string[]
  joinMethod?: string
  joinToken?: string
  idTokenFile?: string
  tokenFile?: string
  token?: string
  certificateTtl?: string
  renewalInterval?: string
  controlSocket?: string
  diagAddr?: string
  logFormat?: string
  workers?: string
  [serviceFlag: string]: string | string[] | undefined
}

/** A value as given and the name the user wrote it under (flag, key path or option). */
interface Given {
  value: unknown
  at: string
}

/** Everything `resolveAgentConfig` needs, whichever entry point gathered it. */
interface AgentInput {
  /** One Given holding a list (`a:1,b:2`) or one Given per element. */
  authServers: { items: Given[]; at: string; hint: string }
  caPins: { items: Given[]; at: string; hint: string }
  onboarding: Given & { value: Onboarding | undefined; hint: string }
  certificateTtl: Given
  renewalInterval: Given
  controlSocket: Given
  diagnostics: Given
  logFormat: Given
  drainMs: Given
  workers: Given
  /** Each resolves one service (throwing a ConfigError that names where it was configured). */
  services: (() => ResolvedService)[]
}

const DEFAULT_TTL_MS = 3_600_000
const DEFAULT_INTERVAL_MS = 1_200_000
const DEFAULT_DRAIN_MS = 10_000
/** More workers than this buy little for a local proxy and cost memory (one V8 heap each). */
const MAX_DEFAULT_WORKERS = 4
const MAX_WORKERS = 64

/** One worker per CPU, at most MAX_DEFAULT_WORKERS. */
export function defaultWorkers(): number {
  return Math.max(1, Math.min(os.availableParallelism(), MAX_DEFAULT_WORKERS))
}

function workerCount(g: Given): number {
  if (g.value === undefined) return defaultWorkers()
  const n = typeof g.value === 'string' && /^\d{1,3}$/.test(g.value) ? Number(g.value) : g.value
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > MAX_WORKERS) fail(g.at, `must be a whole number from 1 to ${MAX_WORKERS}`)
  return n
}
const PIN = /^sha256:[0-9a-f]{64}$/

function fail(at: string, message: string): never {
  throw new ConfigError(`${at}: ${message}`)
}

/**
 * The auth servers from given values, each `host:port` or a comma-separated list of them;
 * an element is named `at[i]` when the value held a list. Duplicates are refused: a
 * replica listed twice would be retried as if it were another.
 */
function parseAuthServers(items: Given[]): AuthServerAddress[] {
  const out: AuthServerAddress[] = []
  const seen = new Map<string, string>()
  for (const g of items) {
    if (typeof g.value !== 'string') fail(g.at, 'must be a string HOST:PORT')
    const parts = g.value.split(',')
    parts.forEach((part, i) => {
      const at = parts.length > 1 ? `${g.at}[${i}]` : g.at
      if (part.trim() === '') fail(at, 'is empty (a stray comma?)')
      const addr = parseAuthServer(part.trim(), at)
      const key = `${addr.host.toLowerCase()}:${addr.port}`
      const prev = seen.get(key)
      if (prev !== undefined) fail(at, `${part.trim().slice(0, 80)} is listed twice (also ${prev})`)
      seen.set(key, at)
      out.push(addr)
    })
  }
  return out
}

/** `host:port` or `[v6]:port`, the same rule as every TCP listen address. */
export function parseAuthServer(text: unknown, at = 'auth_server'): AuthServerAddress {
  if (typeof text !== 'string') fail(at, 'must be a string HOST:PORT')
  let addr: ListenAddress
  try {
    addr = parseListenAddress(text)
  } catch {
    fail(at, `must be HOST:PORT, got "${text.slice(0, 80)}"`)
  }
  if (addr.kind !== 'tcp') fail(at, `must be HOST:PORT, got "${text.slice(0, 80)}"`)
  if (addr.port === 0) fail(at, 'port 0 is not an address to dial')
  return { host: addr.host, port: addr.port }
}

function durationMs(g: Given, fallback: number): number {
  if (g.value === undefined) return fallback
  if (typeof g.value === 'number') {
    if (!Number.isFinite(g.value) || g.value <= 0) fail(g.at, 'must be a positive number of milliseconds')
    return g.value
  }
  if (typeof g.value !== 'string') fail(g.at, 'must be a duration like 90s, 20m, 1h')
  const v = parseDuration(g.value)
  if (v === undefined) fail(g.at, `"${g.value.slice(0, 40)}" is not a duration like 90s, 20m, 1h`)
  return v
}

function socketPath(g: Given): string | undefined {
  if (g.value === undefined) return undefined
  if (typeof g.value !== 'string' || !g.value.startsWith('/')) fail(g.at, 'must be an absolute socket path')
  try {
    const addr = parseListenAddress(g.value)
    if (addr.kind === 'unix') return addr.path
  } catch (err) {
    fail(g.at, err instanceof Error ? err.message : String(err))
  }
  fail(g.at, 'must be an absolute socket path')
}

function listenAddress(g: Given): ListenAddress | undefined {
  if (g.value === undefined) return undefined
  if (typeof g.value !== 'string') fail(g.at, 'must be host:port or an absolute socket path')
  try {
    return parseListenAddress(g.value)
  } catch (err) {
    fail(g.at, err instanceof Error ? err.message : String(err))
  }
}

/**
 * The one resolve step both entry points share: types, ranges, the TTL/interval rule,
 * addresses, and every service through its definition. Throws a one-line ConfigError
 * naming the flag, key or option.
 */
function resolveAgentConfig(input: AgentInput): AgentConfig {
  if (input.authServers.items.length === 0) fail(input.authServers.at, `is required${input.authServers.hint}`)
  const authServers = parseAuthServers(input.authServers.items)
  if (input.caPins.items.length === 0) fail(input.caPins.at, `at least one CA pin is required${input.caPins.hint}`)
  const caPins = input.caPins.items.map((p) => {
    if (typeof p.value !== 'string' || !PIN.test(p.value)) fail(p.at, 'must be sha256:<64 hex digits> (memid auth ca-pin prints it)')
    return p.value
  })
  const onboarding = input.onboarding.value
  if (onboarding === undefined) fail(input.onboarding.at, `no join token${input.onboarding.hint}`)

  const ttl = input.certificateTtl
  const interval = input.renewalInterval
  const certificateTtlMs = durationMs(ttl, DEFAULT_TTL_MS)
  const renewalIntervalMs = durationMs(interval, DEFAULT_INTERVAL_MS)
  if (certificateTtlMs < 5_000) fail(ttl.at, 'must be at least 5s')
  if (renewalIntervalMs < 1_000) fail(interval.at, 'must be at least 1s')
  if (renewalIntervalMs >= certificateTtlMs) {
    fail(interval.at, `(${formatDuration(renewalIntervalMs)}) must be shorter than ${ttl.at} (${formatDuration(certificateTtlMs)})`)
  }

  const controlSocket = socketPath(input.controlSocket)
  const diagnostics = listenAddress(input.diagnostics)
  const logFormat = input.logFormat.value ?? 'json'
  if (logFormat !== 'json' && logFormat !== 'text') fail(input.logFormat.at, 'must be json or text')
  const drainMs = input.drainMs.value === undefined ? DEFAULT_DRAIN_MS : input.drainMs.value
  if (typeof drainMs !== 'number' || !Number.isFinite(drainMs) || drainMs < 0) fail(input.drainMs.at, 'must be a number of milliseconds')

  const workers = workerCount(input.workers)

  const services = input.services.map((resolve) => resolve())
  checkServices(services)
  return {
    authServers, caPins, onboarding, certificateTtlMs, renewalIntervalMs,
    ...(controlSocket !== undefined ? { controlSocket } : {}), ...(diagnostics !== undefined ? { diagnostics } : {}),
    logFormat, drainMs, workers, services,
  }
}

/** What no single service can check: address clashes and per-type limits. */
function checkServices(services: ResolvedService[]): void {
  const seen = new Map<string, ResolvedService>()
  for (const s of services) {
    // Port 0 picks a free port each time, so it never clashes.
    if (s.address.kind === 'tcp' && s.address.port === 0) continue
    // Compared in normal form so `/run/m/a.sock` and `/run/m//a.sock` count as one address.
    const key = formatAddress(s.address)
    const prev = seen.get(key)
    if (prev !== undefined) fail(s.at, `listens on ${key}, already used by ${prev.at}`)
    seen.set(key, s)
  }
  for (const t of serviceTypes) {
    const max = services.find((s) => s.type === t.type)?.max
    if (max !== undefined && services.filter((s) => s.type === t.type).length > max) fail('services', `at most ${max === 1 ? 'one' : max} ${t.type} service${max === 1 ? '' : 's'}`)
  }
}

const fileSchema = z.strictObject({
  version: z.literal('v1', { error: 'must be v1' }),
  auth_server: z.string().optional(),
  auth_servers: z.array(z.string()).min(1, { error: 'must list at least one HOST:PORT' }).max(64).optional(),
  ca_pins: z.array(z.string()).min(1).optional(),
  onboarding: z.strictObject({
    join_method: z.enum(JOIN_METHODS, { error: `must be one of ${JOIN_METHODS.join(', ')}` }).optional(),
    token_file: z.string().min(1).optional(),
    join_token: z.string().min(1).optional(),
    id_token_file: z.string().min(1).optional(),
  }).optional(),
  certificate_ttl: durationSchema.optional(),
  renewal_interval: durationSchema.optional(),
  control_socket: z.string().optional(),
  diagnostics: z.strictObject({ listen: z.string() }).optional(),
  log_format: z.enum(['json', 'text']).optional(),
  workers: z.unknown().optional(),
  services: z.array(z.unknown()).max(64).optional(),
})

export type AgentFile = z.infer<typeof fileSchema>

function checkFile(value: unknown): AgentFile {
  const r = fileSchema.safeParse(value)
  if (r.success) return r.data
  throw new ConfigError(issueText(r.error))
}

/** A flag if given, else the file key if set, named after whichever it was. */
function pick(flag: string | undefined, flagName: string, file: unknown, key: string): Given {
  return flag !== undefined ? { value: flag, at: flagName } : { value: file, at: key }
}

/** A service type's flag as commander declares it (`key` is commander's camelCase property). */
export interface ServiceFlagSpec {
  name: string
  key: string
  value: string
  description: string
  repeatable: boolean
  fromFlag(value: string, at: string): ResolvedService
}

/** The service flags of `memid start`, from the registry. */
export function serviceFlags(): ServiceFlagSpec[] {
  return serviceTypes.flatMap((t) => t.flag === undefined ? [] : [{
    ...t.flag, key: t.flag.name.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase()), fromFlag: (v: string, at: string) => t.fromFlag(v, at),
  }])
}

/**
 * Merges the config file, the flags (which override it) and the environment into one
 * resolved AgentConfig. Every error names the key or flag it is about. Reads no token.
 */
export function loadAgentConfig(flags: AgentFlags, env: NodeJS.ProcessEnv = process.env): AgentConfig {
  const file = flags.config !== undefined ? checkFile(readYamlFile(flags.config)) : undefined
  const joinMethod = flags.joinMethod ?? file?.onboarding?.join_method ?? 'token'
  if (!(JOIN_METHODS as readonly string[]).includes(joinMethod)) fail(flags.joinMethod !== undefined ? '--join-method' : 'onboarding.join_method', `"${joinMethod.slice(0, 40)}" is not one of ${JOIN_METHODS.join(', ')}`)

  let onboarding: Onboarding | undefined
  if (joinMethod === 'token') {
    const stray = flags.joinToken !== undefined ? '--join-token' : flags.idTokenFile !== undefined ? '--id-token-file'
      : file?.onboarding?.join_token !== undefined ? 'onboarding.join_token' : file?.onboarding?.id_token_file !== undefined ? 'onboarding.id_token_file' : undefined
    if (stray !== undefined) fail(stray, 'is for the github, gitlab, kubernetes and oidc join methods (add --join-method)')
    let token: TokenSource | undefined
    if (flags.tokenFile === '-') token = { kind: 'stdin' }
    else if (flags.tokenFile !== undefined) token = { kind: 'file', path: flags.tokenFile }
    else if (flags.token !== undefined) token = { kind: 'value', value: flags.token }
    else if (env.MEMID_TOKEN) token = { kind: 'env' }
    else if (file?.onboarding?.token_file !== undefined) token = { kind: 'file', path: file.onboarding.token_file }
    if (token !== undefined) onboarding = { method: 'token', token }
  } else {
    onboarding = platformOnboarding(joinMethod as PlatformJoinMethod, flags, file, env)
  }

  // File services first, then flags, in the order given; each named where it was written.
  const services: (() => ResolvedService)[] = (file?.services ?? []).map((raw, i) => () => serviceFromFile(raw, `services[${i}]`))
  for (const f of serviceFlags()) {
    const given = flags[f.key]
    const values = given === undefined ? [] : Array.isArray(given) ? given : [given]
    values.forEach((v, i) => services.push(() => f.fromFlag(v, f.repeatable ? `--${f.name}[${i}]` : `--${f.name}`)))
  }

  const pinsFromFlags = flags.caPin !== undefined && flags.caPin.length > 0
  if (file?.auth_server !== undefined && file.auth_servers !== undefined) fail('auth_servers', 'give either auth_server or auth_servers, not both')
  const authServers: Given[] = flags.authServer !== undefined ? [{ value: flags.authServer, at: '--auth-server' }]
    : file?.auth_servers !== undefined ? file.auth_servers.map((value, i) => ({ value, at: `auth_servers[${i}]` }))
      : file?.auth_server !== undefined ? [{ value: file.auth_server, at: 'auth_server' }] : []
  return resolveAgentConfig({
    authServers: { items: authServers, at: 'auth_server', hint: ' (--auth-server HOST:PORT[,HOST:PORT…], or auth_servers: [...] in the config file)' },
    caPins: {
      items: pinsFromFlags ? (flags.caPin ?? []).map((value) => ({ value, at: '--ca-pin' })) : (file?.ca_pins ?? []).map((value, i) => ({ value, at: `ca_pins[${i}]` })),
      at: 'ca_pins', hint: ' (--ca-pin sha256:…; memid auth ca-pin prints it)',
    },
    onboarding: {
      value: onboarding, at: 'onboarding.token_file',
      hint: ': use --token-file PATH, --token-file - (stdin) or $MEMID_TOKEN',
    },
    certificateTtl: pick(flags.certificateTtl, '--certificate-ttl', file?.certificate_ttl, 'certificate_ttl'),
    renewalInterval: pick(flags.renewalInterval, '--renewal-interval', file?.renewal_interval, 'renewal_interval'),
    controlSocket: flags.controlSocket !== undefined || file?.control_socket !== undefined
      ? pick(flags.controlSocket, '--control-socket', file?.control_socket, 'control_socket')
      : { value: defaultControlSocket(env), at: 'control_socket' },
    diagnostics: pick(flags.diagAddr, '--diag-addr', file?.diagnostics?.listen, 'diagnostics.listen'),
    logFormat: pick(flags.logFormat, '--log-format', file?.log_format, 'log_format'),
    drainMs: { value: undefined, at: 'drain' },
    workers: pick(flags.workers, '--workers', file?.workers, 'workers'),
    services,
  })
}

/**
 * A platform join from flags and file: the token's name, and where each join's JWT will
 * come from. A job missing what its platform must provide (GitHub without
 * `permissions: id-token: write`, GitLab without `id_tokens:`) is told so here, before
 * anything is contacted.
 */
function platformOnboarding(method: PlatformJoinMethod, flags: AgentFlags, file: AgentFile | undefined, env: NodeJS.ProcessEnv): Onboarding {
  for (const [given, at] of [[flags.tokenFile, '--token-file'], [flags.token, '--token'], [file?.onboarding?.token_file, 'onboarding.token_file']] as const) {
    if (given !== undefined) fail(at, `is for --join-method token; the ${method} join method takes --join-token NAME`)
  }
  const name = pick(flags.joinToken, '--join-token', file?.onboarding?.join_token, 'onboarding.join_token')
  if (name.value === undefined) fail('--join-token', `the ${method} join method needs the token's name (memid tokens add --join-method ${method} prints it)`)
  if (typeof name.value !== 'string' || !NAME_RE.test(name.value)) fail(name.at, 'must be a token name (letters, digits, ".", "_", "@", "-")')
  const file_ = pick(flags.idTokenFile, '--id-token-file', file?.onboarding?.id_token_file, 'onboarding.id_token_file')
  const path = file_.value as string | undefined
  if (path !== undefined && !path.startsWith('/')) fail(file_.at, 'must be an absolute path')
  let idToken: IdTokenSource
  if (method === 'github') {
    if (path !== undefined) fail(file_.at, 'is not used by the github join method: the job\'s JWT comes from ACTIONS_ID_TOKEN_REQUEST_URL')
    missingGithubEnv(env)
    idToken = { kind: 'github' }
  } else if (method === 'kubernetes') {
    idToken = { kind: 'file', path: path ?? DEFAULT_KUBE_TOKEN_FILE }
  } else if (path !== undefined) {
    idToken = { kind: 'file', path }
  } else if (env.MEMID_ID_TOKEN) {
    idToken = { kind: 'env' }
  } else {
    throw new MemidError('ERR_JOIN_ENV_MISSING', `--join-method ${method}: no ID token: set $MEMID_ID_TOKEN${method === 'gitlab' ? " (an id_tokens: entry of the job in .gitlab-ci.yml)" : ''} or give --id-token-file PATH`)
  }
  return { method, tokenName: name.value, idToken }
}

/** The `onboarding` option of `startAgent()`, checked like the flags would be. */
function checkOnboarding(o: Onboarding): void {
  if (typeof o !== 'object' || o === null || !(JOIN_METHODS as readonly string[]).includes(o.method)) fail('onboarding.method', `must be one of ${JOIN_METHODS.join(', ')}`)
  if (o.method === 'token') return
  if (typeof o.tokenName !== 'string' || !NAME_RE.test(o.tokenName)) fail('onboarding.tokenName', 'must be a token name (letters, digits, ".", "_", "@", "-")')
  const src = o.idToken
  const ok = src?.kind === 'github' ? o.method === 'github' : src?.kind === 'env' ? o.method !== 'github' && o.method !== 'kubernetes'
    : src?.kind === 'file' && typeof src.path === 'string' && src.path.startsWith('/') && o.method !== 'github'
  if (!ok) fail('onboarding.idToken', `does not fit the ${o.method} join method (github: { kind: 'github' }; kubernetes: { kind: 'file', path }; gitlab, oidc: file or env)`)
}

/** GitHub gives a job these two variables only when it has `permissions: id-token: write`. */
export function missingGithubEnv(env: NodeJS.ProcessEnv): void {
  const missing = ['ACTIONS_ID_TOKEN_REQUEST_URL', 'ACTIONS_ID_TOKEN_REQUEST_TOKEN'].filter((k) => !env[k])
  if (missing.length > 0) {
    throw new MemidError('ERR_JOIN_ENV_MISSING', `--join-method github: ${missing.join(' and ')} ${missing.length > 1 ? 'are' : 'is'} not set: the job needs "permissions: id-token: write" (GitHub Actions sets them only then)`)
  }
}

/**
 * Resolves the options a program passes to `startAgent()` with the same rules as
 * `memid start`; errors name the option (`services[1].listen: …`).
 */
export function resolveAgentOptions(o: AgentConfigOptions): AgentConfig {
  if (typeof o !== 'object' || o === null) throw new ConfigError('options: must be an object')
  const given = (key: keyof AgentConfigOptions): Given => ({ value: o[key], at: key })
  if (o.token !== undefined && o.onboarding !== undefined) fail('token', 'give either token or onboarding, not both')
  if (o.token !== undefined && (typeof o.token !== 'string' || o.token === '')) fail('token', 'must be a non-empty string')
  const onboarding: Onboarding | undefined = o.token !== undefined ? { method: 'token', token: { kind: 'value', value: o.token } } : o.onboarding
  if (onboarding !== undefined) checkOnboarding(onboarding)
  if (o.services !== undefined && !Array.isArray(o.services)) fail('services', 'must be an array')
  if (o.caPins !== undefined && !Array.isArray(o.caPins)) fail('caPins', 'must be an array')
  if (o.authServer !== undefined && o.authServers !== undefined) fail('authServers', 'give either authServer or authServers, not both')
  if (o.authServers !== undefined && !Array.isArray(o.authServers)) fail('authServers', 'must be an array')
  return resolveAgentConfig({
    authServers: {
      items: o.authServers !== undefined ? o.authServers.map((value, i) => ({ value, at: `authServers[${i}]` })) : o.authServer !== undefined ? [given('authServer')] : [],
      at: 'authServer', hint: '',
    },
    caPins: { items: (o.caPins ?? []).map((value, i) => ({ value, at: `caPins[${i}]` })), at: 'caPins', hint: '' },
    onboarding: { value: onboarding, at: 'token', hint: ': pass token (or onboarding)' },
    certificateTtl: given('certificateTtlMs'),
    renewalInterval: given('renewalIntervalMs'),
    controlSocket: given('controlSocket'),
    diagnostics: given('diagnostics'),
    logFormat: { value: undefined, at: 'logFormat' },
    drainMs: given('drainMs'),
    workers: given('workers'),
    services: (o.services ?? []).map((raw, i) => () => serviceFromOptions(raw, `services[${i}]`)),
  })
}
