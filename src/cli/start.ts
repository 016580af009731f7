import { readFileSync } from 'node:fs'
import { MemidError } from '../core/errors.ts'
import { createLogger, type Logger } from '../core/log.ts'
import { loadAgentConfig, type AgentConfig, type AgentFlags } from '../config/agent.ts'
import { startAgent, type AgentHandle } from '../agent/agent.ts'
import { EXIT_IDENTITY_LOST, exitCodeFor } from './exit.ts'

function readStdin(): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    process.stdin.on('data', (c: Buffer) => {
      size += c.length
      if (size > 4096) {
        reject(new MemidError('ERR_USAGE', '--token-file -: more than 4 KiB on stdin; expected one token'))
        process.stdin.destroy()
        return
      }
      chunks.push(c)
    })
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    process.stdin.on('error', reject)
  })
}

/** Reads the join token from its source; the value never reaches a log or an error. */
async function readToken(cfg: AgentConfig, log: Logger, env: NodeJS.ProcessEnv): Promise<string> {
  let value: string
  const src = cfg.token
  if (src.kind === 'file') {
    try {
      value = readFileSync(src.path, 'utf8')
    } catch (err) {
      throw new MemidError('ERR_USAGE', `--token-file: cannot read ${src.path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`)
    }
  } else if (src.kind === 'stdin') {
    value = await readStdin()
  } else if (src.kind === 'env') {
    value = env.MEMID_TOKEN ?? ''
  } else {
    log.warn('--token puts the join token in argv, which every user on this host can read; prefer --token-file or $MEMID_TOKEN')
    value = src.value
  }
  value = value.trim()
  if (value === '' || value.includes('\n')) throw new MemidError('ERR_USAGE', 'the join token is empty or spans several lines')
  return value
}

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

/** `memid start`: config, token, agent, then run until a signal or a fatal answer. */
export async function runStart(flags: AgentFlags): Promise<void> {
  const cfg = loadAgentConfig(flags)
  const log = createLogger({ format: cfg.logFormat, base: { component: 'agent' } })
  const token = await readToken(cfg, log, process.env)
  const agent = startAgent({
    authServer: cfg.authServer, caPins: cfg.caPins, token, certificateTtlMs: cfg.certificateTtlMs,
    renewalIntervalMs: cfg.renewalIntervalMs, controlSocket: cfg.controlSocket, services: cfg.services, logger: log,
    ...(cfg.diagnostics !== undefined ? { diagnostics: cfg.diagnostics } : {}),
  })
  await runAgentProcess(agent, log)
}
