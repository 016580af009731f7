import { ConfigError } from '../core/errors.ts'
import type { ResolvedService, ServiceType } from './definition.ts'
import { sshAgent } from './ssh-agent/definition.ts'
import { kubeProxy } from './kube-proxy/definition.ts'
import { dbTunnel } from './db-tunnel/definition.ts'

/** Every service type the agent can run. Adding one is a folder and a line here. */
export const serviceTypes = [sshAgent, kubeProxy, dbTunnel] as const

type OptionsOf<T> = T extends ServiceType<infer O> ? O : never

/** A service as a program configures it in `startAgent({ services })`: the union of every type's options. */
export type ServiceOptions = OptionsOf<(typeof serviceTypes)[number]>

function typeOf(raw: unknown, at: string): ServiceType {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ConfigError(`${at}: must be an object`)
  const type = 'type' in raw ? raw.type : undefined
  const def = serviceTypes.find((d) => d.type === type)
  if (def === undefined) throw new ConfigError(`${at}.type: must be ${serviceTypes.map((d) => d.type).join(', ').replace(/, ([^,]*)$/, ' or $1')}`)
  return def
}

/** Resolves one `services[i]` entry of the YAML file. */
export function serviceFromFile(raw: unknown, at: string): ResolvedService {
  return typeOf(raw, at).fromFile(raw, at)
}

/** Resolves one entry of `startAgent({ services })`. */
export function serviceFromOptions(raw: unknown, at: string): ResolvedService {
  return typeOf(raw, at).fromOptions(raw, at)
}
