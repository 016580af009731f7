import { createLogger, type Logger } from '../core/log.ts'
import { loadAgentConfig, type AgentFlags } from '../config/agent.ts'
import { createAgent, type AgentExit, type AgentHandle } from '../agent/agent.ts'
import { runUntilSignal } from './run.ts'

/**
 * Runs an agent until a signal or a fatal answer, then exits with the contract's code.
 * `closed` may add work after the agent stopped (memid dev stops its auth service).
 */
export function runAgentProcess(agent: AgentHandle, log: Logger, closed: Promise<AgentExit> = agent.closed): Promise<never> {
  return runUntilSignal({ ready: agent.ready, closed, stop: () => agent.stop(), reload: () => agent.renew() }, log, {
    stopping: 'stopping: draining open connections (up to 10s)', reload: 'SIGHUP: renewing now',
  })
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
