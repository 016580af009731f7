import { createRequire } from 'node:module'
import type * as Prom from 'prom-client'

/*
 * prom-client's classes, loaded one file each. Its index also loads the default process
 * metrics, which require @opentelemetry/api (51 modules), the Pushgateway client and the
 * cluster aggregator: ~0.1 s of CPU and ~18 MB in every thread that imports it (the agent
 * and each data-plane worker), for code memid never calls. The package has no `exports`
 * map, so these paths are reachable; the types are the package's own.
 */
const load = createRequire(import.meta.url)
export const Registry: typeof Prom.Registry = load('prom-client/lib/registry')
export const Counter: typeof Prom.Counter = load('prom-client/lib/counter')
export const Gauge: typeof Prom.Gauge = load('prom-client/lib/gauge')
export const Histogram: typeof Prom.Histogram = load('prom-client/lib/histogram')
export type Registry = Prom.Registry
export type Counter<T extends string = string> = Prom.Counter<T>
export type Gauge<T extends string = string> = Prom.Gauge<T>
export type Histogram<T extends string = string> = Prom.Histogram<T>
export type { MetricObjectWithValues, MetricValue } from 'prom-client'

/** Sums the metrics of several registries (the agent's threads), as prom-client's cluster mode does. */
export function aggregateMetrics(metrics: Prom.MetricObjectWithValues<Prom.MetricValue<string>>[][]): Prom.Registry {
  const Aggregator: typeof Prom.AggregatorRegistry = load('prom-client/lib/cluster')
  return Aggregator.aggregate(metrics)
}

const made = new WeakMap<Registry, Map<string, unknown>>()

/**
 * Creates a metric (or a group of them) once per registry and returns the same object on
 * every later call with that key: several services of one type share one agent registry,
 * and prom-client refuses to register a name twice. The one way metrics are registered once.
 */
export function metricOnce<T>(registry: Registry, key: string, create: () => T): T {
  let byKey = made.get(registry)
  if (byKey === undefined) {
    byKey = new Map()
    made.set(registry, byKey)
  }
  if (byKey.has(key)) return byKey.get(key) as T
  const metric = create()
  byKey.set(key, metric)
  return metric
}
