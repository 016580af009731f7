import { Counter, Gauge, type Registry, metricOnce } from '../../core/metrics.ts'

/** What a tunnel exposes so the shared metrics can read it at scrape time. */
export interface TunnelStats {
  readonly service: string
  /** Connections being tunnelled or set up right now. */
  activeConnections(): number
  /** Bytes so far, closed connections plus open ones: [client→server, server→client]. */
  bytes(): [number, number]
}

/**
 * The tunnel's Prometheus metrics. Several tunnels share one registry, so the metric
 * objects are created once per registry and read every registered tunnel on scrape;
 * byte counts come from the sockets' own counters, so the data path does no per-chunk
 * bookkeeping.
 */
export class TunnelMetrics {
  readonly #tunnels = new Set<TunnelStats>()
  readonly errors: Counter<'service' | 'reason'>
  readonly connections: Counter<'service'>

  private constructor(registry: Registry) {
    const tunnels = this.#tunnels
    new Gauge({
      name: 'memid_db_tunnel_active_connections',
      help: 'Client connections currently open on the database tunnel.',
      labelNames: ['service'],
      registers: [registry],
      collect() {
        this.reset()
        for (const t of tunnels) this.inc({ service: t.service }, t.activeConnections())
      },
    })
    new Counter({
      name: 'memid_db_tunnel_bytes_total',
      help: 'Bytes carried by the database tunnel, by direction.',
      labelNames: ['service', 'direction'],
      registers: [registry],
      collect() {
        this.reset()
        for (const t of tunnels) {
          const [up, down] = t.bytes()
          this.inc({ service: t.service, direction: 'client_to_server' }, up)
          this.inc({ service: t.service, direction: 'server_to_client' }, down)
        }
      },
    })
    this.connections = new Counter({
      name: 'memid_db_tunnel_connections_total',
      help: 'Client connections accepted by the database tunnel.',
      labelNames: ['service'],
      registers: [registry],
    })
    this.errors = new Counter({
      name: 'memid_db_tunnel_connection_errors_total',
      help: 'Client connections the database tunnel refused or lost, by reason.',
      labelNames: ['service', 'reason'],
      registers: [registry],
    })
  }

  /** The metrics of this registry, created on first use. */
  static for(registry: Registry): TunnelMetrics {
    return metricOnce(registry, 'memid_db_tunnel', () => new TunnelMetrics(registry))
  }

  add(tunnel: TunnelStats): void {
    this.#tunnels.add(tunnel)
  }

  remove(tunnel: TunnelStats): void {
    this.#tunnels.delete(tunnel)
  }
}
