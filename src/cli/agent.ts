import { readFileSync } from 'node:fs'
import type { Command } from 'commander'
import { MemidError } from '../core/errors.ts'
import { createLogger, type Logger } from '../core/log.ts'
import { defaultControlSocket, loadAgentConfig, type AgentConfig, type AgentFlags } from '../config/agent.ts'
import { startAgent, type AgentHandle, type AgentStatus } from '../agent/agent.ts'
import { EXIT_IDENTITY_LOST, exitCodeFor } from './exit.ts'
import { emit, parseFormat, table } from './output.ts'
import { socketRequest } from './socket-client.ts'
import { registerDevCommand } from './dev.ts'

const collect = (v: string, prev: string[] = []): string[] => [...prev, v]

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

function controlCall<T>(socket: string | undefined, path: string): Promise<T> {
  const p = socket ?? defaultControlSocket()
  return socketRequest<T>(p, 'GET', path, undefined, 'the agent control socket', 'is "memid start" running? (--control-socket PATH)')
}

function statusText(s: AgentStatus): string {
  const id = s.identity
  const lines = [
    `Bot:            ${s.bot ?? '-'}`,
    `Instance:       ${s.instanceId ?? '-'}`,
    `Generation:     ${s.generation ?? '-'}`,
    `Auth server:    ${s.authServer}`,
    `Identity:       ${id.status}${'serial' in id && id.serial ? ` (serial ${id.serial}, expires ${id.notAfter}${id.expiresInSeconds !== undefined ? `, in ${id.expiresInSeconds}s` : ''})` : ''}`,
    `Last renewal:   ${s.renewal.lastSuccess ?? '-'}`,
    `Next renewal:   ${s.renewal.nextRunAt ?? '-'}`,
    `Renewals:       ${s.renewal.succeeded} ok, ${s.renewal.failed} failed${s.renewal.consecutiveFailures ? ` (${s.renewal.consecutiveFailures} in a row)` : ''}`,
    ...(id.lastError ? [`Last error:     ${id.lastError}`] : []),
    '',
  ]
  const rows = s.services.map((v) => [v.name, v.address, v.status, 'serial' in v.credential ? v.credential.serial : '-', 'notAfter' in v.credential ? v.credential.notAfter : '-', v.reason])
  return lines.join('\n') + (rows.length ? table(['Service', 'Address', 'Status', 'Serial', 'Expires', 'Reason'], rows) : 'No services.\n')
}

export function registerAgentCommands(program: Command): void {
  program.command('start')
    .description('join the auth service and serve certificates from memory')
    .option('--config <file>', 'agent.yaml')
    .option('--auth-server <host:port>', 'auth service address')
    .option('--ca-pin <pin>', 'sha256:<hex> of the auth TLS CA (repeatable)', collect)
    .option('--join-method <method>', 'join method (token)')
    .option('--token-file <path>', "file holding the join token, or '-' for stdin ($MEMID_TOKEN also works)")
    .option('--token <value>', 'the join token itself (discouraged: argv is world-readable)')
    .option('--certificate-ttl <duration>', 'certificate lifetime (default 1h)')
    .option('--renewal-interval <duration>', 'renew this often (default 20m)')
    .option('--control-socket <path>', 'control socket path')
    .option('--diag-addr <host:port>', 'serve /livez, /readyz, /metrics')
    .option('--ssh-agent <path>', 'serve an SSH agent on this socket')
    .option('--kube-proxy <listen=cluster>', 'local Kubernetes API proxy (repeatable)', collect)
    .option('--db-tunnel <listen=service/user[/db]>', 'database tunnel (repeatable)', collect)
    .option('--log-format <format>', 'json or text')
    .action(async (flags: AgentFlags) => {
      const cfg = loadAgentConfig(flags)
      const log = createLogger({ format: cfg.logFormat, base: { component: 'agent' } })
      const token = await readToken(cfg, log, process.env)
      const agent = startAgent({
        authServer: cfg.authServer, caPins: cfg.caPins, token, certificateTtlMs: cfg.certificateTtlMs,
        renewalIntervalMs: cfg.renewalIntervalMs, controlSocket: cfg.controlSocket, services: cfg.services, logger: log,
        ...(cfg.diagnostics !== undefined ? { diagnostics: cfg.diagnostics } : {}),
      })
      await runAgentProcess(agent, log)
    })

  program.command('status')
    .description("show the agent's identity, renewals and services")
    .option('--control-socket <path>', 'control socket path')
    .option('--format <format>', 'text | json', 'text')
    .action(async (o: { controlSocket?: string; format?: string }) => {
      const f = parseFormat(o.format, ['text', 'json'])
      const s = await controlCall<AgentStatus>(o.controlSocket, '/v1/status')
      emit(f, s, () => statusText(s))
    })

  program.command('kubeconfig')
    .description('print a kubeconfig for the kube proxies (server URLs only, no secrets)')
    .option('--control-socket <path>', 'control socket path')
    .action(async (o: { controlSocket?: string }) => {
      process.stdout.write(await controlCall<string>(o.controlSocket, '/v1/kubeconfig'))
    })

  program.command('known-hosts')
    .description('print "@cert-authority * <ssh-host CA>" for ssh -o KnownHostsCommand')
    .option('--control-socket <path>', 'control socket path')
    .action(async (o: { controlSocket?: string }) => {
      process.stdout.write(await controlCall<string>(o.controlSocket, '/v1/known-hosts'))
    })

  registerDevCommand(program)
}
