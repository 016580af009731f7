import { z } from 'zod'
import { ConfigError } from '../core/errors.ts'
import { formatDuration, parseDuration } from '../core/duration.ts'
import { durationSchema, issueText } from '../core/validate.ts'
import { formatAddress, parseListenAddress, type ListenAddress } from '../core/listener.ts'
import type { ResolvedService } from '../services/definition.ts'
import { serviceFromFile, serviceFromOptions, serviceTypes, type ServiceOptions } from '../services/registry.ts'
import { readYamlFile } from './auth.ts'
import { defaultControlSocket } from './paths.ts'

export { defaultControlSocket } from './paths.ts'
export type { ServiceOptions } from '../services/registry.ts'

/** The options form of one service (`startAgent({ services })`); kept under its old name. */
export type ServiceConfig = ServiceOptions

/** Where the join token comes from. The value itself is read at join time, never stored in config. */
export type TokenSource = { kind: 'file'; path: string } | { kind: 'stdin' } | { kind: 'env' } | { kind: 'value'; value: string }

/** How the agent proves itself the first time. One member per join method. */
export type Onboarding = { method: 'token'; token: TokenSource }

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
  authServer: AuthServerAddress
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
  services: ResolvedService[]
}

/** What `startAgent()` accepts: the options form of the config (camelCase, durations in ms). */
export interface AgentConfigOptions {
  /** `host:port` of the auth service. */
  authServer: string
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
}

/** The flags of `memid start` (service flags come from the registry: `--ssh-agent`, `--kube-proxy`, …). */
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
  logFormat?: string
  [serviceFlag: string]: string | string[] | undefined
}

/** A value as given and the name the user wrote it under (flag, key path or option). */
interface Given {
  value: unknown
  at: string
}

/** Everything `resolveAgentConfig` needs, whichever entry point gathered it. */
interface AgentInput {
  authServer: Given & { hint: string }
  caPins: { items: Given[]; at: string; hint: string }
  onboarding: Given & { value: Onboarding | undefined; hint: string }
  certificateTtl: Given
  renewalInterval: Given
  controlSocket: Given
  diagnostics: Given
  logFormat: Given
  drainMs: Given
  /** Each resolves one service (throwing a ConfigError that names where it was configured). */
  services: (() => ResolvedService)[]
}

const DEFAULT_TTL_MS = 3_600_000
const DEFAULT_INTERVAL_MS = 1_200_000
const DEFAULT_DRAIN_MS = 10_000
const PIN = /^sha256:[0-9a-f]{64}$/

function fail(at: string, message: string): never {
  throw new ConfigError(`${at}: ${message}`)
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
  if (input.authServer.value === undefined) fail(input.authServer.at, `is required${input.authServer.hint}`)
  const authServer = parseAuthServer(input.authServer.value, input.authServer.at)
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

  const services = input.services.map((resolve) => resolve())
  checkServices(services)
  return {
    authServer, caPins, onboarding, certificateTtlMs, renewalIntervalMs,
    ...(controlSocket !== undefined ? { controlSocket } : {}), ...(diagnostics !== undefined ? { diagnostics } : {}),
    logFormat, drainMs, services,
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
  ca_pins: z.array(z.string()).min(1).optional(),
  onboarding: z.strictObject({
    join_method: z.literal('token').optional(),
    token_file: z.string().min(1).optional(),
  }).optional(),
  certificate_ttl: durationSchema.optional(),
  renewal_interval: durationSchema.optional(),
  control_socket: z.string().optional(),
  diagnostics: z.strictObject({ listen: z.string() }).optional(),
  log_format: z.enum(['json', 'text']).optional(),
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
  if (joinMethod !== 'token') fail('--join-method', `"${joinMethod}" is not supported; use token`)

  let token: TokenSource | undefined
  if (flags.tokenFile === '-') token = { kind: 'stdin' }
  else if (flags.tokenFile !== undefined) token = { kind: 'file', path: flags.tokenFile }
  else if (flags.token !== undefined) token = { kind: 'value', value: flags.token }
  else if (env.MEMID_TOKEN) token = { kind: 'env' }
  else if (file?.onboarding?.token_file !== undefined) token = { kind: 'file', path: file.onboarding.token_file }

  // File services first, then flags, in the order given; each named where it was written.
  const services: (() => ResolvedService)[] = (file?.services ?? []).map((raw, i) => () => serviceFromFile(raw, `services[${i}]`))
  for (const f of serviceFlags()) {
    const given = flags[f.key]
    const values = given === undefined ? [] : Array.isArray(given) ? given : [given]
    values.forEach((v, i) => services.push(() => f.fromFlag(v, f.repeatable ? `--${f.name}[${i}]` : `--${f.name}`)))
  }

  const pinsFromFlags = flags.caPin !== undefined && flags.caPin.length > 0
  return resolveAgentConfig({
    authServer: { ...pick(flags.authServer, '--auth-server', file?.auth_server, 'auth_server'), hint: ' (--auth-server HOST:PORT)' },
    caPins: {
      items: pinsFromFlags ? (flags.caPin ?? []).map((value) => ({ value, at: '--ca-pin' })) : (file?.ca_pins ?? []).map((value, i) => ({ value, at: `ca_pins[${i}]` })),
      at: 'ca_pins', hint: ' (--ca-pin sha256:…; memid auth ca-pin prints it)',
    },
    onboarding: {
      value: token !== undefined ? { method: 'token', token } : undefined, at: 'onboarding.token_file',
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
    services,
  })
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
  if (o.services !== undefined && !Array.isArray(o.services)) fail('services', 'must be an array')
  if (o.caPins !== undefined && !Array.isArray(o.caPins)) fail('caPins', 'must be an array')
  return resolveAgentConfig({
    authServer: { ...given('authServer'), hint: '' },
    caPins: { items: (o.caPins ?? []).map((value, i) => ({ value, at: `caPins[${i}]` })), at: 'caPins', hint: '' },
    onboarding: { value: onboarding, at: 'token', hint: ': pass token (or onboarding)' },
    certificateTtl: given('certificateTtlMs'),
    renewalInterval: given('renewalIntervalMs'),
    controlSocket: given('controlSocket'),
    diagnostics: given('diagnostics'),
    logFormat: { value: undefined, at: 'logFormat' },
    drainMs: given('drainMs'),
    services: (o.services ?? []).map((raw, i) => () => serviceFromOptions(raw, `services[${i}]`)),
  })
}
