import { generateKeyPairSync } from 'node:crypto'
import { z } from 'zod'
import { ConfigError } from '../../core/errors.ts'
import { exposureFileKeys, exposureFromFile, exposureOptionKeys, principalSchema } from '../../core/validate.ts'
import type { TlsClientCredential } from '../../credentials/credentials.ts'
import { portableTlsCredential, spkiPem, tlsClientCredential } from '../../credentials/issuer.ts'
import { defineService, siblingModule } from '../definition.ts'
import { resolveKubeProxyConfig, type ResolvedKubeProxyConfig } from './config.ts'

const hosts = z.array(z.string().min(1).max(255)).max(64)

const options = z.strictObject({
  type: z.literal('kube-proxy'),
  /** The cluster name registered with `memid kube add`. */
  cluster: z.string(),
  /** `host:port` (loopback by default) or an absolute unix socket path. */
  listen: z.string(),
  /** Host header values accepted; default localhost, 127.0.0.1 and [::1] on any port. */
  allowedHosts: hosts.optional(),
  /** One of the roles' kube users; needed only when the roles allow several. */
  user: principalSchema.optional(),
  /** `allowRemote`: listen on a non-loopback address; `allowedUsers`: more local users served. */
  ...exposureOptionKeys,
})

const file = z.strictObject({
  type: z.literal('kube-proxy'), cluster: z.string(), listen: z.string(), allowed_hosts: hosts.optional(), user: principalSchema.optional(),
  ...exposureFileKeys,
})

/** `services[]: { type: kube-proxy, … }` as a program passes it to `startAgent()`. */
export type KubeProxyOptions = z.infer<typeof options>

export interface KubeProxySettings extends ResolvedKubeProxyConfig {
  user?: string
}

/** `http://127.0.0.1:8001` for a TCP proxy; unix-socket proxies have no URL kubectl can use. */
function proxyUrl(address: string): string {
  return address.startsWith('/') ? `unix://${address}` : `http://${address}`
}

/** The local Kubernetes API proxy for one cluster. */
export const kubeProxy = defineService<'kube-proxy', KubeProxyOptions, z.infer<typeof file>, KubeProxySettings, TlsClientCredential>({
  type: 'kube-proxy',
  options,
  file,
  fromFile: (f) => ({
    type: 'kube-proxy', cluster: f.cluster, listen: f.listen, ...(f.allowed_hosts ? { allowedHosts: f.allowed_hosts } : {}), ...(f.user ? { user: f.user } : {}),
    ...exposureFromFile(f),
  }),
  flag: {
    name: 'kube-proxy', value: '<listen=cluster>', description: 'local Kubernetes API proxy (repeatable)', repeatable: true,
    parse(value) {
      const eq = value.lastIndexOf('=')
      if (eq <= 0) throw new ConfigError(`must be LISTEN=CLUSTER, e.g. 127.0.0.1:8001=prod, got "${value.slice(0, 120)}"`)
      return { type: 'kube-proxy', listen: value.slice(0, eq), cluster: value.slice(eq + 1) }
    },
  },
  resolve: (o) => ({ ...resolveKubeProxyConfig(o), ...(o.user ? { user: o.user } : {}) }),
  name: (s) => `kube-proxy:${s.cluster}`,
  address: (s) => s.listen,
  async issue(s, issuer) {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const res = await issuer.issueKube({ publicKey: spkiPem(privateKey), cluster: s.cluster, ttl: issuer.ttl, ...(s.user ? { user: s.user } : {}) })
    return tlsClientCredential('kube', privateKey, res, 443, { groups: res.groups })
  },
  async build(s, deps) {
    const { buildKubeProxyService } = await import('./index.ts')
    return buildKubeProxyService(s, deps)
  },
  kubeconfig: (s, service) => ({ name: s.cluster, cluster: s.cluster, server: proxyUrl(service.address) }),
  worker: {
    pack: portableTlsCredential,
    // The settings hold the Host allow-list as an object: the thread resolves the options again.
    threadData: (_s, o) => o,
    module: siblingModule(import.meta.url, 'thread'),
    counters: ['activeUpgrades', 'activeWatches'],
  },
})
