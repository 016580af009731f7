import type * as Prom from 'prom-client'
import { Counter, Gauge, Histogram, type Registry, metricOnce } from '../../core/metrics.ts'

/**
 * The proxy's metrics, labelled by cluster so several proxies in one agent share the same
 * families on the agent's registry.
 */
export class KubeProxyMetrics {
  readonly #requests: Counter<'cluster' | 'code'>
  readonly #latency: Histogram<'cluster'>
  readonly #upgrades: Gauge<'cluster'>
  readonly #watches: Gauge<'cluster'>
  readonly #cluster: string
  readonly #byCode = new Map<number, Prom.Counter.Internal>()
  readonly #latencyChild: Prom.Histogram.Internal<'cluster'>

  constructor(registry: Registry, cluster: string) {
    this.#cluster = cluster
    this.#requests = metricOnce(registry, 'memid_kube_proxy_requests_total', () => new Counter({
      name: 'memid_kube_proxy_requests_total',
      help: 'Requests answered by the kube proxy, by HTTP status code (101 for upgrades).',
      labelNames: ['cluster', 'code'],
      registers: [registry],
    }))
    this.#latency = metricOnce(registry, 'memid_kube_proxy_upstream_latency_seconds', () => new Histogram({
      name: 'memid_kube_proxy_upstream_latency_seconds',
      help: 'Time from forwarding a request to receiving the API server\'s response headers.',
      labelNames: ['cluster'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }))
    this.#upgrades = metricOnce(registry, 'memid_kube_proxy_active_upgrades', () => new Gauge({
      name: 'memid_kube_proxy_active_upgrades',
      help: 'Upgraded connections (exec, attach, port-forward) open right now.',
      labelNames: ['cluster'],
      registers: [registry],
    }))
    this.#watches = metricOnce(registry, 'memid_kube_proxy_active_watches', () => new Gauge({
      name: 'memid_kube_proxy_active_watches',
      help: 'Watch requests open right now.',
      labelNames: ['cluster'],
      registers: [registry],
    }))
    this.#latencyChild = this.#latency.labels(cluster)
    this.#upgrades.set({ cluster }, 0)
    this.#watches.set({ cluster }, 0)
  }

  request(code: number): void {
    let child = this.#byCode.get(code)
    if (child === undefined) {
      child = this.#requests.labels(this.#cluster, String(code))
      this.#byCode.set(code, child)
    }
    child.inc()
  }

  upstreamLatency(seconds: number): void {
    this.#latencyChild.observe(seconds)
  }

  upgradeOpened(): void {
    this.#upgrades.inc({ cluster: this.#cluster })
  }

  upgradeClosed(): void {
    this.#upgrades.dec({ cluster: this.#cluster })
  }

  watchOpened(): void {
    this.#watches.inc({ cluster: this.#cluster })
  }

  watchClosed(): void {
    this.#watches.dec({ cluster: this.#cluster })
  }
}
