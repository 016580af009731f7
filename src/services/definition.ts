import type { z } from 'zod'
import type { Clock } from '../core/clock.ts'
import { ConfigError } from '../core/errors.ts'
import type { ListenAddress } from '../core/listener.ts'
import { issueText } from '../core/validate.ts'
import { CredentialSource, type CredentialState, type IssuedCredential } from '../credentials/credentials.ts'
import type { CredentialIssuer } from '../credentials/issuer.ts'
import type { Service, ServiceDeps } from './service.ts'
import type { WorkerGroup } from './workers.ts'

/** A command-line flag that adds a service of one type (`--kube-proxy 127.0.0.1:8001=prod`). */
export interface ServiceFlag<O> {
  /** The long flag without dashes: `kube-proxy`. */
  readonly name: string
  /** Its placeholder in `--help`: `<listen=cluster>`. */
  readonly value: string
  readonly description: string
  /** Repeatable flags are named with their index in errors: `--kube-proxy[1].listen`. */
  readonly repeatable: boolean
  /**
   * Splits one flag value into options. A ConfigError's message says what is wrong with the
   * whole value (`must be LISTEN=CLUSTER…`); the caller prefixes the flag.
   */
  parse(value: string): O
}

/**
 * How a service type runs its TCP data plane in worker threads: how its credential crosses
 * to a thread (keys as KeyObjects by postMessage, never bytes in a file, argv or env), and
 * what a thread is handed to build the service.
 */
export interface WorkerSupport<O, R, C extends IssuedCredential> {
  /** The credential as `postMessage` can carry it (no TLS context: each thread builds its own). */
  pack(credential: C): unknown
  /**
   * What a thread's `ThreadEntry.build` is handed (structured-cloneable), with any limit
   * split between the `workers` threads.
   */
  threadData(settings: R, options: O, workers: number): unknown
  /**
   * The module a thread loads (`siblingModule(import.meta.url, 'thread')`), exporting
   * `thread: ThreadEntry`. It leaves out config code (zod and the schemas), which a thread
   * does not need and which would cost every thread its memory.
   */
  module: string
  /** `describe()` keys that count per thread and are summed across threads in `memid status`. */
  counters?: readonly string[]
}

/** What a service type's thread module exports as `thread`. */
export interface ThreadEntry {
  /** A packed credential back, with this thread's own TLS context. */
  unpack(data: unknown): IssuedCredential
  build(data: unknown, deps: ServiceDeps<IssuedCredential>): Promise<Service>
}

/** The URL of a module next to `base` (`import.meta.url`): `.ts` from source, `.js` from dist. */
export function siblingModule(base: string, name: string): string {
  return new URL(`./${name}${base.slice(base.lastIndexOf('.'))}`, base).href
}

/** One context of the agent's kubeconfig, for services that proxy a Kubernetes API. */
export interface KubeconfigEntry {
  name: string
  cluster: string
  server: string
}

/**
 * Everything the agent knows about one service type, in one place. `O` is the options
 * object a program passes (`startAgent({ services: [...] })`), `F` the YAML form, `R` the
 * resolved, validated settings and `C` the credential the service serves.
 *
 * To add a service type: write `services/<type>/definition.ts` with one of these and list
 * it in `services/registry.ts`; config, CLI flags, credential renewal, status, heartbeat
 * and shutdown follow from it.
 *
 * Room to grow: a per-service listener option (remote exposure, allowed peer users) is a
 * key in `options`/`file` that `resolve` turns into a field of the settings next to the
 * parsed address, checked there like any other; `build` receives settings that are plain
 * data and loads its implementation with `import()`, so a data plane in a worker thread
 * can be handed the same settings and build the service on its side.
 */
export interface ServiceDefinition<T extends string, O extends { type: T }, F, R, C extends IssuedCredential> {
  readonly type: T
  /** The options form (camelCase), strict: what `startAgent()` accepts. */
  readonly options: z.ZodType<O>
  /** The YAML form (snake_case), strict, as it appears under `services[]`. */
  readonly file: z.ZodType<F>
  fromFile(file: F): O
  readonly flag?: ServiceFlag<O>
  /** At most this many services of the type per agent. */
  readonly max?: number
  /**
   * Turns options into the settings the service runs with: addresses parsed, names
   * checked, defaults filled. Throws a ConfigError whose message starts with the option key
   * (`listen: …`); the caller prefixes where the service was configured. Runs before the
   * agent spends its join token, so every config problem must surface here and never in
   * `build`. The settings are plain data, so a worker thread could be handed them.
   */
  resolve(options: O): R
  /** The service's name in status, logs and metrics (`kube-proxy:prod`). */
  name(settings: R): string
  /** Where it listens, as configured (port 0 stays 0 until started). */
  address(settings: R): ListenAddress
  /** Fetches a fresh credential (a new key pair every time). */
  issue(settings: R, issuer: CredentialIssuer): Promise<C>
  /** Builds the service; its code is loaded only when one is configured. */
  build(settings: R, deps: ServiceDeps<C>): Promise<Service>
  /** What the service adds to `memid kubeconfig`, if anything. */
  kubeconfig?(settings: R, service: Service): KubeconfigEntry
  /** Present when the service's TCP listener can be served from several worker threads. */
  worker?: WorkerSupport<O, R, C>
}

