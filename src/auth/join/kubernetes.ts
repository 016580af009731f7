import type { JoinMethodSpec } from './method.ts'

/**
 * Kubernetes: a projected service-account token. The cluster's issuer is named with
 * `--issuer`; its keys come from discovery or, for private clusters, a `--jwks-file`
 * taken from `kubectl get --raw /openid/v1/jwks`.
 */
export const kubernetes: JoinMethodSpec = {
  method: 'kubernetes',
  identifying: ['sub'],
  recorded: ['kubernetes.io.namespace', 'kubernetes.io.serviceaccount.name', 'kubernetes.io.pod.name'],
}
