import { describeError } from '../core/errors.ts'
import type { Logger } from '../core/log.ts'
import { EXIT_IDENTITY_LOST, exitCodeFor, exitProcess } from './exit.ts'

/** What `memid start`, `memid auth start` and `memid dev` run until a signal. */
export interface Runnable {
  /** Resolves once it serves; rejects with why it could not start. */
  readonly ready: Promise<void>
  /** Resolves when it has stopped, with the exit code (3: the identity can no longer be renewed). */
  readonly closed: Promise<{ code: number; reason?: string }>
  stop(): Promise<void>
  /** What SIGHUP does (the agent renews at once); ignored when absent. */
  reload?(): Promise<void>
}

/**
 * Runs until SIGTERM/SIGINT (drain and stop) or until the runnable stops by itself, then
 * exits with the contract's code. SIGHUP calls `reload`. A failed start prints one line.
 */
export async function runUntilSignal(r: Runnable, log: Logger, what: { stopping: string; reload?: string }): Promise<never> {
  let stopping = false
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) return
    stopping = true
    log.info({ signal }, what.stopping)
    r.stop().catch((err: unknown) => log.error({ reason: describeError(err) }, 'stop failed'))
  }
  process.on('SIGTERM', onSignal)
  process.on('SIGINT', onSignal)
  process.on('SIGHUP', () => {
    if (r.reload === undefined) return
    log.info(what.reload ?? 'SIGHUP')
    r.reload().catch(() => undefined)
  })
  try {
    await r.ready
  } catch (err) {
    process.stderr.write(`memid: ${describeError(err)}\n`)
    return exitProcess(exitCodeFor(err))
  }
  const exit = await r.closed
  if (exit.code === EXIT_IDENTITY_LOST) process.stderr.write(`memid: ${exit.reason ?? 'the identity can no longer be renewed'}\n`)
  return exitProcess(exit.code)
}
