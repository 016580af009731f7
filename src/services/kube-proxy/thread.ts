/**
 * The kube proxy as a worker thread builds it (see `services/workers.ts`): from its options,
 * resolved again without the config schemas, which a thread has no use for.
 */
import type { TlsClientCredential } from '../../credentials/credentials.ts'
import { tlsCredentialFromPortable, type PortableTlsCredential } from '../../credentials/issuer.ts'
import type { ThreadEntry } from '../definition.ts'
import type { ServiceDeps } from '../service.ts'
import { resolveKubeProxyConfig } from './config.ts'
import type { KubeProxyOptions } from './definition.ts'

export const thread: ThreadEntry = {
  unpack: (data) => tlsCredentialFromPortable(data as PortableTlsCredential),
  async build(data, deps) {
    const o = data as KubeProxyOptions
    const { buildKubeProxyService } = await import('./index.ts')
    return buildKubeProxyService({ ...resolveKubeProxyConfig(o), ...(o.user ? { user: o.user } : {}) }, deps as ServiceDeps<TlsClientCredential>)
  },
}
