/**
 * The database tunnel as a worker thread builds it (see `services/workers.ts`): from the
 * settings the main thread resolved, which are plain data, so no config code is loaded.
 */
import type { TlsClientCredential } from '../../credentials/credentials.ts'
import { tlsCredentialFromPortable, type PortableTlsCredential } from '../../credentials/issuer.ts'
import type { ThreadEntry } from '../definition.ts'
import type { ServiceDeps } from '../service.ts'
import type { ResolvedDbTunnelConfig } from './config.ts'

export const thread: ThreadEntry = {
  unpack: (data) => tlsCredentialFromPortable(data as PortableTlsCredential),
  async build(data, deps) {
    const { DbTunnelService } = await import('./tunnel.ts')
    return new DbTunnelService(data as ResolvedDbTunnelConfig, deps as ServiceDeps<TlsClientCredential>)
  },
}
