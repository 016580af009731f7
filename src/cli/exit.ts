import { MemidError, FATAL_IDENTITY_CODES, describeError } from '../core/errors.ts'

/** Exit codes of the contract: 0 ok, 1 user error, 2 usage, 3 identity can no longer be renewed. */
export const EXIT_OK = 0
export const EXIT_ERROR = 1
export const EXIT_USAGE = 2
export const EXIT_IDENTITY_LOST = 3

/** Maps an error to its exit code; the one place that does. */
export function exitCodeFor(err: unknown): number {
  if (err instanceof MemidError) {
    if (err.code === 'ERR_CONFIG' || err.code === 'ERR_USAGE') return EXIT_USAGE
    if (FATAL_IDENTITY_CODES.has(err.code)) return EXIT_IDENTITY_LOST
  }
  return EXIT_ERROR
}

/** Ends the process: the one call of process.exit in memid. */
export function exitProcess(code: number): never {
  process.exit(code)
}

/** Prints one line (never a stack) and exits with the mapped code. */
export function exitWithError(err: unknown): never {
  process.stderr.write(`memid: ${describeError(err)}\n`)
  return exitProcess(exitCodeFor(err))
}
