import { ConfigError } from '../../core/errors.ts'
import { parseListenAt, resolveExposure, type ListenAddress, type LocalExposureConfig, type ResolvedExposure } from '../../core/listener.ts'

/**
 * What the agent passes to build a kube proxy (one per cluster). The listen address must be
 * loopback or a unix socket unless `allowRemote`; TCP clients are served when they run as
 * the agent's user or one of `allowedUsers`.
 */
export interface KubeProxyConfig extends LocalExposureConfig {
  /** `host:port` (loopback by default) or an absolute unix socket path. */
  listen: string
  /** The cluster name registered with `memid kube add`. */
  cluster: string
  /**
   * Host header values accepted (hostnames, optionally with `:port`). Anything else gets
   * 403, which is what stops a DNS-rebinding page from reaching the cluster through the
   * proxy. Default: localhost, 127.0.0.1 and [::1], on any port.
   */
  allowedHosts?: string[]
}

/** What `kubectl proxy` accepts by default: the loopback names, on any port. */
export const DEFAULT_ALLOWED_HOSTS: readonly string[] = ['localhost', '127.0.0.1', '[::1]']

/** The validated form the service works with. */
export interface ResolvedKubeProxyConfig {
  listen: ListenAddress
  cluster: string
  allowedHosts: HostAllowList
  exposure: ResolvedExposure
}

/** Validates the config once, at the edge; messages name the key. */
export function resolveKubeProxyConfig(cfg: KubeProxyConfig): ResolvedKubeProxyConfig {
  const listen = parseListenAt(cfg.listen, 'listen')
  const exposure = resolveExposure(cfg, listen)
  if (typeof cfg.cluster !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(cfg.cluster)) {
    throw new ConfigError(`cluster: "${String(cfg.cluster).slice(0, 64)}" is not a valid cluster name`)
  }
  return { listen, cluster: cfg.cluster, allowedHosts: new HostAllowList(cfg.allowedHosts ?? DEFAULT_ALLOWED_HOSTS), exposure }
}

/**
 * Host header allow-list. Entries without a port match the host on any port; entries
 * with a port match only that port. Comparison ignores case; IPv6 may be written with or
 * without brackets.
 */
export class HostAllowList {
  readonly #anyPort = new Set<string>()
  readonly #exact = new Set<string>()
  /** Recent verdicts: kubectl sends the same Host on every request. Bounded, so junk cannot grow it. */
  readonly #seen = new Map<string, boolean>()

  constructor(entries: readonly string[]) {
    entries.forEach((raw, i) => {
      const parsed = splitHost(raw.trim().toLowerCase())
      if (parsed === undefined || parsed.host === '') throw new ConfigError(`allowedHosts[${i}]: "${raw.slice(0, 80)}" is not a host or host:port`)
      if (parsed.port === undefined) this.#anyPort.add(parsed.host)
      else this.#exact.add(`${parsed.host}:${parsed.port}`)
    })
  }

  /** How many verdicts are cached (for tests: the cache must stay bounded). */
  get cachedVerdicts(): number {
    return this.#seen.size
  }

  /** True when a request carrying this Host header may be forwarded. */
  allows(hostHeader: string | undefined): boolean {
    if (hostHeader === undefined) return false
    const known = this.#seen.get(hostHeader)
    if (known !== undefined) return known
    const verdict = this.#check(hostHeader)
    if (this.#seen.size >= 32) this.#seen.clear()
    this.#seen.set(hostHeader, verdict)
    return verdict
  }

  #check(hostHeader: string): boolean {
    const parsed = splitHost(hostHeader.toLowerCase())
    if (parsed === undefined) return false
    if (this.#anyPort.has(parsed.host)) return true
    return parsed.port !== undefined && this.#exact.has(`${parsed.host}:${parsed.port}`)
  }
}

/** `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 address (no port). */
function splitHost(text: string): { host: string; port?: string } | undefined {
  if (text.startsWith('[')) {
    const m = /^\[([0-9a-f:.]+)\](?::(\d{1,5}))?$/.exec(text)
    if (m === null) return undefined
    return m[2] === undefined ? { host: m[1] as string } : { host: m[1] as string, port: m[2] }
  }
  if ((text.match(/:/g) ?? []).length > 1) return /^[0-9a-f:.]+$/.test(text) ? { host: text } : undefined
  const m = /^([a-z0-9.-]+)(?::(\d{1,5}))?$/.exec(text)
  if (m === null) return undefined
  return m[2] === undefined ? { host: m[1] as string } : { host: m[1] as string, port: m[2] }
}
