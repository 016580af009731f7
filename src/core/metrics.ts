import type { Registry } from 'prom-client'

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