/** A credential as the agent watches it, whatever its kind. */
export interface CredentialView {
  readonly name: string
  valid(): boolean
  state(): CredentialState
  /** Records why the latest renewal failed (the credential itself is kept until it expires). */
  fail(err: unknown): void
}

/**
 * One configured service, resolved and ready to run: the link between its settings, its
 * credential and the service, kept typed inside the definition so the agent needs no
 * knowledge of (and no casts to) any particular type.
 */
export interface ResolvedService {
  readonly type: string
  readonly name: string
  readonly address: ListenAddress
  /** The validated settings (for tests and status; plain data). */
  readonly settings: unknown
  /** Where it was configured: `services[1]`, `--kube-proxy[0]`, `services[0]` of the options. */
  readonly at: string
  readonly max: number | undefined
  /** Creates the service's credential holder; `build` then makes the service on it. */
  open(clock: Clock): ServiceSlot
}

/** What the agent hands `ServiceSlot.build`. */
export interface SlotDeps extends Omit<ServiceDeps<IssuedCredential>, 'credentials'> {
  /**
   * The agent's worker threads for TCP data planes. Absent (`workers: 1`), unix-socket
   * listeners and services without worker support run in this thread.
   */
  workers?: WorkerGroup
}

export interface ServiceSlot {
  readonly credential: CredentialView
  /** Fetches a fresh credential and holds it; returns it for logging (no secret is logged). */
  renew(issuer: CredentialIssuer): Promise<IssuedCredential>
  build(deps: SlotDeps): Promise<Service>
  kubeconfig(service: Service): KubeconfigEntry | undefined
}

/** A service type as config and agent use it: each entry point yields a ResolvedService. */
export interface ServiceType<O = unknown> {
  readonly type: string
  readonly options: z.ZodType<O>
  readonly flag: Omit<ServiceFlag<O>, 'parse'> | undefined
  /** From a `services[i]` YAML entry (already known to carry this type). */
  fromFile(raw: unknown, at: string): ResolvedService
  /** From an options object a program passed. */
  fromOptions(raw: unknown, at: string): ResolvedService
  /** From one value of this type's flag; `at` is the flag as the user wrote it (`--kube-proxy[0]`). */
  fromFlag(value: string, at: string): ResolvedService
}

/** Re-throws a ConfigError from a resolve step with the place prefixed: `services[1].listen: …`. */
function placed<T>(at: string, sep: string, fn: () => T): T {
  try {
    return fn()
  } catch (err) {
    if (err instanceof ConfigError) throw new ConfigError(`${at}${sep}${err.message}`)
    throw err
  }
}

function parsed<T>(schema: z.ZodType<T>, raw: unknown, at: string): T {
  const r = schema.safeParse(raw)
  if (!r.success) throw new ConfigError(issueText(r.error, at))
  return r.data
}

/** Makes a ServiceType of a definition. */
export function defineService<T extends string, O extends { type: T }, F, R, C extends IssuedCredential>(
  def: ServiceDefinition<T, O, F, R, C>,
): ServiceType<O> {
  const bind = (options: O, at: string): ResolvedService => {
    const settings = placed(at, '.', () => def.resolve(options))
    const name = def.name(settings)
    const address = def.address(settings)
    return {
      type: def.type, name, address, settings, at, max: def.max,
      open(clock) {
        const source = new CredentialSource<C>(name, clock)
        const worker = def.worker
        return {
          credential: source,
          async renew(issuer) {
            const cred = await def.issue(settings, issuer)
            source.set(cred)
            return cred
          },
          async build({ workers, ...deps }) {
            if (workers === undefined || worker === undefined || address.kind !== 'tcp') return def.build(settings, { ...deps, credentials: source })
            return workers.attach({
              name, address, module: worker.module, data: worker.threadData(settings, options, workers.size),
              credentials: source, pack: (c) => worker.pack(c), counters: worker.counters ?? [],
            })
          },
          kubeconfig: (service) => def.kubeconfig?.(settings, service),
        }
      },
    }
  }
  const flag = def.flag
  return {
    type: def.type,
    options: def.options,
    flag: flag === undefined ? undefined : { name: flag.name, value: flag.value, description: flag.description, repeatable: flag.repeatable },
    fromFile: (raw, at) => bind(def.fromFile(parsed(def.file, raw, at)), at),
    fromOptions: (raw, at) => bind(parsed(def.options, raw, at), at),
    fromFlag(value, at) {
      if (flag === undefined) throw new ConfigError(`${at}: ${def.type} has no flag`)
      return bind(placed(at, ': ', () => flag.parse(value)), at)
    },
  }
}
