import { Counter, Gauge, type Registry, metricOnce } from '../../core/metrics.ts'

/** The agent's metrics, with the hot-path counters bound to their labels once. */
export interface SshAgentMetrics {
  sign: {
    ok: { inc(): void }
    expired: { inc(): void }
    unknownKey: { inc(): void }
    forwarded: { inc(): void }
  }
  connections: Counter<string>
  open: Gauge<string>
  refused: Counter<'request'>
  protocolErrors: Counter<'reason'>
}

function counter<L extends string>(registry: Registry, name: string, help: string, labelNames: L[] = []): Counter<L> {
  return metricOnce(registry, name, () => new Counter({ name, help, labelNames, registers: [registry] }))
}

function gauge(registry: Registry, name: string, help: string): Gauge<string> {
  return metricOnce(registry, name, () => new Gauge({ name, help, registers: [registry] }))
}

/** Registers (or reuses) the ssh-agent metrics on the agent's registry. */
export function sshAgentMetrics(registry: Registry): SshAgentMetrics {
  const sign = counter(registry, 'memid_ssh_agent_sign_requests_total', 'SSH agent sign requests by result', ['result'])
  return {
    sign: {
      ok: sign.labels({ result: 'ok' }),
      expired: sign.labels({ result: 'expired' }),
      unknownKey: sign.labels({ result: 'unknown_key' }),
      forwarded: sign.labels({ result: 'forwarded' }),
    },
    connections: counter(registry, 'memid_ssh_agent_connections_total', 'SSH agent connections accepted'),
    open: gauge(registry, 'memid_ssh_agent_open_connections', 'SSH agent connections open now'),
    refused: counter(registry, 'memid_ssh_agent_refused_requests_total', 'Requests to add, remove or lock keys, refused because the agent is read-only', ['request']),
    protocolErrors: counter(registry, 'memid_ssh_agent_protocol_errors_total', 'SSH agent connections closed for malformed or oversized frames', ['reason']),
  }
}
