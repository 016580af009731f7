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
 * exposed (memid used as a library) this does nothing and V8 decides as usual.
 */
const gc = (globalThis as { gc?: () => void }).gc

/** Node flags `memid start` runs with: a small young generation, and `gc` for the above. */
export const AGENT_NODE_FLAGS = ['--expose-gc', '--max-semi-space-size=2']

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

function collect(): void {
  timer = undefined
  firstAt = undefined
  gc?.()
}
