import { AGENT_NODE_FLAGS, AUTH_NODE_FLAGS } from '../core/gc.ts'
import { hardenProcess } from '../core/harden.ts'
import { exitWithError } from './exit.ts'

/**
 * The long-running commands, which harden the process (no core dumps, no inspector on
 * SIGUSR1) by re-executing it before they read any secret, and the node flags each runs
 * with; undefined for the others.
 */
export function longRunningFlags(argv: string[]): readonly string[] | undefined {
  const [command, sub] = argv.slice(2)
  if (command === 'start' || command === 'dev') return AGENT_NODE_FLAGS
  if (command === 'auth' && sub === 'start') return AUTH_NODE_FLAGS
  return undefined
}

/**
 * The process entry point: exit 0 ok, 1 user error, 2 usage, 3 identity lost.
 *
 * A long-running command re-executes the process (see `hardenProcess`) here, before the
 * command tree and its dependencies (commander, zod, pino, the services) are loaded: the
 * process that is replaced costs only Node's start, not a second load of the whole CLI.
 * The command's action hardens again, which in the re-executed process only checks.
 */
export async function main(argv: string[]): Promise<void> {
  const flags = longRunningFlags(argv)
  if (flags !== undefined) {
    try {
      hardenProcess(process.env, flags)
    } catch (err) {
      exitWithError(err)
    }
  }
  if (prestartsThread(argv)) {
    // Started before the CLI loads, so that its bootstrap runs beside that loading (see
    // prestartDataPlane). Awaited: an import() in flight together with the CLI's finishes
    // only after most of the CLI has been compiled.
    await import('../services/prestart.ts').then((w) => w.prestartDataPlane(), () => undefined)
  }
  const { runProgram } = await import('./program.ts')
  await runProgram(argv)
}

/**
 * \`memid start\` that will likely run data-plane worker threads: not \`--workers 1\`, and
 * more than one CPU (the default is one thread per CPU). A config file's \`workers: 1\`
 * is not known yet; the agent then ends the thread once it is ready.
 */
export function prestartsThread(argv: string[]): boolean {
  if (argv[2] !== 'start') return false
  const i = argv.indexOf('--workers')
  if ((i >= 0 && argv[i + 1] === '1') || argv.includes('--workers=1')) return false
  return process.getBuiltinModule('node:os').availableParallelism() > 1
}

if (import.meta.main) {
  void main(process.argv)
}
