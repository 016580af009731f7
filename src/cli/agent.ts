import type { Command } from 'commander'
import { serviceFlags, type AgentFlags } from '../config/agent.ts'
import type { AgentStatus } from '../agent/agent.ts'
import { defaultControlSocket } from '../config/paths.ts'
import { AGENT_NODE_FLAGS } from '../core/gc.ts'
import { hardenProcess } from '../core/harden.ts'
import { emit, parseFormat, table } from './output.ts'
import { socketRequest } from './socket-client.ts'
import { registerDevCommand } from './dev-command.ts'

const collect = (v: string, prev: string[] = []): string[] => [...prev, v]

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
    `Auth server:    ${s.authServer}${s.authServers.length > 1 ? ` (in use; configured: ${s.authServers.join(', ')})` : ''}`,
    `Join method:    ${s.joinMethod ?? '-'} (${s.joins} join${s.joins === 1 ? '' : 's'} by this process)`,
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
  const start = program.command('start')
  start.description('join the auth service and serve certificates from memory')
    .option('--config <file>', 'agent.yaml')
    .option('--auth-server <host:port,...>', 'auth service address; several replicas comma-separated, tried in turn')
    .option('--ca-pin <pin>', 'sha256:<hex> of the auth TLS CA (repeatable)', collect)
    .option('--join-method <method>', 'join method: token | github | gitlab | kubernetes | oidc (default token)')
    .option('--join-token <name>', 'platform join methods: the join token\'s name (memid tokens add --join-method … prints it)')
    .option('--id-token-file <path>', 'gitlab, oidc: file holding the JWT (else $MEMID_ID_TOKEN); kubernetes: the projected token (default /var/run/secrets/tokens/memid)')
    .option('--token-file <path>', "file holding the join token, or '-' for stdin ($MEMID_TOKEN also works)")
    .option('--token <value>', 'the join token itself (discouraged: argv is world-readable)')
    .option('--certificate-ttl <duration>', 'certificate lifetime (default 1h)')
    .option('--renewal-interval <duration>', 'renew this often (default 20m)')
    .option('--control-socket <path>', 'control socket path')
    .option('--diag-addr <host:port>', 'serve /livez, /readyz, /metrics')
    .option('--workers <n>', 'worker threads for each kube proxy and database tunnel TCP listener (default: CPUs, at most 4)')
  for (const f of serviceFlags()) {
    if (f.repeatable) start.option(`--${f.name} ${f.value}`, f.description, collect)
    else start.option(`--${f.name} ${f.value}`, f.description)
  }
  start.option('--log-format <format>', 'json or text')
    .action(async (flags: AgentFlags) => {
      hardenProcess(process.env, AGENT_NODE_FLAGS)
      const { runStart } = await import('./start.ts')
      await runStart(flags)
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
