import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

/**
 * The addon's one function (see native/sock-diag.c): the owner of the TCP socket whose
 * own address is `src:sport` and whose peer is `dst:dport`, as `[errno, uid, inode]`;
 * errno 0 when found, 2 (ENOENT) when no socket has that 4-tuple.
 */
export type SockDiagLookup = (family: 4 | 6, src: Uint8Array, sport: number, dst: Uint8Array, dport: number) => [number, number, number]

/** Where `npm install` builds the addon: native/build/, from src/core/ or dist/core/ alike. */
const ADDON = fileURLToPath(new URL('../../native/build/sock-diag.node', import.meta.url))

/** Loads the addon once per thread, or says why it cannot be used here. */
export function loadSockDiag(file = ADDON): { lookup: SockDiagLookup } | { why: string } {
  if (process.platform !== 'linux') return { why: 'sock_diag is Linux-only' }
  if (!existsSync(file)) return { why: `${file} is not built (npm run build:native needs a C compiler)` }
  try {
    const addon = createRequire(import.meta.url)(file) as { lookup?: unknown }
    if (typeof addon.lookup !== 'function') return { why: `${file} has no lookup function` }
    return { lookup: addon.lookup as SockDiagLookup }
  } catch (err) {
    return { why: `${file} cannot be loaded: ${(err as Error).message.split('\n')[0]}` }
  }
}
