import { MemidError } from '../core/errors.ts'
import { createLogger, type Logger } from '../core/log.ts'
import { loadAgentConfig, type AgentFlags } from '../config/agent.ts'
import { createAgent, type AgentHandle } from '../agent/agent.ts'
import { EXIT_IDENTITY_LOST, exitCodeFor } from './exit.ts'

/** Runs an agent until a signal or a fatal answer, then exits with the contract's code. */
export async function runAgentProcess(agent: AgentHandle, log: Logger): Promise<void> {
  const onSignal = (sig: NodeJS.Signals) => {
    log.info({ signal: sig }, 'stopping: draining open connections (up to 10s)')
    void agent.stop()
  }
  process.on('SIGTERM', onSignal)
  process.on('SIGINT', onSignal)
  process.on('SIGHUP', () => {
    log.info('SIGHUP: renewing now')
    agent.renew().catch(() => undefined)
  })
  try {
    await agent.ready
  } catch (err) {
    process.stderr.write(`memid: ${err instanceof MemidError ? err.message : String((err as Error)?.message ?? err).split('\n')[0]}\n`)
    process.exit(exitCodeFor(err))
  }
  const exit = await agent.closed
  if (exit.code === EXIT_IDENTITY_LOST) process.stderr.write(`memid: ${exit.reason ?? 'the identity can no longer be renewed'}\n`)
  process.exit(exit.code)
}

/** `memid start`: the whole config resolved first, then the agent (which reads the token and joins). */
export async function runStart(flags: AgentFlags): Promise<void> {
  const cfg = loadAgentConfig(flags)
  const log = createLogger({ format: cfg.logFormat, base: { component: 'agent' } })
  if (cfg.onboarding.method === 'token' && cfg.onboarding.token.kind === 'value') {
    log.warn('--token puts the join token in argv, which every user on this host can read; prefer --token-file or $MEMID_TOKEN')
  }
  await runAgentProcess(createAgent(cfg, { logger: log }), log)
}
