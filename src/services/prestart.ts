/**
 * Starting the data-plane threads of `workers.ts`, kept in a module of its own that loads
 * nothing of memid: `memid start` imports it right after the hardening re-exec to start
 * the first thread beside the loading of the CLI (`prestartDataPlane`), and that import
 * must not wait for the modules the rest of the data plane needs.
 */
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'
import type { DataPlaneInit, ToDataPlane } from './workers.ts'

// Next to this module: .ts when run from source, .js from dist.
const WORKER_URL = new URL(`./data-plane-worker${path.extname(fileURLToPath(import.meta.url))}`, import.meta.url)

/**
 * A thread's young generation (two 2 MB semispaces). Left to grow, V8 took it to 16 MB
 * semispaces under a kube-proxy load, and each scavenge, which copies what survives
 * (~6 MB there), paused the thread 18-170 ms: the tail latency of every request in flight.
 * Capped, scavenges paused 2.4 ms (median), 22 ms at most, and the thread's heap stays small.
 */
const YOUNG_GENERATION_MB = 6

/** Starts one data-plane thread (its code loads when services are added to it). */
export function startThread(init: DataPlaneInit): Worker {
  return new Worker(WORKER_URL, { workerData: init, resourceLimits: { maxYoungGenerationSizeMb: YOUNG_GENERATION_MB } })
}

/** The first thread, started before the agent's config was read; until a group takes it. */
let prestarted: { worker: Worker; alive: boolean } | undefined

/**
 * Starts the first data-plane thread at once, so that Node's worker bootstrap runs beside
 * the main thread's loading of the CLI and the config instead of after it: with
 * `--workers 4` that thread, not the join, was what `agent ready` waited for. The agent's
 * group takes it as its first thread; if the agent runs no worker threads,
 * `releasePrestarted` ends it.
 */
export function prestartDataPlane(): void {
  if (prestarted !== undefined) return
  const p = { worker: startThread({ index: 0, logLevel: 'info' }), alive: true }
  // Until a group takes it, a failure only means that the group starts a thread of its own.
  p.worker.on('error', () => undefined)
  p.worker.once('exit', () => (p.alive = false))
  prestarted = p
}

/** The prestarted thread, set to `logLevel`, if one is still running; it is the caller's from now on. */
export function takePrestarted(logLevel: string): Worker | undefined {
  const p = prestarted
  prestarted = undefined
  if (p === undefined || !p.alive) return undefined
  p.worker.postMessage({ type: 'log-level', level: logLevel } satisfies ToDataPlane)
  return p.worker
}

/** Ends the prestarted thread if no group took it (the agent runs no worker threads). */
export function releasePrestarted(): void {
  const p = prestarted
  prestarted = undefined
  if (p?.alive) void p.worker.terminate()
}
