import os from 'node:os'
import path from 'node:path'

/** The data dir: flag, then `$MEMID_DATA_DIR`, then `./memid-data`. */
export function resolveDataDir(flag?: string): string {
  return path.resolve(flag ?? process.env.MEMID_DATA_DIR ?? 'memid-data')
}

/** `$XDG_RUNTIME_DIR/memid/control.sock`, else `/tmp/memid-<uid>/control.sock`. */
export function defaultControlSocket(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_RUNTIME_DIR
  if (xdg && xdg.startsWith('/')) return path.join(xdg, 'memid', 'control.sock')
  return path.join(os.tmpdir(), `memid-${process.getuid?.() ?? 'user'}`, 'control.sock')
}
