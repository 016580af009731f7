/**
 * Frees a replaced credential's memory soon after a renewal instead of whenever V8 next
 * feels heap pressure.
 *
 * A credential's private key, certificate and TLS contexts live mostly in OpenSSL's memory,
 * which V8 does not count: the JS objects that hold them are a few hundred bytes, so an
 * agent that renews and otherwise idles can go hours without a major GC. Until then every
 * replaced key stays in memory (OpenSSL clears private key material only when it frees it)
 * and the resident size grows by ~150 KB per renewal (bench/agent.ts: 83 → 234 MB over
 * 1,000 renewals with one thread).
 *
 * `memid start` runs node with `--expose-gc` (see `AGENT_NODE_FLAGS`); where `gc` is not
 * exposed (memid used as a library) this does nothing and V8 decides as usual. After the
 * collection the C heap is trimmed (`malloc_trim`), where the native addon is built.
 */
const gc = (globalThis as { gc?: () => void }).gc

/** Node flags `memid start` runs with: a small young generation, and `gc` for the above. */
export const AGENT_NODE_FLAGS = ['--expose-gc', '--max-semi-space-size=2']

/**
 * Node flags `memid auth start` runs with: after a full collection the old generation may
 * grow to 1.3× what it kept, instead of V8's own factor (up to 4× for a heap it collects
 * quickly). A 100,000-instance listing on PostgreSQL (pg's row objects and strings, garbage
 * within milliseconds) took the server's heap to 175 MB with ~60 MB in use and its RSS to
 * 308–331 MB; with the flag the peak was 218–241 MB, at the same CPU per renewal,
 * heartbeat and certificate (bench/auth.ts, alternated runs).
 */
export const AUTH_NODE_FLAGS = ['--heap-growing-percent=30']

/** Quiet time that lets one renewal's identity and service certificates share one collection. */
const SETTLE_MS = 2_000
/** Renewals that never pause (a renewal storm, a bench) still get a collection this often. */
const MAX_WAIT_MS = 10_000

let timer: NodeJS.Timeout | undefined
let firstAt: number | undefined

/** Schedules one full collection once credentials stop changing for a moment. */
export function collectAfterRenewal(): void {
  if (gc === undefined) return
  const now = Date.now()
  firstAt ??= now
  clearTimeout(timer)
  timer = setTimeout(collect, Math.max(0, Math.min(SETTLE_MS, firstAt + MAX_WAIT_MS - now)))
  timer.unref()
}

/** After the threads' own collections (each runs one `SETTLE_MS` after the same renewal). */
const TRIM_DELAY_MS = 1_000
/** Where `npm install` builds the addon: native/build/, from src/core/ or dist/core/ alike. */
const TRIM_ADDON = new URL('../../native/build/malloc-trim.node', import.meta.url)

/**
 * glibc's malloc_trim from native/malloc-trim.c, or undefined where the addon is not built
 * or cannot load (another libc, another Node ABI): the C heap then keeps its free pages, as
 * it always did.
 */
export function loadMallocTrim(file: URL | string = TRIM_ADDON): (() => boolean) | undefined {
  try {
    const path = typeof file === 'string' ? file : process.getBuiltinModule('node:url').fileURLToPath(file)
    if (process.platform !== 'linux' || !process.getBuiltinModule('node:fs').existsSync(path)) return undefined
    const addon = process.getBuiltinModule('node:module').createRequire(import.meta.url)(path) as { trim?: unknown }
    return typeof addon.trim === 'function' ? (addon.trim as () => boolean) : undefined
  } catch {
    return undefined
  }
}

/** null until the first collection asks for it. */
let trim: (() => boolean) | undefined | null = null

/**
 * OpenSSL frees a replaced credential's memory into the C heap, which keeps most of it
 * (free chunks between live ones): the resident size stayed ~25 MB higher after 300
 * renewals with `--workers 4`. Trimming hands those pages back. It is process-wide, so
 * only the main thread asks, once the threads have run their own collections.
 */
function trimCHeap(): void {
  if (!process.getBuiltinModule('node:worker_threads').isMainThread) return
  if (trim === null) trim = loadMallocTrim()
  if (trim !== undefined) setTimeout(() => trim?.(), TRIM_DELAY_MS).unref()
}

function collect(): void {
  timer = undefined
  firstAt = undefined
  if (gc === undefined) return
  gc()
  trimCHeap()
}
