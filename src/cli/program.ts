import { Command, CommanderError } from 'commander'
import { EXIT_OK, EXIT_USAGE, exitProcess, exitWithError } from './exit.ts'
import { registerAuthCommands } from './auth.ts'
import { registerAdminCommands } from './admin.ts'
import { registerAgentCommands } from './agent.ts'
import { VERSION } from '../version.ts'

/** Builds the command tree; flag and config parsing only, the work lives in src/. */
export function buildProgram(): Command {
  const program = new Command('memid')
    .description('machine identity that never touches the disk')
    .version(VERSION)
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s.startsWith('error:') ? `memid: ${s.slice(7)}` : s) })
  registerAuthCommands(program)
  registerAdminCommands(program)
  registerAgentCommands(program)
  for (const cmd of allCommands(program)) cmd.exitOverride()
  return program
}

function allCommands(c: Command): Command[] {
  return [c, ...c.commands.flatMap(allCommands)]
}

/** Parses argv and runs the command: exit 0 ok, 1 user error, 2 usage, 3 identity lost. */
export async function runProgram(argv: string[]): Promise<void> {
  const program = buildProgram()
  try {
    await program.parseAsync(argv)
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') exitProcess(EXIT_OK)
      exitProcess(EXIT_USAGE)
    }
    exitWithError(err)
  }
}
