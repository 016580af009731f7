import type { Clock } from '../core/clock.ts'
import { describeError } from '../core/errors.ts'
import { formatAddress } from '../core/listener.ts'
import type { CredentialSource, CredentialState } from '../credentials/credentials.ts'
import type { ResolvedService, CredentialView } from '../services/definition.ts'
import type { Health, Service } from '../services/service.ts'
import { VERSION } from '../version.ts'
import type { BotIdentity } from './bot-identity.ts'
import type { Readiness } from './diagnostics.ts'
import type { RenewalStatus } from './renewal.ts'

export interface ServiceStatus {
  name: string
  type: string
  address: string
  status: Health['status']
  reason?: string
  credential: CredentialState
  [extra: string]: unknown
}

/** What `memid status` shows: never any key or certificate body. */
export interface AgentStatus {
  version: string
  /** The auth server in use (the one that answered last). */
  authServer: string
  /** Every configured auth server, in the order they are tried. */
  authServers: string[]
  bot?: string
  instanceId?: string
  generation?: number
  /** How the agent joined, and how many joins this process made (platform joins rejoin). */
  joinMethod?: string
  joins: number
  identity: CredentialState & { expiresInSeconds?: number }
  renewal: RenewalStatus
  heartbeatFailures: number
  startedAt: string
  controlSocket?: string
  diagnostics?: string
  services: ServiceStatus[]
}

/** One configured service as the views see it: before it is built, `service` is undefined. */
export interface ServiceView {
  resolved: ResolvedService
  credential: CredentialView
  service: Service | undefined
}

/** Everything status and readiness are computed from. */
export interface AgentView {
  authServer: string
  authServers: string[]
  identity: CredentialSource<BotIdentity>
  renewal: RenewalStatus
  heartbeatFailures: number
  joinMethod?: string
  joins: number
  startedAt: string
  servicesUp: boolean
  controlSocket?: string
  diagnostics?: string
  services: readonly ServiceView[]
  clock: Clock
}

function health(v: ServiceView): Health {
  return v.service?.health() ?? { status: 'starting' }
}

function nameOf(v: ServiceView): string {
  return v.service?.name ?? v.resolved.name
}

function addressOf(v: ServiceView): string {
  return v.service?.address ?? formatAddress(v.resolved.address)
}

/** The service's name, with its address when two services share a name (TCP and socket tunnels). */
function key(v: ServiceView, all: readonly ServiceView[]): string {
  const name = nameOf(v)
  return all.filter((o) => nameOf(o) === name).length > 1 ? `${name}@${addressOf(v)}` : name
}

/** `/readyz`: the identity and each service's own account of itself, nothing overridden. */
export function readiness(view: AgentView): Readiness {
  const services: Readiness['services'] = {}
  const idValid = view.identity.valid()
  services['identity'] = idValid ? { status: 'ok' } : { status: 'expired', reason: problem(view.identity) }
  let ok = idValid && view.servicesUp
  for (const v of view.services) {
    const h = health(v)
    if (h.status !== 'ok') ok = false
    services[key(v, view.services)] = h.reason !== undefined ? { status: h.status, reason: h.reason } : { status: h.status }
  }
  return { status: ok ? 'ok' : 'unavailable', services }
}

/** `memid status`. */
export function agentStatus(view: AgentView): AgentStatus {
  const id = view.identity.peek()
  const state = view.identity.state()
  return {
    version: VERSION,
    authServer: view.authServer,
    authServers: view.authServers,
    ...(id ? { bot: id.bot, instanceId: id.instanceId, generation: id.generation } : {}),
    ...(view.joinMethod !== undefined ? { joinMethod: view.joinMethod } : {}),
    joins: view.joins,
    identity: id ? { ...state, expiresInSeconds: Math.round((id.notAfter.getTime() - view.clock.now()) / 1000) } : state,
    renewal: view.renewal,
    heartbeatFailures: view.heartbeatFailures,
    startedAt: view.startedAt,
    ...(view.controlSocket !== undefined ? { controlSocket: view.controlSocket } : {}),
    ...(view.diagnostics !== undefined ? { diagnostics: view.diagnostics } : {}),
    services: view.services.map((v) => {
      const h = health(v)
      return {
        name: nameOf(v), type: v.resolved.type, address: addressOf(v),
        ...(v.service?.describe?.() ?? {}),
        status: h.status,
        ...(h.reason !== undefined ? { reason: h.reason } : {}),
        credential: v.credential.state(),
      }
    }),
  }
}

/** Why a credential cannot be used, in the words its services use too. */
function problem(source: CredentialSource<BotIdentity>): string {
  try {
    source.current()
    return 'ok'
  } catch (err) {
    return describeError(err)
  }
}
