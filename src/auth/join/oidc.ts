import type { JoinMethodSpec } from './method.ts'

/** Any OIDC issuer (`--issuer` required): rules may name any claim. */
export const oidc: JoinMethodSpec = {
  method: 'oidc',
  identifying: ['sub'],
  recorded: ['sub'],
}
